"""Closed-loop load against one V2 model: how the profiler measures one (variant, batch, cores) point.

`concurrency` clients each send a request, wait for the answer, and send the next: the replica is saturated
(with `2 × batch` clients one batch waits while one is served). After a warm-up, one window is measured:
requests completed in it give the throughput; requests that started and ended in it give the latency, each
**minus the time it waited in the runtime's queue** (`queue_ms` in the response parameters; see
`adapter.profiling.profiler` for why). The window is extended until it holds `min_batches` batches (slow points), up to
`max_extend ×` its length. Time is read from an injected `clock`.

One pre-encoded request is sent again and again, and only `queue_ms`/`batch_id` are read from the answers: the
load generator shares the machine with the replica it measures, so it must cost little. It goes the way the
pipeline's router sends it (`grpc_sender`: V2 gRPC with raw tensor contents, the router's default hop) or as V2
REST/JSON (`rest_sender`), so that the service time measured includes the decoding the live hop costs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from adapter.errors import UsageError
from mlserver_ipa.grpc_hop import GrpcHop
from mlserver_ipa.wire_tensors import raw

_DTYPES = {1: ("FP32", np.float32), 11: ("FP64", np.float64), 7: ("INT64", np.int64), 6: ("INT32", np.int32)}


def request_body(onnx_path: Path, seed: int = 0) -> bytes:
    """One V2 request (JSON) carrying one item for every input of the model, random data, fixed seed.

    The first dimension is the batch (one item per request; the runtime batches requests); any other
    symbolic dimension cannot be guessed, so it is an error.
    """
    import onnx  # heavy; only the profiler needs it

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(seed)
    inputs = []
    for inp in model.graph.input:
        if inp.name in init:
            continue
        t = inp.type.tensor_type
        if t.elem_type not in _DTYPES:
            raise UsageError(f"{onnx_path}: input {inp.name}: element type {t.elem_type} is not supported")
        dims = []
        for k, d in enumerate(t.shape.dim):
            if k == 0:
                dims.append(1)
            elif d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            else:
                raise UsageError(f"{onnx_path}: input {inp.name}: dimension {k} is symbolic ({d.dim_param})")
        name, dtype = _DTYPES[t.elem_type]
        data = rng.standard_normal(dims).astype(dtype) if name.startswith("FP") else np.zeros(dims, dtype)
        inputs.append({"name": inp.name, "shape": dims, "datatype": name, "data": data.ravel().tolist()})
    return orjson.dumps({"inputs": inputs})


@dataclass
class LoadResult:
    """What one measuring window saw."""

    window_s: float
    completed: int  # requests that finished inside the window
    latencies_ms: list[float]  # per request that started and finished inside it, queue wait excluded
    batches: int  # distinct batch ids among those requests
    errors: list[str] = field(default_factory=list)
    queue_reported: bool = True

    @property
    def throughput_rps(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """What the closed loop reads from one answer."""

    status: int
    queue_ms: float | None = None
    batch_id: int | None = None
    error: str = ""


Sender = Callable[[], Awaitable[Answer]]
"""Sends the point's request once and reads its answer; raises `SendError` when no answer came."""


class SendError(Exception):
    """No answer (connection refused or reset, a timeout)."""


def rest_sender(client: httpx.AsyncClient, url: str, body: bytes) -> Sender:
    """POST `body` (V2 JSON) to `url` on `client`."""

    async def send() -> Answer:
        try:
            resp = await client.post(url, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            raise SendError(f"{type(e).__name__}: {e}") from e
        if resp.status_code != 200:
            return Answer(resp.status_code, error=resp.text[:200])
        queue, batch_id = served_by(resp.content)
        return Answer(200, queue, batch_id)

    return send


def grpc_sender(hop: GrpcHop, address: str, model: str, body: bytes, timeout_s: float) -> Sender:
    """`body` (V2 JSON) sent as a V2 gRPC `ModelInfer` to `address` with raw contents, as the router sends it;
    its tensors are turned into raw bytes once, here."""
    request = orjson.loads(body)
    request["inputs"] = [{**t, "data": raw(t)} for t in request["inputs"]]

    async def send() -> Answer:
        status, payload = await hop.call(address, model, request, {}, timeout_s)  # no answer: 503 or 504
        if status != 200:
            return Answer(status, error=str(payload.get("error", ""))[:200])
        params = payload.get("parameters") or {}
        queue, batch_id = params.get("queue_ms"), params.get("batch_id")
        return Answer(200, float(queue) if queue is not None else None,
                      int(batch_id) if batch_id is not None else None)

    return send


async def drive_load(
    send: Sender,
    concurrency: int,
    batch: int,
    *,
    warmup_s: float,
    duration_s: float,
    min_batches: int,
    max_extend: float,
    clock: Callable[[], float] = time.perf_counter,
) -> LoadResult:
    """Closed-loop load: warm up, then measure one window (see the module doc)."""
    start = clock()
    window_start = start + warmup_s
    min_end = window_start + duration_s
    max_end = window_start + duration_s * max_extend
    window_end: float | None = None  # set once the window closes
    latencies: list[float] = []
    finished: list[float] = []
    batch_ids: set[Any] = set()
    errors: list[str] = []
    no_queue = False

    def enough(now: float) -> bool:
        if now >= max_end:
            return True
        return now >= min_end and len(batch_ids) >= min_batches

    async def worker() -> None:
        nonlocal window_end, no_queue
        while window_end is None:
            t0 = clock()
            try:
                answer = await send()
            except SendError as e:
                errors.append(str(e))
                await asyncio.sleep(0.05)
                continue
            t1 = clock()
            if answer.status != 200:
                errors.append(f"HTTP {answer.status}: {answer.error}")
                continue
            if window_end is not None and t1 > window_end:
                break
            if t1 >= window_start:
                finished.append(t1)
            if t0 >= window_start:
                queue, batch_id = answer.queue_ms, answer.batch_id
                if queue is None:
                    no_queue = True
                    queue = 0.0
                latencies.append(max(1000.0 * (t1 - t0) - queue, 0.0))
                batch_ids.add(batch_id if batch_id is not None else len(latencies) // max(batch, 1))
            if window_end is None and enough(t1):
                window_end = t1
            if len(errors) > 20:
                break

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    end = window_end if window_end is not None else clock()
    return LoadResult(
        window_s=max(end - window_start, 1e-9),
        completed=sum(1 for t in finished if t <= end),
        latencies_ms=latencies,
        batches=len(batch_ids),
        errors=errors,
        queue_reported=not no_queue,
    )


_QUEUE_MS = re.compile(rb'"queue_ms"\s*:\s*(-?[0-9.eE+-]+)')
_BATCH_ID = re.compile(rb'"batch_id"\s*:\s*(-?[0-9]+)')


def served_by(body: bytes) -> tuple[float | None, int | None]:
    """`queue_ms` and `batch_id` from a V2 response's parameters.

    Found by a byte search rather than by parsing: a detector's answer is a megabyte of JSON numbers, and
    the load generator shares the machine with the replica it measures, so it reads only what it needs
    (the two keys occur nowhere else in a V2 response: tensor data are numbers, names are ours).
    """
    q = _QUEUE_MS.search(body)
    b = _BATCH_ID.search(body)
    try:
        return (float(q.group(1)) if q else None, int(b.group(1)) if b else None)
    except ValueError:
        params = orjson.loads(body).get("parameters") or {}
        queue, batch_id = params.get("queue_ms"), params.get("batch_id")
        return (float(queue) if queue is not None else None, int(batch_id) if batch_id is not None else None)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation (numpy's default), of already sorted values."""
    return float(np.percentile(np.asarray(sorted_values), q))
