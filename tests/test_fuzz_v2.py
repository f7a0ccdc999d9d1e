"""Fuzzing the data plane: hypothesis draws hostile V2 bodies (and control bodies) and sends them to a real
replica (`python -m mlserver_ipa.server`) and a real router process in front of it.

For every case: no 5xx (504 only for a request that carried a deadline), no hang (each answer within the
client's timeout), every error in the V2 shape `{"error": "..."}`, and a good request served right after.
At the end the replica's and the router's memory grew by less than a bound. The number of examples is
bounded (`FUZZ_EXAMPLES`, default 120 per target) so the suite takes about a minute in CI.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import AUTH, SMALL_RESOLUTION, MLServer, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL = "resnet"
R = SMALL_RESOLUTION
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
RSS_GROWTH_MB = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# -- hostile bodies ----------------------------------------------------------------------------------------

weird_numbers = st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 1e39, -1e39, 1.7e308, 5e-324, 0.5,
                                 -0.0, "NaN", "Infinity", "-Infinity", "1e39", "100", "", True, False, None])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40), weird_numbers)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
names = st.one_of(st.sampled_from(["input", "output", "pixels", "", "../input", "input\x00", "é" * 50]),
                  st.text(max_size=30))
datatypes = st.one_of(st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES",
                                       "fp32", "FP33", ""]), st.text(max_size=8), json_scalars)
shapes = st.one_of(st.just([1, 3, R, R]), st.lists(st.integers(min_value=-3, max_value=10**12), max_size=6),
                   st.lists(weird_numbers, max_size=4), json_values)


@st.composite
def tensor_data(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["right-size", "nested", "values", "any"]))
    n = 3 * R * R
    if kind == "right-size":  # the right number of values with hostile ones sprinkled in
        base: list[Any] = [0.0] * n
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            base[draw(st.integers(min_value=0, max_value=n - 1))] = draw(weird_numbers)
        return base
    if kind == "nested":
        return [[[0.0] * R] * R] * 3
    if kind == "values":
        return draw(st.lists(weird_numbers, max_size=20))
    return draw(json_values)


@st.composite
def v2_bodies(draw: st.DrawFn) -> Any:
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return draw(json_values)  # anything at all
    tensor: dict[str, Any] = {"name": draw(names), "datatype": draw(datatypes), "shape": draw(shapes),
                              "data": draw(tensor_data())}
    if draw(st.booleans()):
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 3, R, R], "data": draw(tensor_data())}
    for key in draw(st.lists(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=2)):
        tensor.pop(key, None)
    body: dict[str, Any] = {"inputs": draw(st.sampled_from([[tensor], [tensor, tensor], [], tensor, None]))}
    if draw(st.booleans()):
        body["parameters"] = draw(st.one_of(
            st.fixed_dictionaries({}, optional={"deadline_ms": weird_numbers, "priority": weird_numbers,
                                                "headers": json_values, "content_type": json_values}),
            json_values))
    if draw(st.booleans()):
        body["id"] = draw(st.one_of(st.text(max_size=20), st.just("i" * 5000), json_scalars))
    if draw(st.booleans()):
        body["outputs"] = draw(st.one_of(st.lists(st.fixed_dictionaries({"name": names}), max_size=3), json_values))
    return body


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: Python's json with NaN / Infinity as bare words."""
    return json.dumps(body, allow_nan=True).encode()


def had_deadline(body: Any) -> bool:
    params = body.get("parameters") if isinstance(body, dict) else None
    return isinstance(params, dict) and "deadline_ms" in params


def good_request() -> bytes:
    x = np.zeros((1, 3, R, R), np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


# -- the servers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(start_mlserver, variant_repo) -> MLServer:
    return start_mlserver(variant_repo)


@pytest.fixture(scope="module")
def router(replica: MLServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`python -m mlserver_ipa.router` in its own process, its table written over HTTP with the token."""
    port = free_port()
    log = tmp_path_factory.mktemp("router") / "router.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlserver_ipa.router", "--pipeline", "pipe",
                                 "--stages", "classifier", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/v2/health/live", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"router did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        route = {"model": MODEL, "groups": [{"variant": "resnet18", "load_share": 1.0,
                                             "replicas": [{"id": "c-0", "url": replica.http_url}]}]}
        httpx.put(f"{url}/router/stages/classifier", json=route, headers=AUTH, timeout=10).raise_for_status()
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def check_answer(response: httpx.Response, body: Any) -> None:
    allowed_5xx = {504} if had_deadline(body) else set()
    assert response.status_code < 500 or response.status_code in allowed_5xx, (response.status_code,
                                                                                response.text[:300])
    if response.status_code >= 400:
        payload = response.json()
        assert isinstance(payload, dict) and set(payload) == {"error"} and isinstance(payload["error"], str), \
            response.text[:300]


def serves(client: httpx.Client, path: str) -> None:
    response = client.post(path, content=good_request(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text[:300]


# -- the properties ----------------------------------------------------------------------------------------


def test_hostile_v2_bodies_at_the_replica(replica: MLServer) -> None:
    before = rss_mb(replica.process.pid)
    path = f"/v2/models/{MODEL}/infer"
    with httpx.Client(base_url=replica.http_url, timeout=10) as client:

        @FUZZ
        @given(body=v2_bodies())
        def case(body: Any) -> None:
            response = client.post(path, content=encode(body), headers={"content-type": "application/json"})
            check_answer(response, body)
            serves(client, path)

        case()
    assert rss_mb(replica.process.pid) - before < RSS_GROWTH_MB


def test_hostile_v2_bodies_at_the_router(router: tuple[str, int], replica: MLServer) -> None:
    url, pid = router
    before = rss_mb(pid), rss_mb(replica.process.pid)
    path = "/v2/models/pipe/infer"
    with httpx.Client(base_url=url, timeout=10) as client:

        @FUZZ
        @given(body=v2_bodies())
        def case(body: Any) -> None:
            response = client.post(path, content=encode(body), headers={"content-type": "application/json"})
            check_answer(response, body)
            serves(client, path)

        case()
    assert rss_mb(pid) - before[0] < RSS_GROWTH_MB and rss_mb(replica.process.pid) - before[1] < RSS_GROWTH_MB


control_values = st.one_of(weird_numbers, json_values, st.integers(min_value=-10, max_value=10**12))


def test_hostile_control_bodies(replica: MLServer) -> None:
    path = f"/v2/models/{MODEL}/control"
    with httpx.Client(base_url=replica.http_url, timeout=60) as client:

        @settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
        @given(body=st.one_of(st.dictionaries(st.sampled_from(["batch_size", "max_batch_time_ms", "threads",
                                                               "queue_limit", "on_late", "variant", "colour"]),
                                              control_values, max_size=3), json_values))
        def case(body: Any) -> None:
            response = client.post(path, content=encode(body), headers={"content-type": "application/json",
                                                                        **AUTH})
            check_answer(response, body)
            if response.status_code == 200:  # applied: put it back
                client.post(path, json={"batch_size": 1, "max_batch_time_ms": 0, "threads": 1, "queue_limit": 256,
                                        "on_late": "drop", "variant": "resnet18"}, headers=AUTH).raise_for_status()
            serves(client, f"/v2/models/{MODEL}/infer")

        case()
