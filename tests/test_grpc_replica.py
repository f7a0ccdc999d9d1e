"""The replica's own V2 gRPC server (`mlserver_ipa.grpc_server`, on MLServer's gRPC port): `tritonclient.grpc`
unmodified against it, raw tensor contents, the token on repository load/unload, a gone deadline shed before
any decoding, the message size limit, and bad tensors answered INVALID_ARGUMENT while the server keeps serving.
Against a real `python -m mlserver_ipa.server` on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, TEST_TOKEN, MLServer

from mlserver_ipa.auth import TOKEN_ENV, TOKEN_FILE_ENV
from mlserver_ipa.deadlines import DEADLINE_HEADER
from mlserver_ipa.grpc_server import GRPC_OUTPUTS_ENV
from mlserver_ipa.v2_proto import Stub, params_from_pb, params_to_pb, pb
from mlserver_ipa.wire_tensors import fill_pb_inputs, from_pb_outputs

MAX_BODY = 256 << 10
CLIENT_SCRIPT = Path(__file__).parent / "triton_grpc_client.py"


def triton(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `tritonclient.grpc` in its own process (see `triton_grpc_client.py`)."""
    done = subprocess.run([sys.executable, str(CLIENT_SCRIPT), json.dumps(spec)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo, ipa_limits={"max_body_bytes": MAX_BODY})


@pytest.fixture
async def stub(replica: MLServer) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(replica.grpc_url) as channel:
        yield Stub(channel)


def image_request(rows: int = 1, **parameters: Any) -> Any:
    x = np.random.default_rng(0).random((rows, 3, SMALL_RESOLUTION, SMALL_RESOLUTION), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="resnet")
    fill_pb_inputs(request, [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tobytes()}])
    params_to_pb(request.parameters, parameters)
    return request


def test_tritonclient_grpc_against_a_replica(replica: MLServer) -> None:
    shape = [2, 3, SMALL_RESOLUTION, SMALL_RESOLUTION]
    got = triton({"address": replica.grpc_url, "model": "resnet", "parameters": {"deadline_ms": 30000.0},
                  "timeout_s": 120, "inputs": [{"name": "input", "datatype": "FP32", "shape": shape}]})
    assert got["live"] and got["ready"]
    assert got["metadata"]["inputs"][0]["name"] == "input"
    assert "error" not in got, got
    assert got["outputs"]["output"]["shape"][0] == 2
    # The float parameter arrived (KServe's double_param): the runtime counted a budget and echoed what is left,
    # from it and not from the call's longer gRPC timeout.
    assert 0 < got["parameters"]["deadline_ms"] <= 30000.0
    assert got["parameters"]["variant"] in ("resnet18", "resnet50")


async def test_raw_contents_in_raw_contents_out_same_answer_as_rest(replica: MLServer, stub: Stub) -> None:
    import httpx

    request = image_request(rows=2)
    response = await stub.ModelInfer(request, timeout=60)
    [output] = from_pb_outputs(response)
    assert isinstance(output["data"], bytes) and output["shape"][0] == 2
    grpc_answer = np.frombuffer(output["data"], dtype=np.float32).reshape(output["shape"])
    x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(request.inputs[0].shape),
                        "data": x.tolist()}]}
    rest = httpx.post(f"{replica.http_url}/v2/models/resnet/infer", json=body, timeout=60).json()
    rest_answer = np.asarray(rest["outputs"][0]["data"], dtype=np.float32).reshape(grpc_answer.shape)
    np.testing.assert_allclose(grpc_answer, rest_answer, rtol=1e-5, atol=1e-6)
    assert params_from_pb(response.parameters)["batch_size"] >= 2


async def test_repository_load_and_unload_need_the_token(stub: Stub) -> None:
    for metadata in ((), (("authorization", "Bearer not-the-token"),)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="resnet"),
                                             metadata=metadata, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in (refused.value.details() or "")
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="resnet"), timeout=30)).ready
    auth = (("authorization", f"Bearer {TEST_TOKEN}"),)
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="resnet"), metadata=auth, timeout=120)
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="resnet"), timeout=30)).ready
    await stub.ModelInfer(image_request(), timeout=60)  # the reloaded model serves


async def test_a_replica_without_a_token_refuses_repository_calls_permission_denied(
        start_mlserver: Callable[..., MLServer], variant_repo: Path) -> None:
    """A replica started with no pipeline token takes no repository writes at all, token or not (gRPC's
    PERMISSION_DENIED, as REST's 403), and keeps serving inference."""
    open_env = {k: v for k, v in os.environ.items() if k not in (TOKEN_FILE_ENV, TOKEN_ENV)}
    tokenless = start_mlserver(variant_repo, environ=open_env)
    async with grpc.aio.insecure_channel(tokenless.grpc_url) as channel:
        stub = Stub(channel)
        for metadata in ((), (("authorization", f"Bearer {TEST_TOKEN}"),)):
            for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="resnet")),
                                  (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="resnet"))):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(request, metadata=metadata, timeout=30)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "no token" in (refused.value.details() or "")
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="resnet"), timeout=30)).ready
        assert from_pb_outputs(await stub.ModelInfer(image_request(), timeout=60))[0]["shape"][0] == 1


async def test_typed_outputs_for_seldons_grpc_chain(start_mlserver: Callable[..., MLServer],
                                                     variant_repo: Path, stub: Stub) -> None:
    """With `$IPA_GRPC_OUTPUTS=typed` (what the Seldon rendering sets on a stage that feeds another) the answer
    carries typed `contents`, the only field Seldon's gRPC chain copies, and they are the raw answer's values."""
    typed = start_mlserver(variant_repo, environ={**os.environ, GRPC_OUTPUTS_ENV: "typed"})
    request = image_request(rows=2)
    async with grpc.aio.insecure_channel(typed.grpc_url) as channel:
        answer = await Stub(channel).ModelInfer(request, timeout=60)
    assert len(answer.raw_output_contents) == 0
    [output] = answer.outputs
    assert output.datatype == "FP32" and list(output.shape)[0] == 2
    raw_answer = from_pb_outputs(await stub.ModelInfer(request, timeout=60))[0]
    np.testing.assert_allclose(np.asarray(output.contents.fp32_contents, dtype=np.float32),
                               np.frombuffer(raw_answer["data"], dtype=np.float32), rtol=1e-5, atol=1e-6)


async def test_a_gone_deadline_is_shed_before_decoding(stub: Stub) -> None:
    bad = pb.ModelInferRequest(model_name="resnet")
    bad.inputs.add(name="input", datatype="FP32", shape=[1, 3, SMALL_RESOLUTION, SMALL_RESOLUTION])
    bad.raw_input_contents.append(b"\x00" * 7)  # not even whole floats: decoding it would be INVALID_ARGUMENT
    past = f"{time.time() * 1000 - 50:.3f}"
    with pytest.raises(grpc.aio.AioRpcError) as shed:
        await stub.ModelInfer(bad, metadata=((DEADLINE_HEADER, past),), timeout=30)
    assert shed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in (shed.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as invalid:  # the same request with time left is decoded, and refused
        await stub.ModelInfer(bad, timeout=30)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversize_messages_are_refused(stub: Stub) -> None:
    big = image_request(rows=1)
    big.raw_input_contents[0] = b"\x00" * (MAX_BODY + 1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(big, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await stub.ModelInfer(image_request(), timeout=60)).outputs


@pytest.mark.parametrize("change,needle", [
    (lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([1, 3, 5, 5]), "shape"),
    (lambda r: setattr(r.inputs[0], "datatype", "INT64"), "datatype"),
    (lambda r: setattr(r.inputs[0], "name", "nope"), "input"),
    (lambda r: r.raw_input_contents.__setitem__(0, np.full(3 * SMALL_RESOLUTION ** 2, np.nan, np.float32)
                                                .tobytes()), "finite"),
    (lambda r: r.raw_input_contents.append(b"\x00"), "raw_input_contents"),
])
async def test_bad_tensors_are_invalid_argument_and_serving_goes_on(stub: Stub, change: Any, needle: str) -> None:
    request = image_request()
    change(request)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert needle in (refused.value.details() or "")
    assert (await stub.ModelInfer(image_request(), timeout=60)).outputs


async def test_unknown_model_is_not_found(stub: Stub) -> None:
    request = image_request()
    request.model_name = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.ModelInfer(request, timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
