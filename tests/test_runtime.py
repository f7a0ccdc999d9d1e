"""VariantRuntime in a real `mlserver start`: inference through tritonclient, raw HTTP and our V2 client, the
per-request SLO parameters, the control endpoint, metrics, and bad requests that must never hurt the server."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from conftest import AUTH, SMALL_RESOLUTION, SMALL_VARIANTS, MLServer

from mlserver_ipa.client import ControlError, V2Client
from mlserver_ipa.settings import machine_threads

MODEL = "resnet"
R = SMALL_RESOLUTION


@pytest.fixture(scope="module")
def server(start_mlserver, variant_repo) -> MLServer:
    return start_mlserver(variant_repo)


def images(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, R, R)).astype(np.float32)


def body(array: np.ndarray | None = None, **parameters) -> dict:
    array = images() if array is None else array
    request: dict = {"inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32",
                                 "data": array.ravel().tolist()}]}
    if parameters:
        request["parameters"] = parameters
    return request


def post(server: MLServer, payload: dict | bytes, model: str = MODEL) -> httpx.Response:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", content=content,
                      headers={"content-type": "application/json"}, timeout=30)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- inference ----------------------------------------------------------------------------------------------


def test_infer_through_tritonclient(server: MLServer) -> None:
    client = triton.InferenceServerClient(server.http_host)
    assert client.is_model_ready(MODEL)
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"][0]["shape"] == [-1, 3, R, R]
    tensor = triton.InferInput("input", [2, 3, R, R], "FP32")
    tensor.set_data_from_numpy(images(2), binary_data=False)
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("output", binary_data=False)],
                          priority=3, parameters={"deadline_ms": 5000})
    out = result.as_numpy("output")
    assert out.shape == (2, 1000) and out.dtype == np.float32
    params = result.get_response()["parameters"]
    assert params["priority"] == 3 and params["variant"] == SMALL_VARIANTS[0]
    assert 0 < params["deadline_ms"] < 5000


def test_infer_raw_http_echoes_slo_and_says_what_served_it(server: MLServer) -> None:
    response = post(server, body(deadline_ms=2000, priority=1))
    assert response.status_code == 200, response.text
    answer = response.json()
    (output,) = answer["outputs"]
    assert output["name"] == "output" and output["datatype"] == "FP32" and output["shape"] == [1, 1000]
    assert len(output["data"]) == 1000
    params = answer["parameters"]
    assert params["priority"] == 1
    assert params["variant"] == SMALL_VARIANTS[0]
    assert params["batch_size"] >= 1 and params["batch_id"] >= 1
    spent = params["queue_ms"] + params["service_ms"]
    assert params["deadline_ms"] <= 2000 - spent  # decremented by at least the time spent here
    assert "headers" not in params


def test_same_input_same_output_whatever_the_batch(server: MLServer) -> None:
    """Rows served together in one batch give the same outputs as served alone."""
    x = images(3, seed=7)
    alone = np.array(post(server, body(x[:1])).json()["outputs"][0]["data"], dtype=np.float32)
    together = post(server, body(x)).json()["outputs"][0]
    assert together["shape"] == [3, 1000]
    first = np.array(together["data"][:1000], dtype=np.float32)
    np.testing.assert_allclose(first, alone, rtol=1e-4, atol=1e-4)


async def test_v2_client_roundtrip(server: MLServer) -> None:
    async with V2Client(server.http_url) as client:
        assert await client.ready() and await client.ready(MODEL)
        result = await client.infer(MODEL, images(), deadline_ms=3000, priority=0)
        assert result.ok, result.error
        assert result.output().shape == (1, 1000) and result.output().dtype == np.float32
        assert result.parameters["variant"] == SMALL_VARIANTS[0]
        missing = await client.infer("nope", images())
        assert missing.status == 404 and "nope" in (missing.error or "")


# -- bad requests: a clear 4xx each, and the server keeps serving --------------------------------------------

BAD_REQUESTS = {
    "wrong shape": (lambda: body(np.zeros((1, 3, R + 1, R), np.float32)), 400, "shape"),
    "wrong rank": (lambda: body(np.zeros((3, R, R), np.float32)), 400, "shape"),
    "wrong dtype": (lambda: {"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "INT64",
                                         "data": [0] * (3 * R * R)}]}, 400, "datatype"),
    "data not numbers": (lambda: {"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "FP32",
                                              "data": ["x"] * (3 * R * R)}]}, 400, "not FP32"),
    "too few values": (lambda: {"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "FP32",
                                            "data": [0.0] * 10}]}, 400, "values"),
    "missing input": (lambda: {"inputs": []}, 400, "missing input"),
    "unknown input": (lambda: {"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]},
                      400, "unknown input"),
    "unknown output": (lambda: {**body(), "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    "non-numeric deadline": (lambda: body(deadline_ms="soon"), 400, "deadline_ms"),
    "non-finite deadline": (lambda: body(deadline_ms="NaN"), 400, "deadline_ms"),
    "fractional priority": (lambda: body(priority=1.5), 400, "priority"),
    "oversized request": (lambda: body(np.zeros((65, 3, R, R), np.float32)), 413, "at most 64 rows"),
    "malformed JSON": (lambda: b'{"inputs": [{"name": "input",', 400, "JSON"),
    "not a V2 request": (lambda: {"inputs": "everything"}, 400, "inputs"),
    "deadline as a string": (lambda: body(deadline_ms="100"), 400, "deadline_ms"),
    "deadline as a bool": (lambda: body(deadline_ms=True), 400, "deadline_ms"),
    "NaN in FP32 data": (lambda: {"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "FP32",
                                              "data": ["NaN"] + [0.0] * (3 * R * R - 1)}]}, 400, "'input'"),
    "FP32 out of range": (lambda: {"inputs": [{"name": "input", "shape": [1, 3, R, R], "datatype": "FP32",
                                               "data": [0.0] * (3 * R * R - 1) + [1e39]}]}, 400, "finite"),
    "long request id": (lambda: {**body(), "id": "x" * 100_000}, 400, "id has 100000 characters"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_clear_4xx(server: MLServer, case: str) -> None:
    make, status, text = BAD_REQUESTS[case]
    response = post(server, make())
    assert response.status_code == status, response.text
    assert text.lower() in response.text.lower()
    assert set(response.json()) == {"error"}  # the one V2 error shape


def test_unknown_model_is_404(server: MLServer) -> None:
    response = post(server, body(), model="no-such-model")
    assert response.status_code == 404 and "no-such-model" in response.text


def test_server_still_serves_after_all_bad_requests(server: MLServer) -> None:
    for make, _, _ in BAD_REQUESTS.values():
        post(server, make())
    assert server.alive()
    assert post(server, body()).status_code == 200


# -- deadlines and overload ---------------------------------------------------------------------------------


def test_deadline_that_cannot_be_met_is_answered_504_at_once_with_numbers(server: MLServer) -> None:
    before = metric(server.metrics(), "ipa_requests_dropped_total", model=MODEL, reason="deadline")
    response = post(server, body(deadline_ms=0.001))
    assert response.status_code == 504
    error = response.json()["error"]
    assert error.startswith("deadline cannot be met") and " ms" in error and SMALL_VARIANTS[0] in error
    assert post(server, body(deadline_ms=-5)).status_code == 504
    after = metric(server.metrics(), "ipa_requests_dropped_total", model=MODEL, reason="deadline")
    assert after == before + 2


async def test_full_queue_answers_overloaded_503(server: MLServer) -> None:
    async with V2Client(server.http_url) as client:
        await client.control(MODEL, queue_limit=2, batch_size=1)
        try:
            for _attempt in range(3):  # the burst must arrive while the blocker runs; retry if it did not
                blocker = asyncio.create_task(client.infer(MODEL, images(64), priority=-1))
                while not blocker.done() and (await client.control(MODEL))["in_flight"] == 0:  # until served
                    await asyncio.sleep(0.002)
                results = await asyncio.gather(*(client.infer(MODEL, images(), priority=5) for _ in range(6)))
                assert (await blocker).ok
                if any(r.status == 503 for r in results):
                    break
        finally:
            await client.control(MODEL, queue_limit=256)
    statuses = sorted(r.status for r in results)
    assert statuses.count(503) >= 1, statuses
    assert set(statuses) <= {200, 503}
    overloaded = next(r for r in results if r.status == 503)
    assert "overloaded" in (overloaded.error or "") and "queue_limit 2" in (overloaded.error or "")
    text = server.metrics()
    assert metric(text, "ipa_requests_dropped_total", model=MODEL, reason="overloaded") >= statuses.count(503)


# -- control endpoint ----------------------------------------------------------------------------------------


async def test_control_state_and_validation(server: MLServer) -> None:
    async with V2Client(server.http_url) as client:
        state = await client.control(MODEL)
        assert state["model"] == MODEL and state["variant"] == SMALL_VARIANTS[0]
        assert [v["name"] for v in state["variants"]] == list(SMALL_VARIANTS)
        assert state["threads"] >= 1 and state["batch_size"] >= 1 and state["queue_length"] == 0
        assert state["service_time_ms"]  # measured at load
        for bad, status, reason in [
            ({"variant": "resnet9000"}, 422, "unknown variant 'resnet9000'"),
            ({"batch_size": 0}, 422, "batch_size"),
            ({"threads": -1}, 422, "threads"),
            ({"max_batch_time_ms": -1}, 422, "max_batch_time_ms"),
            ({"on_late": "maybe"}, 422, "on_late"),
            ({"colour": "blue"}, 422, "colour"),
            ({"threads": 1500}, 422, "threads"),  # made 1515 OS threads before it was bounded
            ({"threads": machine_threads() + 1}, 422, "more than this machine takes"),
            ({"batch_size": 1_000_000_000}, 422, "batch_size"),  # was a 44.7 TiB allocation and a 500
            ({"max_batch_time_ms": 1e300}, 422, "max_batch_time_ms"),
            ({"queue_limit": 10**12}, 422, "queue_limit"),
            ({"batch_size": "4"}, 422, "batch_size"),
            ({"variant": "../resnet50"}, 422, "variant"),
        ]:
            with pytest.raises(ControlError) as e:
                await client.control(MODEL, **bad)
            assert e.value.status == status and reason in e.value.reason, e.value
        assert (await client.control(MODEL))["variant"] == state["variant"]  # nothing applied


def test_control_rejects_bodies_that_are_not_json_objects(server: MLServer) -> None:
    url = f"{server.http_url}/v2/models/{MODEL}/control"
    for content in (b"{not json", b"[1, 2]", b'{"max_batch_time_ms": Infinity}', b'{"threads": NaN}'):
        response = httpx.post(url, content=content, headers={"content-type": "application/json", **AUTH})
        assert response.status_code == 422 and set(response.json()) == {"error"}, response.text


def test_control_changes_need_the_pipeline_token(server: MLServer) -> None:
    url = f"{server.http_url}/v2/models/{MODEL}/control"
    for headers in ({}, {"authorization": "Bearer not-the-token"}, {"authorization": "Basic abc"}):
        response = httpx.post(url, json={"threads": 1}, headers=headers)
        assert response.status_code == 401 and "token" in response.json()["error"], response.text
    assert httpx.get(url).status_code == 200  # reading the state stays open
    assert httpx.post(url, json={}, headers=AUTH).status_code == 200
    # MLServer's own writes: unloading the model needs the token too
    unload = httpx.post(f"{server.http_url}/v2/repository/models/{MODEL}/unload", json={})
    assert unload.status_code == 401 and set(unload.json()) == {"error"}
    assert httpx.get(f"{server.http_url}/v2/models/{MODEL}/ready").status_code == 200


async def test_control_changes_batch_settings_in_place(server: MLServer) -> None:
    async with V2Client(server.http_url) as client:
        state = await client.control(MODEL, batch_size=4, max_batch_time_ms=2.5, on_late="serve")
        assert (state["batch_size"], state["max_batch_time_ms"], state["on_late"]) == (4, 2.5, "serve")
        assert state["switches"] == 0  # no new session for batch settings
        late = await client.infer(MODEL, images(), deadline_ms=0.001)
        assert late.ok and late.parameters["deadline_ms"] < 0  # served late and says so
        state = await client.control(MODEL, batch_size=1, max_batch_time_ms=0, on_late="drop")
        assert (state["batch_size"], state["on_late"]) == (1, "drop")
    text = server.metrics()
    assert metric(text, "ipa_deadline_misses_total", model=MODEL, variant=SMALL_VARIANTS[0]) >= 1
    assert metric(text, "ipa_batch_size_limit", model=MODEL) == 1


# -- metrics ------------------------------------------------------------------------------------------------


def test_metrics_are_real_histograms_labelled_by_model_and_variant(server: MLServer) -> None:
    post(server, body(deadline_ms=5000))
    text = server.metrics()
    v = SMALL_VARIANTS[0]
    for name in ("ipa_request_latency_seconds", "ipa_queue_wait_seconds", "ipa_service_time_seconds",
                 "ipa_batch_size"):
        assert f"# TYPE {name} histogram" in text
        assert metric(text, f"{name}_count", model=MODEL, variant=v) >= 1
        assert metric(text, f"{name}_bucket", model=MODEL, variant=v, le="+Inf") >= 1
    assert metric(text, "ipa_request_latency_seconds_bucket", model=MODEL, variant=v, le="10.0") >= 1
    assert metric(text, "ipa_requests_served_total", model=MODEL, variant=v) >= 1
    assert metric(text, "ipa_active_variant", model=MODEL, variant=v) == 1
    assert metric(text, "ipa_active_variant", model=MODEL, variant=SMALL_VARIANTS[1]) == 0
    assert metric(text, "ipa_threads", model=MODEL) >= 1
    assert "ipa_queue_length" in text


# -- lifecycle (last: it unloads and reloads the model) ------------------------------------------------------


async def test_unload_serves_what_is_queued_and_reload_serves_again(server: MLServer) -> None:
    async with V2Client(server.http_url) as client:
        await client.control(MODEL, batch_size=1)
        queued = [asyncio.create_task(client.infer(MODEL, images(16))) for _ in range(4)]
        while True:  # all four reached the runtime (served, serving or queued) before the unload
            state = await client.control(MODEL)
            if state["queue_length"] + (state["in_flight"] > 0) + sum(t.done() for t in queued) >= 4:
                break
            await asyncio.sleep(0.002)
        await client.unload(MODEL)
        results = await asyncio.gather(*queued)
        assert [r.status for r in results] == [200] * 4  # drained, not dropped
        assert (await client.infer(MODEL, images())).status in (400, 404)  # gone: MLServer says so
        await client.load(MODEL)
        assert (await client.infer(MODEL, images())).ok
        assert (await client.control(MODEL))["model"] == MODEL  # the control endpoint is back too
