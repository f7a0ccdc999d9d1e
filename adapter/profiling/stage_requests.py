"""The request the profiler sends each stage: what that stage receives when the pipeline serves the demo's load.

A tensor (ONNX) stage gets random data of its model's input shape (`closed_loop.request_body`). A speech or text
stage gets the demo's first request (`adapter.workloads.inputs`: a sentence spoken by espeak-ng, an English
sentence or document, a French paragraph; with its question when a QA stage follows) carried through the
stages before it, so every point is measured at the input length the stage sees in the pipeline:

    kind        what the stage does          passes on
    speech      speech recognition           its transcript (the spoken sentence)
    classify    sentiment / language id      the text it received
    translate   French -> English            an English translation (`TRANSLATION`)
    summarise   abstractive summary          a one-sentence summary (`SUMMARY`)
    answer      extractive QA                the answer

`TRANSLATION` and `SUMMARY` are as long as what the demo models generate (24 and 28 tokens). A stage's kind
comes from its demo family's architecture (`mlserver_ipa.zoo`) or, for a variant whose `model` is a Hugging
Face checkpoint folder, from the folder's `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import orjson

from adapter.profiling.closed_loop import request_body
from adapter.spec import GraphSpec, StageSpec
from adapter.workloads.inputs import DOCUMENTS, FRENCH, SENTENCES, inputs_for, payload

Kind = Literal["speech", "classify", "translate", "summarise", "answer"]

TRANSLATION = "The city council voted on Tuesday to build a new library next to the station, and work will start."
"""What the translator passes on for the first French paragraph (about 24 tokens, the demo Marian's length)."""
SUMMARY = "The council will build a new library next to the railway station, and work will start in the spring."
"""What the summariser passes on for the first document (about 28 tokens, the demo DistilBART's length)."""
_FIRST_INPUT: dict[Kind, str] = {"speech": "speech", "classify": "sentences", "translate": "french",
                                 "summarise": "documents", "answer": "documents"}


def kind_of(model_class: str, model_type: str = "", speech_features: bool = False) -> Kind:
    """The kind of a `transformers` model from its class name (`architectures[0]`) and `model_type`."""
    if model_class.endswith("ForQuestionAnswering"):
        return "answer"
    if model_class.endswith("ForSequenceClassification"):
        return "classify"
    if speech_features or model_class.startswith(("Speech2Text", "Whisper")) or model_type in ("speech_to_text",
                                                                                              "whisper"):
        return "speech"
    if model_class.startswith("Marian") or model_type == "marian":
        return "translate"
    return "summarise"


def stage_kind(spec: GraphSpec, stage: StageSpec) -> Kind | None:
    """What kind of speech or text stage `stage` is; None for a tensor (ONNX) stage."""
    if stage.family is not None:
        from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES  # imported only when a family is looked up

        if stage.family in TRANSFORMERS_FAMILIES:
            return kind_of(TRANSFORMERS_FAMILIES[stage.family].architecture(stage.variants[0].name).model_class)
        return None
    base = spec.source.parent if spec.source is not None else Path.cwd()
    for v in stage.variants:
        folder = base / v.model if v.model else None
        if folder is not None and (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            archs = config.get("architectures") or [""]
            return kind_of(str(archs[0]), str(config.get("model_type", "")),
                           (folder / "preprocessor_config.json").is_file())
    return None


def stage_body(spec: GraphSpec, stage: StageSpec, model_file: Path) -> bytes:
    """One V2 request (JSON) for `stage`: what it receives from the demo's first request, or random tensor data
    for the ONNX model in `model_file`."""
    kinds = [stage_kind(spec, s) for s in spec.stages]
    i = spec.stages.index(stage)
    if kinds[i] is None:
        return request_body(model_file)
    kind, question = inputs_for(spec)
    if kind == "image":  # a graph of the user's own checkpoints: the input its first stage takes
        first = kinds[0]
        kind, question = _FIRST_INPUT[first] if first is not None else "sentences", "answer" in kinds
    if i == 0:
        return payload(kind, question=question).body({}, 0)
    text = {"speech": SENTENCES[0][0], "sentences": SENTENCES[0][0], "documents": DOCUMENTS[0][0],
            "french": FRENCH[0]}[kind]
    asked = DOCUMENTS[0][1] if kind == "documents" else SENTENCES[0][1]
    for upstream in kinds[:i]:
        text = {"translate": TRANSLATION, "summarise": SUMMARY}.get(upstream or "", text)
    body: dict[str, object] = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    if question:
        body["parameters"] = {"question": asked}
    return orjson.dumps(body)
