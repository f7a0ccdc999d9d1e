"""The replica's HTTP layer (`mlserver_ipa.server`, `mlserver_ipa.admission`) and the absolute deadline at the
runtime: requests whose deadline is gone are answered 504 before their body is decoded, the deadline travels as
epoch ms, and nothing is answered 200 after it. Against a real replica server on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import MLServer, image_request, write_model_settings

from mlserver_ipa.deadlines import DEADLINE_HEADER, BadDeadline, Clocks, absolute_deadline, parse_epoch_ms


def test_deadline_forms() -> None:
    assert parse_epoch_ms(None, "x") is None and parse_epoch_ms("", "x") is None
    assert parse_epoch_ms("1700000000123.5", "x") == 1700000000123.5
    for bad in ("soon", "nan", "inf", True, [1]):
        with pytest.raises(BadDeadline):
            parse_epoch_ms(bad, "header ipa-deadline")
    assert absolute_deadline(5.0, 100.0, 1000.0) == 5.0  # the absolute form wins
    assert absolute_deadline(None, 100.0, 1000.0) == 1100.0  # else relative from the arrival
    assert absolute_deadline(None, None, 1000.0) is None
    clocks = Clocks(monotonic=lambda: 10.0, wall=lambda: 1000.0)
    assert clocks.to_monotonic(1_000_250.0) == pytest.approx(10.25)
    assert clocks.to_epoch_ms(10.25) == pytest.approx(1_000_250.0)


@pytest.fixture(scope="module")
def replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    return start_mlserver(variant_repo)


def _infer(server: MLServer, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    url = f"{server.http_url}/v2/models/resnet/infer"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json", **headers}, timeout=30)
    return httpx.post(url, json=body, headers=headers, timeout=30)


def test_a_gone_deadline_is_answered_before_the_body_is_read(replica: MLServer) -> None:
    past = f"{time.time() * 1000 - 50:.3f}"
    # The body is not even JSON: a 504 (not a 400) shows it was never parsed.
    resp = _infer(replica, b"{this is not json", **{DEADLINE_HEADER: past})
    assert resp.status_code == 504 and "deadline cannot be met: it was gone" in resp.json()["error"]
    bad = _infer(replica, image_request(), **{DEADLINE_HEADER: "tomorrow"})
    assert bad.status_code == 400 and DEADLINE_HEADER in bad.json()["error"]
    # The server keeps serving, and counts the shed request as dropped for its deadline.
    assert _infer(replica, image_request()).status_code == 200
    assert 'reason="deadline"' in replica.metrics()


def test_the_absolute_deadline_is_read_and_echoed(replica: MLServer) -> None:
    at = time.time() * 1000 + 20_000
    resp = _infer(replica, image_request(deadline_ms=1.0), **{DEADLINE_HEADER: f"{at:.3f}"})
    assert resp.status_code == 200, resp.text  # the absolute header wins over the relative parameter
    params = resp.json()["parameters"]
    assert params["deadline_at_ms"] == pytest.approx(at, abs=1.0)
    assert 0 < params["deadline_ms"] < 20_000
    # As a V2 parameter (what a hop without the header sends): a gone one is refused before decoding --
    # the tensor has the wrong shape, yet the answer is the deadline's 504, not the shape's 400.
    wrong = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}],
             "parameters": {"deadline_at_ms": time.time() * 1000 - 5}}
    late = _infer(replica, wrong)
    assert late.status_code == 504 and "it was gone" in late.json()["error"]


def test_the_relative_deadline_counts_from_the_http_layer(replica: MLServer) -> None:
    resp = _infer(replica, image_request(deadline_ms=10_000.0))
    assert resp.status_code == 200
    params = resp.json()["parameters"]
    # The runtime computed its absolute deadline from the arrival stamp: it lies 10 s after a moment no later
    # than when this test sent the request.
    assert params["deadline_at_ms"] <= time.time() * 1000 + 10_000
    assert params["deadline_ms"] < 10_000


@pytest.fixture(scope="module")
def slow_replica(start_mlserver: Callable[..., MLServer], variant_repo: Path) -> MLServer:
    """resnet50, batch 1, no deviations: a replica whose service time is known and whose queue fills."""
    repo = write_model_settings(variant_repo, "resnet", active="resnet50", batch_size=1,
                                service_time_deviations=0.0)
    return start_mlserver(repo)


async def test_nothing_is_answered_200_after_its_deadline(slow_replica: MLServer) -> None:
    """A burst of requests, each with a tight deadline: every one is answered, none with 200 after its
    deadline, and those that could not make it are shed with 504."""
    import asyncio

    url = f"{slow_replica.http_url}/v2/models/resnet/infer"
    service = httpx.get(f"{slow_replica.http_url}/v2/models/resnet/control", timeout=10).json()["service_time_ms"]
    budget_ms = 20 * float(service["1"]) + 200  # 40 requests take twice that: some are served, some shed
    body = orjson.dumps(image_request())

    async def one(c: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
        deadline = time.time() * 1000 + budget_ms
        resp = await c.post(url, content=body, headers={DEADLINE_HEADER: f"{deadline:.3f}",
                                                        "content-type": "application/json"})
        return resp.status_code, resp.json()

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as c:
        warm = await asyncio.gather(*(c.post(url, content=body, headers={"content-type": "application/json"})
                                      for _ in range(40)))  # connections open, no deadline: all served
        assert {r.status_code for r in warm} == {200}
        answers = await asyncio.gather(*(one(c) for _ in range(40)))
    codes = [code for code, _ in answers]
    assert set(codes) <= {200, 504} and 504 in codes and 200 in codes, (service, [b for _, b in answers][:3])
    # Every 200 left the runtime with time to spare (what it computed from the absolute deadline when it answered).
    assert all(body["parameters"]["deadline_ms"] >= 0 for code, body in answers if code == 200)
