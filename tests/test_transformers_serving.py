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
    # Not compared with each other: the tiny random-weight generators are not deterministic from call to call
    # (ties in greedy decoding); tests/test_grpc_router.py compares an ONNX chain over both hops.
    assert all(len(a["output"]["data"]) == 1 for a in answers.values())


def test_tritonclient_grpc_sends_text_as_bytes(server: MLServer) -> None:
    from test_grpc_replica import triton

    got = triton({"address": server.grpc_url, "model": "sentiment",
                  "inputs": [{"name": "input", "datatype": "BYTES", "shape": [2], "text": ["Fine.", "Awful!"]}]})
    assert "error" not in got, got
    assert got["outputs"]["label"]["shape"] == [2] and all(got["outputs"]["label"]["text"])  # the labels, as text
    assert got["outputs"]["score"]["shape"] == [2]
    empty = triton({"address": server.grpc_url, "model": "sentiment",
                    "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "text": ["  "]}]})
    assert empty["error"]["code"] == "StatusCode.INVALID_ARGUMENT" and "empty" in empty["error"]["details"]


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


# -- the ONNX path of the encoder-only stages ------------------------------------------------------------

ENCODERS = {"sentiment": ["distilbert-sentiment", "bert-sentiment", "roberta-sentiment"],
            "squad2-qa": ["xlm-roberta-base-squad2", "roberta-base-squad2"], "lang-id": None}
MIXED = ["What a wonderful day.", CONTEXT, "The food was cold and the service was slow, terribly slow, and the "
         "waiter never came back to our table after he brought the bread."]


@pytest.fixture(scope="module")
def encoder_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("encoders")
    for family, variants in ENCODERS.items():
        build_repository(family, out, variants, tiny=True)
    return out


def test_encoder_builds_carry_their_onnx_export_and_say_which_backend_and_why(encoder_repo: Path) -> None:
    from mlserver_ipa.onnx_encoder import ExecutionRecord

    for family in ("sentiment", "squad2-qa", "lang-id"):
        for folder in (p for p in (encoder_repo / family).iterdir() if p.is_dir()):
            record = ExecutionRecord.model_validate_json((folder / "execution.json").read_text())
            assert record.backend == "onnxruntime" and "benchmarks/transformers_execution.py" in record.why
            assert (folder / "model.onnx").is_file()
    out = encoder_repo / "seq2seq"
    build_repository("opus-mt", out, ["opus-mt-fr-en"], tiny=True)
    record = ExecutionRecord.model_validate_json((out / "opus-mt" / "opus-mt-fr-en" / "execution.json").read_text())
    assert record.backend == "torch" and "generate" in record.why
    assert not (out / "opus-mt" / "opus-mt-fr-en" / "model.onnx").exists()


@pytest.mark.parametrize("family", list(ENCODERS))
def test_the_onnx_path_answers_what_the_pytorch_path_answers(encoder_repo: Path, family: str) -> None:
    from mlserver_ipa.settings import SequenceLimits
    from mlserver_ipa.transformers_session import TransformersSession

    feeds = {"input": np.array(MIXED, dtype=object)}
    if family == "squad2-qa":
        feeds["question"] = np.array(["How is the day?", "Where does the river flow?", "Who never came back?"],
                                     dtype=object)
    for folder in sorted(p for p in (encoder_repo / family).iterdir() if p.is_dir()):
        ort_session = TransformersSession(folder.name, folder, 1, SequenceLimits())
        torch_session = TransformersSession(folder.name, folder, 1, SequenceLimits(), backend="torch")
        assert (ort_session.backend, torch_session.backend) == ("onnxruntime", "torch")
        for rows in ([feeds], [{k: v[:1] for k, v in feeds.items()}, {k: v[1:] for k, v in feeds.items()}]):
            got, want = ort_session.run_sync(rows), torch_session.run_sync(rows)
            assert set(got) == set(want)
            for name in want:
                if want[name].dtype == object:
                    assert list(got[name]) == list(want[name]), (folder.name, name)
                else:
                    np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=folder.name)


def test_a_users_checkpoint_without_an_export_is_served_in_pytorch_unchanged(encoder_repo: Path,
                                                                              tmp_path: Path) -> None:
    import shutil

    from mlserver_ipa.onnx_encoder import backend_of
    from mlserver_ipa.settings import SequenceLimits
    from mlserver_ipa.transformers_session import TransformersSession

    theirs = tmp_path / "my-classifier"
    shutil.copytree(encoder_repo / "sentiment" / "bert-sentiment", theirs,
                    ignore=shutil.ignore_patterns("model.onnx", "execution.json", "TOKENIZER.md"))
    assert backend_of(theirs, "text-classification") == "torch"
    session = TransformersSession("mine", theirs, 1, SequenceLimits())
    assert session.backend == "torch"
    assert session.run_sync([{"input": np.array(["Fine."], dtype=object)}])["label"][0] in {"negative", "neutral",
                                                                                             "positive"}
    (theirs / "execution.json").write_text('{"backend": "onnxruntime"}')
    with pytest.raises(ValueError, match="execution.json: backend onnxruntime, but there is no model.onnx"):
        backend_of(theirs, "text-classification")
    (theirs / "execution.json").write_text('{"backend": "tensorflow"}')
    with pytest.raises(ValueError, match="execution.json"):
        backend_of(theirs, "text-classification")


def test_ipa_models_export_onnx_makes_a_users_folder_run_on_onnxruntime(
    encoder_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from adapter.cli import main

    theirs = tmp_path / "my-qa"
    shutil.copytree(encoder_repo / "squad2-qa" / "roberta-base-squad2", theirs,
                    ignore=shutil.ignore_patterns("model.onnx", "execution.json"))
    assert main(["models", "export-onnx", str(theirs)]) == 0
    assert (theirs / "model.onnx").is_file() and "wrote" in capsys.readouterr().out
    from mlserver_ipa.settings import SequenceLimits
    from mlserver_ipa.transformers_session import TransformersSession

    session = TransformersSession("q", theirs, 1, SequenceLimits())
    out = session.run_sync([{"input": np.array(["The sea is blue."], dtype=object),
                             "question": np.array(["What is blue?"], dtype=object)}])
    assert session.backend == "onnxruntime" and out["output"][0]
    assert main(["models", "export-onnx", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
