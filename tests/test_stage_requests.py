"""What the profiler sends a speech or text stage: what that stage receives when the pipeline serves the demo's
load (the demo's first request carried through the stages before it), and a stage's kind from its family or
its checkpoint folder."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from adapter.profiling.stage_requests import SUMMARY, TRANSLATION, kind_of, stage_body, stage_kind
from adapter.spec import load_spec, parse_spec
from adapter.workloads.inputs import DOCUMENTS, FRENCH, SENTENCES

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = ROOT / "inference_graphs"


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


def body(graph: str, stage: str) -> dict:
    spec = load_spec(GRAPHS / f"{graph}.yaml")
    return orjson.loads(stage_body(spec, spec.stage(stage), Path("unused")))


def test_each_stage_is_sent_what_the_stages_before_it_pass_on() -> None:
    speech = body("audio-qa", "audio")
    [tensor] = speech["inputs"]
    assert tensor["datatype"] == "FP32" and tensor["shape"][0] == 1 and tensor["shape"][1] > 16_000  # > 1 s
    assert speech["parameters"]["question"] == SENTENCES[0][1]
    qa = body("audio-qa", "nlp-qa")
    assert qa["inputs"][0]["data"] == [SENTENCES[0][0]] and qa["parameters"] == {"question": SENTENCES[0][1]}
    assert body("audio-sent", "nlp-sent")["inputs"][0]["data"] == [SENTENCES[0][0]]
    assert "parameters" not in body("audio-sent", "nlp-sent")
    assert body("sum-qa", "nlp-sum")["inputs"][0]["data"] == [DOCUMENTS[0][0]]
    assert body("sum-qa", "nlp-qa") == {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                                    "data": [SUMMARY]}], "parameters": {"question": DOCUMENTS[0][1]}}
    assert body("nlp", "nlp-li")["inputs"][0]["data"] == [FRENCH[0]]
    assert body("nlp", "nlp-trans")["inputs"][0]["data"] == [FRENCH[0]]
    assert body("nlp", "nlp-sum")["inputs"][0]["data"] == [TRANSLATION]


def test_a_users_checkpoint_folder_is_known_by_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "my-qa"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForQuestionAnswering"]}))
    spec = parse_spec({"name": "mine", "slo_ms": 1000, "budget_cores": 2, "stages": [
        {"name": "qa", "variants": [{"name": "mine", "accuracy": 80, "model": str(folder)}], "profile": "p.csv"}]})
    assert stage_kind(spec, spec.stages[0]) == "answer"
    sent = orjson.loads(stage_body(spec, spec.stages[0], folder))
    assert sent["inputs"][0]["data"] == [DOCUMENTS[0][0]] and sent["parameters"] == {"question": DOCUMENTS[0][1]}
