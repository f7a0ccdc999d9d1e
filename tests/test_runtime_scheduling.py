"""Scheduling in a real server: a burst queued behind a slow batch is served by priority class, then earliest
deadline first, in batches of up to `batch_size` rows. Order is read from the response parameters
(`batch_id`, `batch_size`), never from wall-clock timings."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest
from conftest import SMALL_RESOLUTION, SMALL_VARIANTS, MLServer, write_model_settings

from mlserver_ipa.client import InferResult, V2Client

MODEL = "resnet"
SLOW = SMALL_VARIANTS[-1]
R = SMALL_RESOLUTION


@pytest.fixture(scope="module")
def server(start_mlserver, variant_repo) -> MLServer:
    repo = write_model_settings(variant_repo, MODEL, active=SLOW, batch_size=2)
    return start_mlserver(repo)


def images(rows: int = 1) -> np.ndarray:
    return np.zeros((rows, 3, R, R), dtype=np.float32)


async def burst_behind_a_blocker(client: V2Client, requests: list[dict]) -> list[InferResult]:
    """Occupy the server with a large request, queue `requests` behind it all at once, and return their
    answers. Retried when the burst did not all wait in the queue together (a very slow client)."""
    for _attempt in range(3):
        blocker = asyncio.create_task(client.infer(MODEL, images(64), priority=-10))
        while not blocker.done() and (await client.control(MODEL))["in_flight"] == 0:
            await asyncio.sleep(0.002)
        tasks = [asyncio.create_task(client.infer(MODEL, images(), **r)) for r in requests]
        all_queued = False
        while not all(t.done() for t in tasks):
            state = await client.control(MODEL)
            all_queued = all_queued or state["queue_length"] == len(requests)
            if all_queued or state["in_flight"] == 0:
                break
            await asyncio.sleep(0.002)
        results = await asyncio.gather(*tasks)
        assert (await blocker).ok
        if all_queued:
            return results
    pytest.skip("could not queue the whole burst behind the blocker on this machine")


async def test_burst_is_served_by_priority_then_earliest_deadline_in_full_batches(server: MLServer) -> None:
    rng = random.Random(4)
    # Generous deadlines: none should be dropped; their order is what matters.
    requests = [{"deadline_ms": 20_000 + 500 * i, "priority": 0} for i in range(8)]
    requests += [{"deadline_ms": 10_000 + 500 * i, "priority": 1} for i in range(4)]  # earlier, but lower class
    rng.shuffle(requests)
    async with V2Client(server.http_url) as client:
        results = await burst_behind_a_blocker(client, requests)
    assert all(r.ok for r in results), [r.error for r in results]
    batches: dict[int, list[tuple[int, int]]] = {}
    for result, req in zip(results, requests, strict=True):
        batches.setdefault(result.parameters["batch_id"], []).append((req["priority"], req["deadline_ms"]))
    in_order = [sorted(batches[b]) for b in sorted(batches)]
    for earlier, later in zip(in_order, in_order[1:], strict=False):
        assert max(earlier) < min(later), in_order  # class first, then EDF within the class
    assert all(r.parameters["batch_size"] == 2 for r in results)  # the batches filled up to batch_size
    batch_ids = [r.parameters["batch_id"] for r in results]
    assert all(batch_ids.count(b) == 2 for b in batch_ids)
    assert all(r.parameters["variant"] == SLOW for r in results)


async def test_requests_that_would_miss_behind_the_queue_are_dropped_not_served_late(server: MLServer) -> None:
    """Behind a blocker, requests whose budget is shorter than the wait are answered 504 at once."""
    async with V2Client(server.http_url) as client:
        state = await client.control(MODEL)
        one_row_ms = state["service_time_ms"]["1"]
        blocker = asyncio.create_task(client.infer(MODEL, images(64), priority=-10))
        while not blocker.done() and (await client.control(MODEL))["in_flight"] == 0:
            await asyncio.sleep(0.002)
        # The blocker takes many times one row's service time; this budget cannot wait that long.
        hopeless = await client.infer(MODEL, images(), deadline_ms=3 * one_row_ms)
        assert (await blocker).ok
    assert hopeless.status == 504, (hopeless.status, hopeless.parameters)
    assert "deadline cannot be met" in (hopeless.error or "")




def span_ms(result: InferResult, budget_ms: float) -> tuple[float, float, float]:
    """(arrival, dispatch, end) of a served request, epoch ms on the server's clock, from what it answered
    (a request sent with `deadline_ms=budget_ms` is answered its deadline as `deadline_at_ms`)."""
    arrival = result.parameters["deadline_at_ms"] - budget_ms
    dispatch = arrival + result.parameters["queue_ms"]
    return arrival, dispatch, dispatch + result.parameters["service_ms"]


async def test_a_request_that_waited_through_a_batch_still_waits_for_its_batch_to_fill(server: MLServer) -> None:
    """The batch window restarts when the server frees (`batching.plan_batch`): a request that waited through
    long batches, past its window, is not sent off alone the moment the server frees; it waits for the request
    sent right after the last batch's answer (a closed-loop client coming back), and they share a batch."""
    window_ms, budget_ms = 100.0, 600_000.0
    async with V2Client(server.http_url) as client:
        await client.control(MODEL, max_batch_time_ms=window_ms)
        try:
            probe = await client.infer(MODEL, images(64), priority=-10)
            assert probe.ok, probe.error
            # enough blockers ahead that the one request waits well past its window behind them
            count = 2 + math.ceil(3 * window_ms / probe.parameters["service_ms"])
            for _attempt in range(3):
                blockers = [asyncio.create_task(client.infer(MODEL, images(64), priority=-10, deadline_ms=budget_ms))
                            for _ in range(count)]
                while not any(b.done() for b in blockers) and (await client.control(MODEL))["in_flight"] == 0:
                    await asyncio.sleep(0.002)
                waiting = asyncio.create_task(client.infer(MODEL, images(), deadline_ms=budget_ms))
                done = await asyncio.gather(*blockers)
                follower = await client.infer(MODEL, images(), deadline_ms=budget_ms)  # once the last is answered
                first = await waiting
                assert all(r.ok for r in [*done, first, follower]), [r.error for r in [*done, first, follower]]
                arrived = span_ms(first, budget_ms)[0]
                freed = max(span_ms(r, budget_ms)[2] for r in done)
                if freed - arrived > window_ms:  # its window ended while the blockers ran: the case under test
                    break
            else:
                pytest.skip("could not make one request wait past its window behind the blockers on this machine")
        finally:
            await client.control(MODEL, max_batch_time_ms=0)
    assert first.parameters["batch_id"] == follower.parameters["batch_id"], (first.parameters, follower.parameters)
    assert first.parameters["batch_size"] == 2
