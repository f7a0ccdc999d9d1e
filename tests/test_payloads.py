"""What the speech and text pipelines are sent: every stage of the four shipped pipelines receives what the
stages before it pass on (speech, a transcript, a translation, a summary, with the request's question), the
speech is a real 16 kHz waveform, and the profiler's request for a stage is that very input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from adapter.profiling.stage_requests import kind_of, stage_body, stage_kind
from adapter.spec import load_spec
from adapter.workloads.payloads import (
    DOCUMENT,
    FRENCH,
    QUESTION,
    SAMPLING_RATE,
    SENTENCE,
    SUMMARY,
    TRANSLATION,
    Item,
    inputs_json,
    speech_waveform,
    stage_items,
    v2_inputs,
)

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = ROOT / "inference_graphs"


def test_each_stage_receives_what_the_one_before_passes_on() -> None:
    speech, transcript = stage_items(["speech", "answer"])
    assert speech == Item(speech=SENTENCE, question=QUESTION) and transcript == Item(text=SENTENCE, question=QUESTION)
    assert stage_items(["speech", "classify"])[1] == Item(text=SENTENCE)
    assert stage_items(["summarise", "answer"]) == [Item(text=DOCUMENT, question=QUESTION),
                                                    Item(text=SUMMARY, question=QUESTION)]
    assert stage_items(["classify", "translate", "summarise"]) == [Item(text=FRENCH), Item(text=FRENCH),
                                                                   Item(text=TRANSLATION)]


def test_speech_is_a_16khz_waveform_of_the_sentence_length() -> None:
    wave = speech_waveform(SENTENCE)
    assert wave.dtype == np.float32 and wave.ndim == 1
    seconds = wave.size / SAMPLING_RATE
    assert 2.0 < seconds < 12.0, seconds  # 17 words at 160 words per minute
    assert 0.05 < float(np.abs(wave).max()) <= 1.0
    [tensor] = v2_inputs("speech", Item(speech=SENTENCE))
    assert tensor["datatype"] == "FP32" and tensor["shape"] == [1, wave.size] and len(tensor["data"]) == wave.size


def test_text_inputs_are_v2_bytes_tensors() -> None:
    inputs = orjson.loads(inputs_json("answer", Item(text=SUMMARY, question=QUESTION)))
    assert inputs == [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [SUMMARY]},
                      {"name": "question", "datatype": "BYTES", "shape": [1], "data": [QUESTION]}]
    assert [t["name"] for t in v2_inputs("translate", Item(text=FRENCH))] == ["input"]
    with pytest.raises(Exception, match="speech"):
        v2_inputs("speech", Item(text=SENTENCE))


def test_kinds_from_transformers_class_names() -> None:
    assert kind_of("RobertaForQuestionAnswering") == "answer"
    assert kind_of("DistilBertForSequenceClassification") == "classify"
    assert kind_of("Speech2TextForConditionalGeneration") == "speech"
    assert kind_of("WhisperForConditionalGeneration") == "speech"
    assert kind_of("MarianMTModel") == "translate"
    assert kind_of("BartForConditionalGeneration") == "summarise"
    assert kind_of("T5ForConditionalGeneration", speech_features=True) == "speech"


@pytest.mark.parametrize(("graph", "kinds"), [
    ("audio-qa", ["speech", "answer"]),
    ("audio-sent", ["speech", "classify"]),
    ("sum-qa", ["summarise", "answer"]),
    ("nlp", ["classify", "translate", "summarise"]),
    ("video-monitoring", [None, None]),
])
def test_the_shipped_pipelines_stage_kinds(graph: str, kinds: list[str | None]) -> None:
    spec = load_spec(GRAPHS / f"{graph}.yaml")
    assert [stage_kind(spec, s) for s in spec.stages] == kinds


def test_the_profiler_sends_a_stage_what_it_receives_in_the_pipeline() -> None:
    spec = load_spec(GRAPHS / "sum-qa.yaml")
    qa = orjson.loads(stage_body(spec, spec.stage("nlp-qa"), Path("unused")))
    assert qa["inputs"][0]["data"] == [SUMMARY] and qa["inputs"][1]["data"] == [QUESTION]
    nlp = load_spec(GRAPHS / "nlp.yaml")
    summariser = orjson.loads(stage_body(nlp, nlp.stage("nlp-sum"), Path("unused")))
    assert summariser["inputs"][0]["data"] == [TRANSLATION]
