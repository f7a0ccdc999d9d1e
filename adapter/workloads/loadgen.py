"""The open-loop load generator: V2 inference requests sent at a trace's arrival times, whatever the server does.

Open loop means a request is sent at its scheduled time even when earlier ones have not been answered, and its
latency is measured from that *scheduled* time, so a slow server cannot slow the load down or hide its queueing
(no coordinated omission). If the generator itself falls behind, the gap shows up as send lag and as a lower
achieved rate in the summary, never as a shorter latency.

    plan = make_plan(trace, arrivals="poisson", seed=0, slo=FixedSLO(500), priority=None)
    records = asyncio.run(run_load(url, model, plan, payload=V2Payload.random(64)))
    summary = summarize(records, plan); write_records_csv(records, "rows.csv")

Each request carries `parameters.deadline_ms` (the budget the server has: a fixed SLO, or Sponge's dynamic SLO
from `adapter.workloads.slo`) and `parameters.priority` when given; the response's `parameters.variant` says what served it.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiohttp
import numpy as np
import orjson

from adapter.errors import UsageError
from adapter.workloads.slo import SLOSource
from adapter.workloads.traces import Trace, arrival_times
from mlserver_ipa.deadlines import DEADLINE_HEADER, RELATIVE_PARAM, format_epoch_ms


@dataclass(frozen=True)
class LoadPlan:
    """What to send: arrival times (seconds from the start), each request's deadline (ms) and a priority."""

    times_s: np.ndarray
    duration_s: float
    """the length of the trace the times come from: the intended rate is `len(times_s) / duration_s`"""
    deadlines_ms: np.ndarray | None = None
    priority: int | None = None

    def __len__(self) -> int:
        return int(self.times_s.shape[0])

    @property
    def intended_rps(self) -> float:
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0


def make_plan(
    trace: Trace,
    *,
    arrivals: str = "poisson",
    seed: int = 0,
    slo: SLOSource | None = None,
    priority: int | None = None,
) -> LoadPlan:
    """Arrival times of `trace` (see `workload.arrival_times`) with the deadline `slo` gives each of them."""
    times = arrival_times(trace, arrivals, seed)
    deadlines = slo.deadlines_ms(times) if slo is not None else None
    return LoadPlan(times, float(trace.duration_s), deadlines, priority)


@dataclass(frozen=True)
class V2Payload:
    """The request's input tensor, serialised to JSON once (re-encoding 12 k floats per request would cost the
    generator more CPU than the server's inference). With `alternatives`, request i carries alternative
    i mod n, and the string parameters of `parameters[i mod n]` when given (`adapter.workloads.inputs` makes
    these: sentences, speech, a question per sample)."""

    inputs_json: bytes
    alternatives: tuple[bytes, ...] = ()
    parameters: tuple[dict[str, str], ...] = ()

    @classmethod
    def random(cls, resolution: int = 64, seed: int = 0, name: str = "input") -> V2Payload:
        """One FP32 image tensor `[1, 3, R, R]` of uniform random values (3 decimals keep the JSON small)."""
        if resolution < 1:
            raise UsageError(f"resolution must be >= 1, got {resolution}")
        data = np.round(np.random.default_rng(seed).random(3 * resolution * resolution), 3)
        tensor = {"name": name, "datatype": "FP32", "shape": [1, 3, resolution, resolution], "data": data.tolist()}
        return cls(json.dumps([tensor], separators=(",", ":")).encode())

    def body(self, parameters: dict[str, float | int], index: int = 0) -> bytes:
        inputs = self.alternatives[index % len(self.alternatives)] if self.alternatives else self.inputs_json
        merged: dict[str, object] = dict(parameters)
        if self.parameters:
            merged.update(self.parameters[index % len(self.parameters)])
        params = json.dumps(merged, separators=(",", ":")).encode()
        return b'{"parameters":' + params + b',"inputs":' + inputs + b"}"

    def size_bytes(self, parameters: dict[str, float | int] | None = None) -> int:
        return len(self.body(parameters or {}))


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request. Times are seconds from the start of the run."""

    index: int
    scheduled_s: float
    sent_s: float
    latency_ms: float
    """from the scheduled send time to the end of the response (or of the failure)"""
    status: int
    """HTTP status; 0 when there was no response (timeout, connection refused, …)"""
    error: str
    """'' when answered 200; else the kind: `http_503`, `timeout`, `connect`, `read`, …"""
    variant: str
    """what served it: a model's `parameters.variant`, a pipeline's `parameters.variants` (`stage=variant,…`)"""
    deadline_ms: float | None
    deadline_met: bool | None
    """answered 200 within `deadline_ms` of the scheduled time; None when the request had no deadline"""
    left_ms: float | None = None
    """what the server said was left of the deadline when it answered (its `parameters.deadline_ms`); None when it
    did not say: with `latency_ms`, it tells the time the answer took to come back from the time it took to make"""
    reason: str = ""
    """the server's message for an error answer (`{"error": …}`, at most `REASON_CHARS`): which stage or replica
    shed it and why, so a run's drops can be told apart afterwards"""


REASON_CHARS = 300


def _error_reason(content: bytes) -> str:
    """The `error` of a `{"error": "..."}` answer (what every hop of the pipeline answers), else the body's start."""
    try:
        body = json.loads(content)
        text = str(body.get("error", "")) if isinstance(body, dict) else ""
    except ValueError:
        text = ""
    if not text:
        text = content[:REASON_CHARS].decode("utf-8", "replace")
    return " ".join(text.split())[:REASON_CHARS]


def _error_kind(e: BaseException) -> str:
    if isinstance(e, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return "timeout"
    if isinstance(e, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(e, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
        return "read"
    return type(e).__name__


async def run_load(
    url: str,
    model: str,
    plan: LoadPlan,
    *,
    payload: V2Payload,
    timeout_s: float = 30.0,
    max_connections: int = 1024,
    on_record: Callable[[RequestRecord], None] | None = None,
    absolute_deadlines: bool = True,
) -> list[RequestRecord]:
    """Send `plan` to `url` (`/v2/models/<model>/infer` is appended) open-loop; the records in plan order.

    `max_connections` bounds the sockets open at once; a request waiting for one is already late, and its
    latency (from the scheduled time) says so. `absolute_deadlines` (the default): each request also carries its
    deadline as an absolute `ipa-deadline` header counted from its scheduled send, as a client's own deadline
    runs, so the servers shed what this generator sent late instead of answering it after the client's deadline;
    off, the router counts `deadline_ms` from its own arrival stamp and the generator's lag is invisible to it.
    """
    endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
    # The generator stands in for clients on other machines: its own collector's pauses (a full pass over what
    # this process imported took 130 ms under a burst) would show as the pipeline's latency. What exists now is
    # left out of collections while the load runs (`mlserver_ipa.heap`), and given back to them after.
    gc.freeze()
    try:
        return await _send_all(endpoint, plan, payload, timeout_s, max_connections, on_record, absolute_deadlines)
    finally:
        gc.unfreeze()


async def _send_all(endpoint: str, plan: LoadPlan, payload: V2Payload, timeout_s: float, max_connections: int,
                    on_record: Callable[[RequestRecord], None] | None, absolute_deadlines: bool) -> list[RequestRecord]:
    loop = asyncio.get_running_loop()
    records: list[RequestRecord | None] = [None] * len(plan)
    # aiohttp, not httpx: under a burst httpx's connection pool kept requests waiting inside this process (the
    # router's listen and receive queues empty, 27-73 connections open at 62-76 rps sent) while it had CPU to
    # spare. Idle connections expire before uvicorn's 5 s keep-alive, so a request never rides a connection the
    # server is closing (a read error that is not the server's answer).
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=2.0)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as client:
        start = loop.time() + 0.05  # a short lead so the first sends are not late by our own set-up

        async def send(index: int, scheduled: float) -> None:
            deadline = None if plan.deadlines_ms is None else float(plan.deadlines_ms[index])
            params: dict[str, float | int] = {}
            if deadline is not None:
                params["deadline_ms"] = round(deadline, 3)
            if plan.priority is not None:
                params["priority"] = plan.priority
            sent = loop.time()
            status, error, variant, left, reason = 0, "", "", None, ""
            request_headers = headers
            if deadline is not None and absolute_deadlines:
                # The deadline runs from the scheduled send, as the latency does: a request this generator sends
                # late is already late for the router too (`mlserver_ipa.deadlines`, header `ipa-deadline`).
                at_ms = (time.time() + (start + scheduled - sent)) * 1000 + deadline
                request_headers = {**headers, DEADLINE_HEADER: format_epoch_ms(at_ms)}
            try:
                async with client.post(endpoint, data=payload.body(params, index), headers=request_headers) as response:
                    status = response.status
                    content = await response.read()
                if status == 200:
                    answer = orjson.loads(content).get("parameters") or {}
                    # a model says `variant`; a pipeline router says `variants` (`stage=variant,…`)
                    variant = str(answer.get("variant") or answer.get("variants") or "")
                    said = answer.get(RELATIVE_PARAM)
                    left = float(said) if isinstance(said, int | float) and not isinstance(said, bool) else None
                else:
                    error, reason = f"http_{status}", _error_reason(content)
            except (TimeoutError, aiohttp.ClientError) as e:
                error = _error_kind(e)
            except (ValueError, AttributeError):  # a 200 whose body is not a JSON object (orjson's error is one)
                error = "bad_response"
            latency_ms = (loop.time() - (start + scheduled)) * 1000
            met = None if deadline is None else (not error and latency_ms <= deadline)
            record = RequestRecord(index, scheduled, sent - start, latency_ms, status, error, variant, deadline, met,
                                   left, reason)
            records[index] = record
            if on_record is not None:
                on_record(record)

        tasks: set[asyncio.Task[None]] = set()
        for index, scheduled in enumerate(plan.times_s.tolist()):
            delay = start + scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = loop.create_task(send(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)  # keep a reference until done, then let it go
        while tasks:
            await asyncio.gather(*list(tasks))
    return [r for r in records if r is not None]


@dataclass(frozen=True)
class LoadSummary:
    """The run in a few numbers; latencies are of answered (200) requests."""

    sent: int
    ok: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    deadline_met_share: float | None
    """share of all requests answered within their deadline; None without deadlines"""
    intended_rps: float
    achieved_rps: float
    """requests sent / max(trace duration, time of the last send)"""
    send_lag_p99_ms: float
    """how late the generator itself sent (actual − scheduled), 99th percentile"""
    variants: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        """For JSON: NaN (no answered request) becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def lines(self) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        met = "n/a" if self.deadline_met_share is None else f"{100 * self.deadline_met_share:.1f} %"
        served = ", ".join(f"{k} {v}" for k, v in sorted(self.variants.items())) or "n/a"
        return [
            f"sent {self.sent}, ok {self.ok}, errors: {errors}",
            f"latency p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; deadline met {met}",
            f"rate intended {self.intended_rps:.2f} rps, achieved {self.achieved_rps:.2f} rps; "
            f"send lag p99 {self.send_lag_p99_ms:.1f} ms",
            f"served by: {served}",
        ]


def summarize(records: list[RequestRecord], plan: LoadPlan) -> LoadSummary:
    ok = [r.latency_ms for r in records if not r.error]
    lags = [(r.sent_s - r.scheduled_s) * 1000 for r in records]
    met = [r.deadline_met for r in records if r.deadline_met is not None]
    last_send = max((r.sent_s for r in records), default=0.0)
    return LoadSummary(
        sent=len(records),
        ok=len(ok),
        errors=dict(Counter(r.error for r in records if r.error)),
        p50_ms=float(np.percentile(ok, 50)) if ok else math.nan,
        p99_ms=float(np.percentile(ok, 99)) if ok else math.nan,
        deadline_met_share=(sum(met) / len(met)) if met else None,
        intended_rps=plan.intended_rps,
        achieved_rps=len(records) / max(plan.duration_s, last_send) if records else 0.0,
        send_lag_p99_ms=float(np.percentile(lags, 99)) if lags else 0.0,
        variants=dict(Counter(r.variant for r in records if r.variant)),
    )


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))


def write_records_csv(records: Iterable[RequestRecord], path: str | Path) -> None:
    """One row per request, columns `CSV_COLUMNS` (times in s, latency and deadline in ms, 3 decimals)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for record in records:
            row = asdict(record)
            for key in ("scheduled_s", "sent_s", "latency_ms", "deadline_ms", "left_ms"):
                if row[key] is not None:
                    row[key] = round(row[key], 3)
            writer.writerow(row)
