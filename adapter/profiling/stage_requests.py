"""The request the profiler sends each stage: what that stage receives when the pipeline serves its requests.

A tensor (ONNX) stage gets random data of its model's input shape (`closed_loop.request_body`). A speech or text
stage gets what `adapter.workloads.payloads` says the pipeline's request brings it, carried through the stages
before it (a QA stage after a speech stage answers on the transcript; a summariser after a translator
summarises the translation), so each point is measured at the input length the stage sees when the pipeline
runs. A stage's kind comes from its demo family's architecture (`mlserver_ipa.zoo`) or, for a variant whose
`model` is a Hugging Face checkpoint folder, from the folder's `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from adapter.profiling.closed_loop import request_body
from adapter.spec import GraphSpec, StageSpec
from adapter.workloads.payloads import Kind, stage_items, v2_inputs


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
        from mlserver_ipa import zoo  # imported only when a family is looked up

        families = getattr(zoo, "TRANSFORMERS_FAMILIES", {})
        if stage.family in families:
            arch = families[stage.family].architecture(stage.variants[0].name)
            return kind_of(arch.model_class)
        return None
    for v in stage.variants:
        if v.model is None:
            continue
        base = spec.source.parent if spec.source is not None else Path.cwd()
        folder = base / v.model
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            archs = config.get("architectures") or [""]
            return kind_of(str(archs[0]), str(config.get("model_type", "")),
                           (folder / "preprocessor_config.json").is_file())
    return None


def stage_body(spec: GraphSpec, stage: StageSpec, model_file: Path) -> bytes:
    """One V2 request (JSON) for `stage`: the pipeline's text or speech at this stage, or random tensor data
    for the ONNX model in `model_file`."""
    kinds = [stage_kind(spec, s) for s in spec.stages]
    i = spec.stages.index(stage)
    kind = kinds[i]
    if kind is None:
        return request_body(model_file)
    text_kinds: list[Kind] = [k for k in kinds if k is not None]
    item = stage_items(text_kinds)[sum(1 for k in kinds[:i] if k is not None)]
    return orjson.dumps({"inputs": v2_inputs(kind, item)})
