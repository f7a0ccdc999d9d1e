"""The profiler: measures each (variant, batch, cores) point of a stage on one real replica and writes the profile.

One `mlserver start` with the variant runtime runs in its own CPU limit (`adapter.executors.cgroups`: a cgroup v2
`cpu.max` or v1 `cpu.cfs_quota_us` quota, so fractional cores are exact; where neither is writable, threads and
CPU affinity, whole cores only). It is the same `ReplicaProcess` the local executor runs, so a profile measures
replicas exactly as they are served. For every point the replica is switched in place through the runtime's
control endpoint (variant, batch size, threads = ⌈cores⌉, a generous batch window) and its quota changed; no
restart. Then, per point:

1. Warm-up: closed-loop load for `warmup_s` (the new session's first batches, caches), not recorded.
2. Measurement: a closed loop of `load_factor × batch` concurrent clients (twice the batch size: while one batch
   is served the next one is already queued, so the replica never idles and every batch is full) for
   `duration_s`, extended until at least `min_batches` batches completed (at most `max_extend ×` longer).
   - `throughput_rps` = requests completed in the window / window length: the saturation throughput.
   - latency = each request's client-side time **minus the time it waited in the runtime's queue**
     (`queue_ms`, which the runtime returns in the response parameters). What remains is the service time of
     the batch it rode in plus its own codec and transport overhead, on the hop the router uses
     (`protocol`: V2 gRPC with raw tensor contents by default, as the router sends it; `rest` for JSON): "the time of one batch" as the optimizer and
     the simulator use it. They add queueing (and the wait for a batch to fill) from their own models; the
     oversubscribed closed loop's queueing (about one extra batch time per request) is an artefact of the way
     we saturate the replica, not a property of the point, so it is left out. `p50_ms`, `p99_ms`, `mean_ms`
     are over the requests that started and ended inside the window; `samples` is how many.
   A server that returns no `queue_ms` gets the full client-side latency, with a warning.
3. The point is appended to the CSV at once (atomic rewrite), so a run can stop at any time and resume: points
   already in the file are skipped unless `force`.

The load generator runs in this process, outside the replica's CPU limit, on the same machine: at the largest
core counts it competes with the replica for the machine's cores, which the `machine` column notes (`2c`).
It sends one pre-encoded request and reads only `queue_ms`/`batch_id` from the answers, to cost little:
random tensor data for an ONNX stage, and for a speech or text stage what it receives when the pipeline serves
the demo's requests (`stage_requests`: the spoken sentence, its transcript, the document, its summary, ...), so
every point is measured at the input length the stage sees.
On a shared machine, neighbours would take part of the replica's quota and starve the load generator, and the
profile would measure them: while profiling, the replica's group gets a high CPU weight (the quota still caps
it) and, where permitted, the load generator a higher priority (nice -10).
`machine` is `<cpu>-<n>c:<how cores were enforced>`, e.g. `amd-epyc-2c:cgroup-v1`: no host name.

What the measurements show (demo families, JSON over REST): below one core, latency scales like 1/cores plus
CFS throttling in the tail; above one core it barely improves, because every request's JSON is decoded and
encoded on MLServer's single event-loop thread, which more onnxruntime threads do not speed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from tqdm import tqdm

from adapter.errors import SpecError, UsageError
from adapter.executors.cgroups import detect_cpu_controller
from adapter.executors.local.replica import HOST as REPLICA_HOST
from adapter.executors.local.replica import ReplicaConfig, ReplicaProcess, stage_template
from adapter.profiling.closed_loop import LoadResult, drive_load, grpc_sender, percentile, rest_sender
from adapter.profiling.profile import Profile, ProfilePoint
from adapter.profiling.stage_requests import stage_body
from adapter.spec import GraphSpec, StageSpec
from mlserver_ipa.grpc_hop import GrpcHop


class ProfilerError(UsageError):
    """A point could not be measured (the replica failed, requests failed); the message says which and why."""


@dataclass(frozen=True)
class ProfilerSettings:
    """How long and how hard each point is measured."""

    duration_s: float = 5.0
    """Length of the measuring window per point, in seconds (extended to reach `min_batches`)."""
    warmup_s: float = 1.0
    """Closed-loop load before the window, not recorded, after every switch."""
    min_batches: int = 4
    """Fewest batches a window must hold; slow points measure longer (at most `max_extend` x duration)."""
    max_extend: float = 4.0
    load_factor: int = 2
    """Closed-loop concurrency in batches: 2 keeps one batch queued while one is served."""
    max_batch_time_ms: float = 1000.0
    """The runtime's batch window while profiling: generous, so batches are always full."""
    start_timeout_s: float = 180.0
    request_timeout_s: float = 120.0
    protocol: Literal["grpc", "rest"] = "grpc"
    """How requests reach the replica: V2 gRPC with raw tensor contents, as the pipeline's router sends them
    (its default hop), or V2 REST/JSON (what a stage whose route says `protocol: rest` gets)."""


@dataclass(frozen=True)
class GridPoint:
    variant: str
    batch: int
    cores: float

    def __str__(self) -> str:
        return f"{self.variant} b={self.batch} c={self.cores:g}"


def plan(
    profile: Profile, variants: Sequence[str], batches: Sequence[int], cores: Sequence[float], force: bool = False
) -> list[GridPoint]:
    """The points still to measure, ordered to keep switches cheap: variant, then cores, then batch."""
    out = []
    for v in variants:
        for c in cores:
            for b in batches:
                if force or not profile.has(v, b, c):
                    out.append(GridPoint(v, b, c))
    return out


def machine_label(limit_kind: str) -> str:
    """`<cpu model>-<n>c:<limit kind>`, host-independent: what a reader needs to compare profiles."""
    model = "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                words = re.sub(r"\(.*?\)|@.*|processor|cpu|\d+-core", " ", line.split(":", 1)[1], flags=re.I)
                model = "-".join(words.lower().split()[:2]) or "cpu"
                break
    n = len(os.sched_getaffinity(0))
    return f"{model}-{n}c:{limit_kind}"


def summarise(stage: str, point: GridPoint, result: LoadResult, machine: str) -> ProfilePoint:
    """The profile row of one measured window."""
    lat = sorted(result.latencies_ms)
    if not lat or result.completed == 0:
        raise ProfilerError(f"{point}: no request completed in {result.window_s:.1f} s")
    return ProfilePoint(
        stage=stage,
        variant=point.variant,
        batch=point.batch,
        cores=point.cores,
        p50_ms=percentile(lat, 50),
        p99_ms=percentile(lat, 99),
        mean_ms=statistics.fmean(lat),
        throughput_rps=result.throughput_rps,
        samples=len(lat),
        machine=machine,
    )


def describe_grid(points: Iterable[GridPoint]) -> str:
    pts = list(points)
    return (
        f"{len(pts)} points: variants {', '.join(dict.fromkeys(p.variant for p in pts))}; "
        f"batch {', '.join(str(b) for b in sorted({p.batch for p in pts}))}; "
        f"cores {', '.join(f'{c:g}' for c in sorted({p.cores for p in pts}))}"
    )


# -- the run -----------------------------------------------------------------------------------------------

LIMIT_NAMES = {"cgroup1": "cgroup-v1", "cgroup2": "cgroup-v2", "affinity": "affinity"}


def prepare_models(spec: GraphSpec, stage: StageSpec, models_dir: Path) -> dict[str, Any]:
    """The stage's model-settings template (variant URIs absolute): the user's ONNX files (`model:`), or the demo
    family in `models_dir/<family>`, built there with `mlserver_ipa.zoo` when it is not there."""
    i = spec.stages.index(stage)
    if stage.family is None or all(v.model for v in stage.variants):
        for j, v in enumerate(stage.variants):
            if not v.model:
                raise SpecError(str(spec.source or "<spec>"), f"stages[{i}].variants[{j}].model",
                                "no ONNX file, and the stage has no demo `family`: set `model:` to profile it")
        return stage_template(spec, stage, None)
    from mlserver_ipa import zoo  # builds ONNX graphs: imported only when a family is needed

    if stage.family not in zoo.FAMILIES:
        raise SpecError(str(spec.source or "<spec>"), f"stages[{i}].family",
                        f"unknown demo family {stage.family!r}; known: {', '.join(sorted(zoo.FAMILIES))}")

    # A family built in `models_dir` is used as it is (never written; an encoder variant without its ONNX export
    # is served from the export cache); one not there is built there (`zoo.served_family`).
    try:
        repo = zoo.served_family(stage.family, models_dir / stage.family, None, zoo.ExportCache.from_environment(),
                                 progress=lambda line: print(line.strip(), file=sys.stderr))
    except (zoo.BuildArgumentError, ValueError) as e:
        raise SpecError(str(spec.source or "<spec>"), f"stages[{i}].family", str(e)) from None
    return stage_template(spec, stage, repo)


async def profile_graph(
    spec: GraphSpec,
    stages: Sequence[str] | None = None,
    variants: Sequence[str] | None = None,
    batches: Sequence[int] | None = None,
    cores: Sequence[float] | None = None,
    settings: ProfilerSettings = ProfilerSettings(),
    force: bool = False,
    models_dir: Path = Path("build/models"),
    out: Path | None = None,
    progress: bool = True,
) -> list[Path]:
    """Profile the named stages (default all) of a graph; returns the profile files written."""
    try:
        targets = [spec.stage(s) for s in stages] if stages else list(spec.stages)
    except KeyError as e:
        raise UsageError(f"no stage {e.args[0]!r} in {spec.source}; stages: "
                         f"{', '.join(s.name for s in spec.stages)}") from None
    if out is not None and len(targets) > 1:
        raise UsageError("--out needs exactly one --stage")
    written = []
    for stage in targets:
        path = out if out is not None else spec.profile_path(stage)
        await profile_stage(spec, stage, path, variants, batches, cores, settings, force, models_dir, progress)
        written.append(path)
    return written


async def profile_stage(
    spec: GraphSpec,
    stage: StageSpec,
    path: Path,
    variants: Sequence[str] | None,
    batches: Sequence[int] | None,
    cores: Sequence[float] | None,
    settings: ProfilerSettings,
    force: bool,
    models_dir: Path,
    progress: bool,
) -> Profile:
    """Measure the stage's missing points into `path` (see the module doc); returns the profile."""
    names = list(variants) if variants else [v.name for v in stage.variants]
    unknown = [v for v in names if v not in {x.name for x in stage.variants}]
    if unknown:
        raise UsageError(f"stage {stage.name} has no variant {', '.join(unknown)}")
    if batches and min(batches) < 1 or cores and min(cores) <= 0:
        raise UsageError("--batch must be >= 1 and --cores > 0")
    profile = Profile.load(path) if path.exists() else Profile()
    todo = plan(profile, names, batches or stage.batch_sizes, cores or stage.cores, force)
    if not todo:
        print(f"{path}: every point is measured already (--force measures again)", file=sys.stderr)
        return profile
    template = prepare_models(spec, stage, models_dir)
    files = {v["name"]: Path(v["uri"]) for v in template["parameters"]["extra"]["variants"]}
    bodies: dict[str, bytes] = {}
    controller = detect_cpu_controller()
    controller.remove_stale()
    machine = machine_label(LIMIT_NAMES.get(controller.kind, controller.kind))
    per_point = settings.warmup_s + settings.duration_s + 1.0
    print(f"{stage.name}: {describe_grid(todo)}; about {len(todo) * per_point / 60:.0f} min "
          f"({machine}) -> {path}", file=sys.stderr)
    first = todo[0]
    folder = Path(tempfile.mkdtemp(prefix="ipa-profile-"))
    replica = ReplicaProcess(
        id=f"profile-{stage.name}", model=stage.name, folder=folder, template=template,
        config=ReplicaConfig(first.variant, first.batch, first.cores, settings.max_batch_time_ms),
        controller=controller,
    )
    bar = tqdm(total=len(todo), unit="pt", desc=stage.name, disable=not progress, dynamic_ncols=True)
    started = time.monotonic()
    warned = False
    done = 0
    niceness = _favour_self()
    hop: GrpcHop | None = None
    try:
        await replica.start()
        _favour(replica)
        await replica.wait_ready(settings.start_timeout_s)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        hop = GrpcHop()
        async with httpx.AsyncClient(base_url=replica.url, timeout=settings.request_timeout_s,
                                     limits=limits) as client:
            for n, point in enumerate(todo, 1):
                bar.set_postfix_str(str(point))
                await replica.reconfigure(
                    ReplicaConfig(point.variant, point.batch, point.cores, settings.max_batch_time_ms)
                )
                if point.variant not in bodies:
                    bodies[point.variant] = stage_body(spec, stage, files[point.variant])
                body = bodies[point.variant]
                send = (grpc_sender(hop, f"{REPLICA_HOST}:{replica.grpc_port}", stage.name, body,
                                    settings.request_timeout_s) if settings.protocol == "grpc"
                        else rest_sender(client, f"/v2/models/{stage.name}/infer", body))
                result = await drive_load(
                    send, settings.load_factor * point.batch, point.batch, warmup_s=settings.warmup_s,
                    duration_s=settings.duration_s, min_batches=settings.min_batches,
                    max_extend=settings.max_extend,
                )
                if result.errors:
                    raise ProfilerError(f"{point}: {len(result.errors)} requests failed, first: {result.errors[0]}"
                                        f" (server log: {replica.log_tail(3)})")
                if not result.queue_reported and not warned:
                    warned = True
                    print("warning: the server reports no queue_ms: latencies include the closed loop's "
                          "queueing", file=sys.stderr)
                row = summarise(_stage_label(stage), point, result, machine)
                profile.add(row, replace=True)
                profile.save(path)
                bar.update()
                done = n
                if not progress:
                    left = (time.monotonic() - started) / n * (len(todo) - n)
                    print(f"[{n}/{len(todo)}] {point}: p50 {row.p50_ms:.1f} p99 {row.p99_ms:.1f} mean "
                          f"{row.mean_ms:.1f} ms, {row.throughput_rps:.1f} rps, {row.samples} samples; "
                          f"about {left / 60:.1f} min left", file=sys.stderr, flush=True)
    except asyncio.CancelledError:
        print(f"\n{path}: stopped with {done} of {len(todo)} points measured; run the same command again to "
              "measure the rest", file=sys.stderr)
        raise
    finally:
        bar.close()
        if hop is not None:
            await hop.aclose()
        await replica.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if niceness is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
    print(f"{path}: {len(todo)} points in {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    return profile


SHARES_V1 = 65536  # 64x the default 1024
WEIGHT_V2 = 6400  # 64x the default 100


def _favour(replica: ReplicaProcess) -> None:
    """Give the replica's group a high CPU weight while it is profiled.

    The quota caps what the replica may use; the weight decides who gets the CPU when the machine is busy. On
    a shared machine neighbours would otherwise take part of the quota and the profile would measure them.
    """
    limit = replica.limit
    if limit is None or limit.path is None:
        return
    name, value = ("cpu.weight", WEIGHT_V2) if limit.kind == "cgroup2" else ("cpu.shares", SHARES_V1)
    with contextlib.suppress(OSError):
        (limit.path / name).write_text(str(value))


LOADGEN_NICE = -10


def _favour_self() -> int | None:
    """Raise this process's (the load generator's) CPU priority while it measures; returns the old niceness.

    A starved load generator leaves the replica idle and adds its own delays to every latency. Only a
    privileged user may do this; otherwise the profile is measured as it is (None).
    """
    try:
        old = os.getpriority(os.PRIO_PROCESS, 0)
        if old > LOADGEN_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, LOADGEN_NICE)
        return old
    except OSError:
        return None


def _stage_label(stage: StageSpec) -> str:
    """The `stage` column: the demo family (the profile serves any stage running it), else the stage name."""
    return stage.family or stage.name
