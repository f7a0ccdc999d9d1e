"""Fuzzing the V2 gRPC surface: hypothesis draws hostile `ModelInferRequest`s (names, datatypes, shapes up to
int64's range, raw and typed contents of any size, parameters of every kind including NaN and infinities, long
ids) and sends them to a real replica's gRPC server and a real router process's.

For every case: the answer is OK or a gRPC status that names a client error (never INTERNAL or UNKNOWN, and
DEADLINE_EXCEEDED only for a request that carried a deadline), with its reason, and a good request is served
right after. Bounded by `FUZZ_EXAMPLES` (default 120; half per target here)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, MLServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter.control.router_process import RouterProcess
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute
from mlserver_ipa.v2_proto import Stub, pb

R = SMALL_RESOLUTION
EXAMPLES = max(10, int(os.environ.get("FUZZ_EXAMPLES", "120")) // 2)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}
DEADLINE_KEYS = ("deadline_ms", "deadline_at_ms")

weird_floats = st.sampled_from([0.0, -0.0, 1e39, -1e39, 1.7e308, 5e-324, float("nan"), float("inf"),
                                float("-inf"), 0.5, -1.0])
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
param_values = st.one_of(st.booleans(), int64s, st.text(max_size=30), weird_floats,
                         st.floats(allow_nan=True, allow_infinity=True))
names = st.one_of(st.sampled_from(["input", "output", "", "input\x00", "é" * 50]), st.text(max_size=20))
datatypes = st.one_of(st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32",
                                       ""]), st.text(max_size=8))
shapes = st.one_of(st.just([1, 3, R, R]), st.just([2, 3, R, R]), st.lists(int64s, max_size=6),
                   st.lists(st.integers(min_value=-2, max_value=40), max_size=5))


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["right", "floats", "bytes", "empty"]))
    n = 3 * R * R
    with np.errstate(over="ignore"):  # 1e39 as FP32 is infinity: what the servers must refuse
        return _contents(draw, kind, n)


def _contents(draw: st.DrawFn, kind: str, n: int) -> bytes:
    if kind == "right":
        values = np.zeros(n, dtype=np.float32)
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            values[draw(st.integers(min_value=0, max_value=n - 1))] = draw(weird_floats)
        return values.tobytes()
    if kind == "floats":
        return np.asarray(draw(st.lists(weird_floats, max_size=20)), dtype=np.float32).tobytes()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return b""


@st.composite
def requests(draw: st.DrawFn) -> tuple[Any, bool]:
    """A hostile ModelInferRequest, and whether it carries a deadline."""
    request = pb.ModelInferRequest(model_name=draw(st.sampled_from(["MODEL", "MODEL", "other", ""])),
                                   id=draw(st.sampled_from(["", "a", "x" * 200])))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        good = draw(st.booleans())
        tensor = request.inputs.add(name="input" if good else draw(names),
                                    datatype="FP32" if good else draw(datatypes),
                                    shape=[1, 3, R, R] if good else draw(shapes))
        if raw:
            request.raw_input_contents.append(draw(contents()))
        else:
            tensor.contents.fp32_contents.extend(draw(st.lists(weird_floats, max_size=10)))
            tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=10), max_size=3)))
    if raw and draw(st.integers(min_value=0, max_value=5)) == 0:
        request.raw_input_contents.append(b"\x00\x00\x80\x7f")  # one more than the inputs
    params = draw(st.dictionaries(st.sampled_from(["deadline_ms", "deadline_at_ms", "priority", "question",
                                                   "headers", "x"]), param_values, max_size=3))
    for key, value in params.items():
        entry = request.parameters[key]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.int64_param = value
        elif isinstance(value, float):
            entry.double_param = value
        else:
            entry.string_param = value
    return request, any(k in params for k in DEADLINE_KEYS)


def good_request(model: str) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, R, R])
    request.raw_input_contents.append(np.zeros(3 * R * R, dtype=np.float32).tobytes())
    return request


@pytest.fixture(scope="module")
def replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def router_address(replica: MLServer, loop: asyncio.AbstractEventLoop,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = RouterProcess("pipe", ["classifier"], port=0, token_file=Path(os.environ["IPA_TOKEN_FILE"]),
                            log=tmp_path_factory.mktemp("router") / "router.log")

    async def up() -> None:
        await process.__aenter__()
        assert process.client is not None
        await process.client.update_stage("classifier", StageRoute(model="resnet", groups=[RouteGroup(
            variant="resnet18", replicas=[ReplicaRoute(id="c-0", url=replica.http_url, grpc_port=replica.grpc_port)])]))
    loop.run_until_complete(up())
    yield process.grpc_address
    loop.run_until_complete(process.stop())


async def _call(address: str, request: Any) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await Stub(channel).ModelInfer(request, timeout=60)
        except grpc.aio.AioRpcError as e:
            assert e.details(), f"{e.code()} without a reason"
            return e.code()
    return grpc.StatusCode.OK


def _check(loop: asyncio.AbstractEventLoop, address: str, model: str, drawn: tuple[Any, bool]) -> None:
    request, with_deadline = drawn
    if request.model_name == "MODEL":
        request.model_name = model
    code = loop.run_until_complete(_call(address, request))
    allowed = CLIENT_ERRORS | ({grpc.StatusCode.DEADLINE_EXCEEDED} if with_deadline else set())
    assert code in allowed, (code, request)
    assert loop.run_until_complete(_call(address, good_request(model))) == grpc.StatusCode.OK


@FUZZ
@given(drawn=requests())
def test_hostile_requests_at_a_replica(replica: MLServer, loop: asyncio.AbstractEventLoop,
                                       drawn: tuple[Any, bool]) -> None:
    _check(loop, replica.grpc_url, "resnet", drawn)


@FUZZ
@given(drawn=requests())
def test_hostile_requests_at_the_router(router_address: str, loop: asyncio.AbstractEventLoop,
                                        drawn: tuple[Any, bool]) -> None:
    _check(loop, router_address, "pipe", drawn)
