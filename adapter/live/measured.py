"""A load replayed through the live pipeline (`ipa up`'s), measured, and turned into the simulator's frame.

    run = await run_live(spec, trace, UpSettings(interval_s=5, port=0, adapter_port=0), Path("out"), resolution=64)
    frame = measured_frame(spec, run)          # the per-second columns of `adapter.sim.metrics`, measured

`run_live` brings the pipeline up (`adapter.control.embedded.EmbeddedPipeline`: router, local cluster, adapter) and
replays the trace through it with `ipa load` in its own process, as a client would: open loop, Poisson
arrivals, the graph's SLO as every request's deadline. (In the same process, the load generator and the router
would share one event loop and one core, and the generator's work would show up as the pipeline's latency.)
The moment the load starts the adapter takes one decision, so that it then decides at `k · interval_s` of the
load exactly as the simulator does. The cores the cluster holds are sampled about four times a second.
Everything stops afterwards, also when cancelled: Ctrl-C leaves no process behind.

`measured_frame` feeds what was measured to the simulator's own frame builder (`adapter.sim.metrics.build_frame`),
so both runs are counted the same way: per request its arrival time, end-to-end latency as the client saw it
(an error or a dropped request is not answered), and the pipeline accuracy of the variants that served it (the
router's `parameters.variants`); per decision of the adapter its time, predicted load and decision; the cores
held by replicas starting, serving or draining.
"""
from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapter.control.embedded import EmbeddedPipeline, UpSettings
from adapter.control.router_process import detach_at_router_priority
from adapter.control.service import DecisionRecord
from adapter.errors import UsageError
from adapter.executors.local.cluster import LocalCluster
from adapter.sim.metrics import Frame, TickRecord, build_frame
from adapter.spec import GraphSpec
from adapter.workloads.loadgen import LoadPlan, RequestRecord, make_plan
from adapter.workloads.slo import FixedSLO
from adapter.workloads.traces import Trace

HOLDING = ("starting", "ready", "draining", "stopping")
"""Replica phases whose cores count as held (what the simulator counts: starting, serving, draining)."""


@dataclass
class LiveRun:
    """What one replay through the live pipeline measured. Times are seconds from the load's start."""

    plan: LoadPlan
    requests: list[RequestRecord]
    """one per request of the plan, in plan order"""
    decisions: list[DecisionRecord]
    """every decision of the adapter, the first deployment included"""
    ticks: list[TickRecord]
    """the decisions as the simulator records its adapter runs (time, predicted load, decision)"""
    cores_log: list[tuple[float, float]]
    """(time, cores held by the cluster's replicas), sampled"""
    idle_s: float
    """seconds the adapter ran before the load started (what it observed then was no load)"""
    interval_s: float
    cpu_limit: str = ""
    """how the cluster limited CPU: cgroup2, cgroup1 or affinity"""


async def _sample_cores(cluster: LocalCluster, out: list[tuple[float, float]], every_s: float) -> None:
    """(monotonic time, cores held) into `out` every `every_s` seconds, until cancelled."""
    while True:
        state = await cluster.state()
        out.append((time.monotonic(), sum(r.cores for s in state.stages for r in s.replicas if r.phase in HOLDING)))
        await asyncio.sleep(every_s)


def load_command(url: str, model: str, trace_file: Path, out: Path, *, seed: int, slo_ms: float, resolution: int,
                 timeout_s: float, inputs: str = "image", question: bool = False) -> list[str]:
    """The `ipa load` command that replays `trace_file` against the pipeline (its own process, see module doc)."""
    script = Path(sys.executable).parent / "ipa"
    ipa = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from adapter.cli import main; "
                                                  "sys.exit(main())"]
    return [*ipa, "load", "--url", url, "--model", model, "--trace", str(trace_file), "--arrivals", "poisson",
            "--seed", str(seed), "--slo-ms", repr(slo_ms), "--resolution", str(resolution), "--timeout",
            f"{timeout_s:g}", "--out", str(out), "--inputs", inputs, *(["--question"] if question else [])]


async def run_live(
    spec: GraphSpec,
    trace: Trace,
    settings: UpSettings,
    workdir: Path,
    *,
    resolution: int,
    inputs: str = "image",
    question: bool = False,
    seed: int = 0,
    timeout_s: float = 30.0,
    progress: Callable[[str], None] = print,
    on_record: Callable[[DecisionRecord], None] | None = None,
    on_up: Callable[[EmbeddedPipeline], None] | None = None,
    sample_every_s: float = 0.25,
) -> LiveRun:
    """Bring the pipeline up with `settings`, replay `trace` through it with `ipa load`, stop it; what was measured.

    Writes `trace.txt` (the per-second load replayed), `requests.csv` and `requests.json` (the load generator's
    rows and summary) into `workdir`. Requests are `inputs` (`adapter.workloads.inputs`: images
    `[1, 3, resolution, resolution]`, speech, sentences, ...; with a question when `question`), each with the graph's
    SLO (minus its network time) as its deadline, Poisson arrivals seeded by `seed`. `on_record` sees every
    decision, `on_up` the pipeline once it is up. `settings.dry_run` is refused: there would be nothing to measure.
    """
    if settings.dry_run:
        raise ValueError("a dry run serves nothing to measure")
    slo_ms = spec.slo_ms - spec.network_ms
    plan = make_plan(trace, arrivals="poisson", seed=seed, slo=FixedSLO(slo_ms))  # what `ipa load` will send
    workdir.mkdir(parents=True, exist_ok=True)
    trace_file, records_file = workdir / "trace.txt", workdir / "requests.csv"
    trace_file.write_text(" ".join(repr(float(x)) for x in trace.rates) + "\n")  # repr: the very same floats
    decisions: list[DecisionRecord] = []
    samples: list[tuple[float, float]] = []

    def record(r: DecisionRecord) -> None:
        decisions.append(r)
        if on_record is not None:
            on_record(r)

    async with EmbeddedPipeline(spec, settings, on_record=record, progress=progress) as up:
        assert up.service is not None and up.cluster is not None
        service, up_at = up.service, up.service.started_at
        if on_up is not None:
            on_up(up)
        if time.monotonic() >= (service.last_decided_at or 0.0) + service.settings.interval_s:
            while len(decisions) < 2:  # the first deployment took longer than an interval: the loop decides now
                await asyncio.sleep(0.01)
        sampler = asyncio.create_task(_sample_cores(up.cluster, samples, sample_every_s))
        command = load_command(up.router_url, spec.name, trace_file, records_file, seed=seed, slo_ms=slo_ms,
                               resolution=resolution, timeout_s=timeout_s, inputs=inputs, question=question)
        # At the router's priority: it stands in for clients on other machines, and at a replica's share of
        # two cores it sent up to 7 s late and read its answers as late, under a burst on a loaded machine.
        proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE,
                                                    env={**os.environ, "TQDM_DISABLE": "1"},
                                                    preexec_fn=detach_at_router_priority)
        try:
            assert proc.stdout is not None
            await proc.stdout.readline()  # "<trace>: N requests over D s ...": printed just before the first send
            t0 = time.monotonic() + 0.05  # run_load's lead before its first send
            # A decision at t0 restarts the adapter's interval timer: it then decides at k·interval of the load,
            # and samples its per-second load on the load's own seconds, as the simulator counts them.
            await asyncio.sleep(max(0.0, t0 - time.monotonic()))
            await service.decide("forced")
            out, err = await proc.communicate()
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            if proc.returncode is None:  # cancelled (Ctrl-C): the load generator goes too
                proc.terminate()
                await proc.wait()
        cpu_limit = (await up.cluster.state()).cpu_limit
    if proc.returncode != 0 or not records_file.exists():
        tail = (err.decode(errors="replace") or out.decode(errors="replace")).strip().splitlines()[-3:]
        raise UsageError(f"the load generator failed (exit {proc.returncode}): {' / '.join(tail)}")
    requests = read_records_csv(records_file)
    cores_log = [(t - t0, c) for t, c in samples]  # samples before the load: what was held when it started
    return LiveRun(plan=plan, requests=requests, decisions=decisions, ticks=ticks_of(decisions, t0),
                   cores_log=cores_log, idle_s=max(0.0, t0 - up_at), interval_s=up.spec.interval_s,
                   cpu_limit=cpu_limit)


def read_records_csv(path: Path) -> list[RequestRecord]:
    """The rows `adapter.workloads.loadgen.write_records_csv` wrote (times rounded to the ms), in plan order."""
    def number(v: str) -> float | None:
        return float(v) if v != "" else None

    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append(RequestRecord(
                index=int(r["index"]), scheduled_s=float(r["scheduled_s"]), sent_s=float(r["sent_s"]),
                latency_ms=float(r["latency_ms"]), status=int(r["status"]), error=r["error"], variant=r["variant"],
                deadline_ms=number(r["deadline_ms"]),
                deadline_met=None if r["deadline_met"] == "" else r["deadline_met"] == "True",
                left_ms=number(r.get("left_ms") or ""), reason=r.get("reason") or ""))
    return sorted(rows, key=lambda x: x.index)


def ticks_of(decisions: list[DecisionRecord], t0: float) -> list[TickRecord]:
    """The adapter's decisions as simulator ticks: time from `t0`, the load it decided for, the decision."""
    ticks: list[TickRecord] = []
    predicted = 0.0
    for r in decisions:
        if r.predicted_load_rps is not None:
            predicted = r.predicted_load_rps
        ticks.append(TickRecord(r.at - t0, predicted, r.decision))
    return ticks


def request_accuracy(spec: GraphSpec, served_by: str) -> float:
    """The pipeline accuracy (a fraction) of the variants named in `served_by`: a router's `stage=variant,…`,
    or a bare variant for a one-stage pipeline; nan when it names none of the spec's variants."""
    names: dict[str, str] = {}
    for part in served_by.split(","):
        stage, sep, variant = part.strip().partition("=")
        if sep:
            names[stage] = variant
        elif part.strip() and len(spec.stages) == 1:
            names[spec.stages[0].name] = part.strip()
    fracs = []
    for st in spec.stages:
        try:
            fracs.append(st.variant(names[st.name]).accuracy / 100.0)
        except KeyError:
            return math.nan
    return math.prod(fracs) if spec.accuracy == "product" else sum(fracs) / len(fracs)


def measured_frame(spec: GraphSpec, run: LiveRun) -> Frame:
    """The per-second frame of a live run (the columns of `adapter.sim.metrics`), counted by the simulator's code.

    A request counts as answered when it got a 200; its latency is the client's (from the scheduled send,
    network included); its SLO is its deadline (default the graph's `slo_ms`).
    """
    reqs = run.requests
    n = max(1, math.ceil(run.plan.duration_s))
    arrival = run.plan.times_s[[r.index for r in reqs]]  # exact (the CSV keeps milliseconds)
    answered = np.array([not r.error for r in reqs], dtype=bool)
    latency_s = np.array([r.latency_ms / 1000.0 for r in reqs], dtype=np.float64)
    finish = np.where(answered, arrival + latency_s, np.inf)
    accuracy = np.array([request_accuracy(spec, r.variant) if not r.error else 0.0 for r in reqs])
    # an answer whose variant is unknown still counts as served; its accuracy is the decision's in force then
    unknown = answered & ~np.isfinite(accuracy)
    if unknown.any():
        accuracy[unknown] = _decided_accuracy(spec, run.ticks, arrival[unknown])
    slo_s = np.array([(r.deadline_ms if r.deadline_ms is not None else spec.slo_ms) / 1000.0 for r in reqs])
    return build_frame(duration_s=n, arrival=arrival, finish=finish, accuracy=accuracy, slo_s=slo_s,
                       network_s=0.0, cores_log=run.cores_log or [(0.0, 0.0)], ticks=run.ticks, spec=spec)


def _decided_accuracy(spec: GraphSpec, ticks: list[TickRecord], times: np.ndarray) -> np.ndarray:
    from adapter.sim.metrics import decision_accuracy

    if not ticks:
        return np.full(times.shape, math.nan)
    at = np.clip(np.searchsorted([t.t for t in ticks], times, side="right") - 1, 0, len(ticks) - 1)
    return np.array([decision_accuracy(ticks[i].decision, spec) / 100.0 for i in at])


def latencies_ms(run: LiveRun) -> np.ndarray:
    """End-to-end latency of every answered request, in plan order (for an exact p99)."""
    return np.array([r.latency_ms for r in run.requests if not r.error], dtype=np.float64)
