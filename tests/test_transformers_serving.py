"""The speech and text families: tiny builds of each, served by a real `mlserver start`, chained by the router.

The tiny configurations (2 layers of width 32) run the same code as the published sizes in a second; the
full-size builds are for profiling and the demo.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import AUTH, MLServer

from adapter.kubernetes.seldon import ReplicaConfig, runtime_settings
from adapter.spec import load_spec
from adapter.workloads.inputs import inputs_for, payload, speech_clips
from adapter.workloads.loadgen import LoadPlan, run_load
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.router import PipelineRouter, serve
from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES, build_repository

ROOT = Path(__file__).resolve().parents[1]
SERVED = {"sentiment": ["distilbert-sst2", "roberta-sentiment"], "squad2-qa": None, "s2t": ["s2t-small", "s2t-medium"]}
CONTEXT = "The river flows through the old town and under seven stone bridges before it reaches the sea."


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository serving three tiny families as models `sentiment`, `squad2-qa` and `s2t`."""
    out = tmp_path_factory.mktemp("tiny") / "repo"
    for family, variants in SERVED.items():
        build_repository(family, out, variants, tiny=True)
    return out


@pytest.fixture(scope="module")
def server(start_mlserver: Callable[..., MLServer], tiny_repo: Path) -> MLServer:
    return start_mlserver(tiny_repo)


def text_request(*texts: str, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [len(texts)],
                                        "data": list(texts)}]}
    if parameters:
        body["parameters"] = parameters
    return body


def speech_request(samples: int = 16000) -> dict[str, Any]:
    t = np.arange(samples) / 16000
    wave = np.round(0.3 * np.sin(2 * np.pi * 220 * t), 4)
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, samples], "data": wave.tolist()}]}


def outputs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in body["outputs"]}


def test_every_family_builds_tiny_in_the_hugging_face_layout(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    for name, family in TRANSFORMERS_FAMILIES.items():
        variant = family.variant_names[0]
        build_repository(name, tmp_path, [variant], tiny=True)
        folder = tmp_path / name / variant
        for f in ("config.json", "model.safetensors", "tokenizer.json", "TOKENIZER.md"):
            assert (folder / f).is_file(), f"{name}: {f}"
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert len(tokenizer) == config.vocab_size, name  # every id the model can emit decodes
        assert "random weights" in (folder / "TOKENIZER.md").read_text()
        settings = json.loads((tmp_path / name / "model-settings.json").read_text())
        assert settings["parameters"]["extra"]["variants"][0] == {
            "name": variant, "uri": variant, "accuracy": family.accuracy(variant)}
    kept: list[bool] = []
    build_repository("sentiment", tmp_path, ["distilbert-sentiment"], tiny=True,
                     progress=lambda v: kept.append(not v.rebuilt))
    assert kept == [True]


def test_published_dimensions_are_the_model_cards() -> None:
    dims = {v: a.dims for f in TRANSFORMERS_FAMILIES.values() for v, a in f.architectures.items()}
    assert dims["roberta-base-squad2"]["num_hidden_layers"] == 12 and dims["roberta-base-squad2"]["vocab_size"] == 50265
    assert dims["xlm-roberta-base-squad2"]["vocab_size"] == 250002
    assert (dims["distilbart-xsum-12-3"]["encoder_layers"], dims["distilbart-xsum-12-3"]["decoder_layers"]) == (12, 3)
    assert dims["s2t-large"]["d_model"] == 1024 and dims["s2t-small"]["d_model"] == 256
    assert dims["opus-mt-tc-big-fr-en"]["d_model"] == 1024 and dims["opus-mt-fr-en"]["d_model"] == 512


def test_a_text_request_is_classified_and_its_text_passed_on(server: MLServer) -> None:
    resp = httpx.post(f"{server.http_url}/v2/models/sentiment/infer",
                      json=text_request("What a wonderful day.", "The food was cold."), timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    out = outputs(body)
    assert out["output"]["datatype"] == "BYTES" and out["output"]["data"] == ["What a wonderful day.",
                                                                               "The food was cold."]
    assert set(out["label"]["data"]) <= {"negative", "neutral", "positive"} and out["label"]["shape"] == [2]
    assert all(0 <= s <= 1 for s in out["score"]["data"])
    assert body["parameters"]["variant"] == "roberta-sentiment"  # the family's order: the first one built


def test_qa_takes_its_question_from_a_tensor_or_the_parameters(server: MLServer) -> None:
    url = f"{server.http_url}/v2/models/squad2-qa/infer"
    question = {"name": "question", "datatype": "BYTES", "shape": [1], "data": ["Where does the river flow?"]}
    as_tensor = httpx.post(url, json={"inputs": [*text_request(CONTEXT)["inputs"], question]}, timeout=30)
    assert as_tensor.status_code == 200, as_tensor.text
    answer = outputs(as_tensor.json())["output"]["data"][0]
    assert answer and answer.strip() in CONTEXT
    as_parameter = httpx.post(url, json=text_request(CONTEXT, question="Where does the river flow?"), timeout=30)
    assert as_parameter.status_code == 200, as_parameter.text
    assert outputs(as_parameter.json())["output"]["data"][0] == answer
    assert as_parameter.json()["parameters"]["question"] == "Where does the river flow?"  # echoed on
    none = httpx.post(url, json=text_request(CONTEXT), timeout=30)
    assert none.status_code == 400 and "question" in none.json()["error"]


def test_a_speech_request_is_transcribed(server: MLServer) -> None:
    resp = httpx.post(f"{server.http_url}/v2/models/s2t/infer", json=speech_request(), timeout=30)
    assert resp.status_code == 200, resp.text
    out = outputs(resp.json())["output"]
    assert out["datatype"] == "BYTES" and out["shape"] == [1] and isinstance(out["data"][0], str)


@pytest.mark.parametrize("model, body, reason", [
    ("sentiment", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, "BYTES"),
    ("sentiment", text_request("   "), "empty"),
    ("sentiment", {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "data": ["one"]}]}, "needs 2"),
    ("s2t", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [0.1, 0.2, 0.3]}]},
     "shorter than one 25 ms window"),
    ("s2t", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 800],
                         "data": [0.0] * 799 + [1e9]}]}, "[-1, 1]"),
    ("s2t", text_request("hello"), "FP32"),
])
def test_bad_text_and_audio_get_a_clear_400(server: MLServer, model: str, body: dict[str, Any], reason: str) -> None:
    resp = httpx.post(f"{server.http_url}/v2/models/{model}/infer", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"} and reason in resp.json()["error"]
    assert httpx.post(f"{server.http_url}/v2/models/{model}/infer",
                      json=speech_request() if model == "s2t" else text_request("fine"), timeout=30).status_code == 200


def test_a_text_variant_is_switched_in_place(server: MLServer) -> None:
    control = f"{server.http_url}/v2/models/sentiment/control"
    state = httpx.post(control, json={"variant": "distilbert-sst2", "batch_size": 4}, headers=AUTH, timeout=60)
    assert state.status_code == 200, state.text
    assert state.json()["variant"] == "distilbert-sst2" and state.json()["switches"] == 1
    resp = httpx.post(f"{server.http_url}/v2/models/sentiment/infer", json=text_request("Fine."), timeout=30)
    assert resp.json()["parameters"]["variant"] == "distilbert-sst2"
    assert set(outputs(resp.json())["label"]["data"]) <= {"NEGATIVE", "POSITIVE"}
    httpx.post(control, json={"variant": "roberta-sentiment"}, headers=AUTH, timeout=60).raise_for_status()


async def test_speech_is_chained_into_question_answering_by_the_router(server: MLServer) -> None:
    clip = speech_clips()[0]  # espeak-ng speaking a sentence, shipped
    spoken = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, clip.size], "data": clip.tolist()}]}
    body = {**spoken, "parameters": {"question": "Where does the train leave from?", "deadline_ms": 20000}}
    answers = {}
    for protocol in ("rest", "grpc"):  # the BYTES transcript goes to the QA stage as JSON, then as raw contents
        router = PipelineRouter("audio-qa", ["audio", "nlp-qa"])
        for stage, model, variant in (("audio", "s2t", "s2t-small"), ("nlp-qa", "squad2-qa", "xlm-roberta-base-squad2")):
            await router.update_stage(stage, StageRoute(model=model, protocol=protocol, groups=[RouteGroup(
                variant=variant, replicas=[ReplicaRoute(id=f"{stage}-0", url=server.http_url,
                                                        grpc_port=server.grpc_port)])]))
        async with serve(router, port=0) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
            resp = await c.post("/v2/models/audio-qa/infer", json=body)
            assert resp.status_code == 200, resp.text
            answer = outputs(resp.json())
            assert set(answer) == {"output", "score"} and answer["output"]["datatype"] == "BYTES"
            assert resp.json()["parameters"]["variants"] == "audio=s2t-small,nlp-qa=xlm-roberta-base-squad2"
            answers[protocol] = answer
            no_question = await c.post("/v2/models/audio-qa/infer", json=speech_request())
            assert no_question.status_code == 400 and "'nlp-qa'" in no_question.json()["error"]
    assert answers["grpc"]["output"]["data"] == answers["rest"]["output"]["data"]
    assert answers["grpc"]["score"]["data"] == pytest.approx(answers["rest"]["score"]["data"], rel=1e-4)


def test_the_seldon_rendering_points_at_the_checkpoint_folders() -> None:
    spec = load_spec(ROOT / "inference_graphs" / "audio-qa.yaml")
    extra = runtime_settings(spec.stages[0], ReplicaConfig("s2t-small", 1, 1.0, 50.0), "/opt/ipa/models")
    assert [v["uri"] for v in extra["variants"]] == [
        "/opt/ipa/models/s2t/s2t-small", "/opt/ipa/models/s2t/s2t-medium", "/opt/ipa/models/s2t/s2t-large"]


async def test_the_load_generator_sends_real_sentences_and_questions(server: MLServer) -> None:
    plan = LoadPlan(np.array([0.0, 0.02, 0.04, 0.06]), 1.0, None, None)
    records = await run_load(server.http_url, "squad2-qa", plan, payload=payload("sentences", question=True))
    assert [r.status for r in records] == [200] * 4 and {r.variant for r in records} == {"xlm-roberta-base-squad2"}
    speech = await run_load(server.http_url, "s2t", LoadPlan(np.array([0.0]), 1.0, None, None),
                            payload=payload("speech"))
    assert speech[0].status == 200


def test_each_pipeline_gets_the_inputs_its_first_stage_takes() -> None:
    kinds = {g: inputs_for(load_spec(ROOT / "inference_graphs" / f"{g}.yaml"))
             for g in ("audio-qa", "audio-sent", "sum-qa", "nlp", "resnet")}
    assert kinds == {"audio-qa": ("speech", True), "audio-sent": ("speech", False), "sum-qa": ("documents", True),
                     "nlp": ("french", False), "resnet": ("image", False)}
    clips = speech_clips()
    assert len(clips) == 6 and all(2.0 < c.size / 16000 < 8.0 and 0.05 < np.abs(c).max() <= 1.0 for c in clips)
    body = json.loads(payload("documents", question=True).body({"deadline_ms": 5.0}, 1))
    assert body["parameters"]["deadline_ms"] == 5.0 and body["parameters"]["question"].endswith("?")
    assert body["inputs"][0]["datatype"] == "BYTES" and len(body["inputs"][0]["data"][0].split()) > 50
