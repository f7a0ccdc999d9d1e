"""The speech and text families through `VariantRuntime` vs the same model called directly, and switching under load.

    python benchmarks/transformers_runtime.py [--models /work/pipelines-models] [--families s2t,sentiment,...]
                                              [--threads 1] [--batches 1,2,4,8] [--rounds 3] [--block-s 4] [--tiny]

Per family (its first variant, served by the backend its folder records: onnxruntime for the encoder-only
families, from the export cache as `ipa up` serves it when the build has no export; PyTorch for seq2seq), on the inputs
`ipa load` sends it (speech, sentences with a question, French paragraphs, documents):

- direct: the same session class the runtime uses (`TransformersSession.run_sync`, tokeniser and answer
  extraction included) called with the same intra-op threads, no HTTP, in a process of its own started as the
  server is (its own session: with the kernel's autogroup scheduling, a process in the benchmark's session would
  get another share of a loaded machine than the server does): `b` one-row requests per call, as the runtime
  hands a batch of `b` requests over;
- runtime: a replica as the pipeline starts one (`python -m mlserver_ipa.server`) serving the family, batch size
  `b` and a batch window of a tenth of the batch's direct call time (at least 50 ms) set through the control
  endpoint (the runtime forms the batches), called one row per request over two paths: **gRPC** with raw tensor
  contents (the hop the pipeline's router makes, `mlserver_ipa.grpc_hop`; messages made once) by `b` closed-loop
  clients and by `2b` (so a batch's requests are queued while the one before runs, as under load), and
  **REST/JSON** by `b` closed-loop clients;
- interleaved: each round measures direct and the three runtime paths one after another (the order rotating
  from round to round) for `--block-s` seconds each, at batch 1 and at the family's best batch (the
  `--batches` size with the most rows per second direct, measured first), so machine load affects all alike.
  It prints rows per second of each (median over rounds), each runtime path's ratio to direct per round (median
  and min-max), a direct call's and a runtime batch's time, rows per runtime batch, and the load average.

With `--switch RUNS` only the switch is measured, properly: the family's variants in turn, each switched to RUNS
times while `--batch` closed-loop clients keep sending; per switch the time the runtime reports, the failed
requests, and the serving ratio (answers per second while the new variant loads and warms up / in the 8 s
before); per variant the median and spread. `--switch-profile profiles/switch.csv` writes the medians there (the
decision's and the simulator's switch costs, `adapter.profiling.switch_profile`). The load average is printed
with every line. `--runtime-tree DIR` serves with another checkout's runtime (DIR first on the spawned
`mlserver start`'s PYTHONPATH): the before/after comparison of a change to the switch path.

Same intra-op threads everywhere (`--threads`). Families are built with `ipa models build --family F --out
MODELS/F` first (`--tiny` builds tiny ones in a temporary folder instead). The machine is shared: run it more
than once, compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from serving_harness import Server

from adapter.workloads.inputs import payload
from mlserver_ipa.settings import SequenceLimits

KINDS = {"s2t": ("speech", False), "squad2-qa": ("sentences", True), "sentiment": ("sentences", False),
         "lang-id": ("french", False), "opus-mt": ("french", False), "distilbart-xsum": ("documents", False)}


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def decoded(session, bodies: list[bytes]) -> list[dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """The requests as the runtime decodes them (tensors, a QA question from the parameters)."""
    from mlserver.types import InferenceRequest

    from mlserver_ipa.tensors import decode_inputs

    feeds = []
    for raw in bodies:
        body = json.loads(raw)
        req = InferenceRequest.model_validate(body)
        params = {k: v for k, v in (body.get("parameters") or {}).items() if isinstance(v, str)}
        feeds.append(decode_inputs(req.inputs, session.inputs, 64, "output", params)[0])
    return feeds


def direct_block(session, feeds: list[dict[str, np.ndarray]], batch: int, seconds: float,  # type: ignore[no-untyped-def]
                 call_ms: list[float] | None = None) -> float:
    """Rows per second of `session.run_sync` on `batch` one-row requests per call, for about `seconds`; each
    call's time goes to `call_ms`."""
    t0 = time.perf_counter()
    done = calls = 0
    while calls < 2 or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        session.run_sync([feeds[(done + i) % len(feeds)] for i in range(batch)])
        if call_ms is not None:
            call_ms.append((time.perf_counter() - t) * 1000)
        done += batch
        calls += 1
    return done / (time.perf_counter() - t0)


_SESSION = None
_FEEDS: list[dict[str, np.ndarray]] = []


def _worker_init(folder: str, variant: str, threads: int, bodies: list[bytes]) -> None:
    """The direct process: its own session (so its own scheduling group, as `mlserver start` has), one model."""
    global _SESSION, _FEEDS
    os.setsid()
    from mlserver_ipa.transformers_session import TransformersSession

    _SESSION = TransformersSession(variant, Path(folder), threads, SequenceLimits())
    _FEEDS = decoded(_SESSION, bodies)


def _worker_block(batch: int, seconds: float) -> tuple[float, list[float]]:
    call_ms: list[float] = []
    return direct_block(_SESSION, _FEEDS, batch, seconds, call_ms), call_ms


class Direct:
    """The model called directly, in a process of its own started like the server (own session, so the kernel's
    autogroup scheduling gives it the share `mlserver start` gets), with the same threads."""

    def __init__(self, folder: Path, variant: str, threads: int, bodies: list[bytes]) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context("spawn").Pool(
            1, initializer=_worker_init, initargs=(str(folder), variant, threads, bodies))
        self.backend = self.pool.apply(_backend)

    def block(self, batch: int, seconds: float, call_ms: list[float] | None = None) -> float:
        rate, ms = self.pool.apply(_worker_block, (batch, seconds))
        if call_ms is not None:
            call_ms.extend(ms)
        return float(rate)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def _backend() -> str:
    return str(_SESSION.backend)  # type: ignore[attr-defined]


class Batches:
    """The batches the runtime reports in its answers' parameters, each once: (service ms, rows) go to `into`
    (both the REST and the gRPC blocks record them so)."""

    def __init__(self, into: list[tuple[float, int]] | None) -> None:
        self.into = into
        self.seen: set[int] = set()

    def record(self, params: dict) -> None:  # type: ignore[type-arg]
        if self.into is not None and params["batch_id"] not in self.seen:
            self.seen.add(params["batch_id"])
            self.into.append((params["service_ms"], params["batch_size"]))


async def runtime_block(c: httpx.AsyncClient, url: str, model: str, bodies: list[bytes], clients: int,
                        seconds: float, service_ms: list[tuple[float, int]] | None = None) -> tuple[float, int]:
    """(rows per second, failed) of `clients` closed-loop clients for about `seconds`; the batches' service
    times and rows the runtime reports go to `service_ms` (once per batch)."""
    ok = failed = 0
    batches = Batches(service_ms)
    t0 = time.perf_counter()

    async def client(i: int) -> None:
        nonlocal ok, failed
        while time.perf_counter() - t0 < seconds or ok < 2 * clients:
            r = await c.post(f"{url}/v2/models/{model}/infer", content=bodies[i % len(bodies)],
                             headers={"content-type": "application/json"})
            i += 1
            if r.status_code == 200:
                ok += 1
                batches.record(r.json()["parameters"])
            else:
                failed += 1
                if failed > 100:
                    raise RuntimeError(f"{model}: {r.status_code} {r.text}")

    await asyncio.gather(*(client(i) for i in range(clients)))
    return ok / (time.perf_counter() - t0), failed


def grpc_messages(model: str, bodies: list[bytes]) -> list:  # type: ignore[type-arg]
    """The request bodies as V2 gRPC `ModelInferRequest`s with raw tensor contents, made once (what the router's
    hop sends a replica, `mlserver_ipa.grpc_hop`)."""
    from mlserver_ipa.v2_proto import params_to_pb, pb
    from mlserver_ipa.wire_tensors import fill_pb_inputs

    out = []
    for raw in bodies:
        body = json.loads(raw)
        message = pb.ModelInferRequest(model_name=model)
        params_to_pb(message.parameters, body.get("parameters") or {})
        fill_pb_inputs(message, body["inputs"])
        out.append(message)
    return out


async def grpc_block(stub, messages: list, clients: int, seconds: float,  # type: ignore[no-untyped-def,type-arg]
                     service_ms: list[tuple[float, int]] | None = None) -> tuple[float, int]:
    """As `runtime_block`, over the replica's V2 gRPC port with raw contents (the pipeline's hop)."""
    import grpc

    from mlserver_ipa.v2_proto import params_from_pb

    ok = failed = 0
    batches = Batches(service_ms)
    t0 = time.perf_counter()

    async def client(i: int) -> None:
        nonlocal ok, failed
        while time.perf_counter() - t0 < seconds or ok < 2 * clients:
            try:
                response = await stub.ModelInfer(messages[i % len(messages)], timeout=600)
            except grpc.aio.AioRpcError as e:
                failed += 1
                if failed > 100:
                    raise RuntimeError(f"gRPC: {e.code().name} {e.details()}") from e
                continue
            finally:
                i += 1
            ok += 1
            batches.record(params_from_pb(response.parameters))

    await asyncio.gather(*(client(i) for i in range(clients)))
    return ok / (time.perf_counter() - t0), failed


PATHS = ("direct", "grpc", "grpc-2b", "rest")
"""direct; gRPC with `b` closed-loop clients and with `2b` (a queue that always holds the next batch); REST/JSON
with `b` clients."""


async def interleaved(server: Server, model: str, direct: Direct, bodies: list[bytes], batches: list[int],
                      rounds: int, seconds: float) -> tuple[int, dict[int, list[dict[str, float]]], int,
                                                            dict[int, dict[str, tuple[float, float]]]]:
    """(best batch, {batch: per round {path: rows per second}}, failed requests, {batch: {path: (median ms of a
    direct call or of a runtime batch's service time, mean rows per batch)}}: where the time goes). Per round
    the paths (`PATHS`) go in a rotating order."""
    import grpc

    from mlserver_ipa.v2_proto import Stub, channel_options

    auth = {"authorization": f"Bearer {server.token}"}
    control = f"{server.url}/v2/models/{model}/control"
    for b in batches:  # warm-up: every input length once at every batch size
        direct.block(b, 0.0)
    probed = {b: direct.block(b, seconds / 2) for b in batches}
    best = max(batches, key=lambda b: probed[b])
    points = sorted({1, best})
    out: dict[int, list[dict[str, float]]] = {b: [] for b in points}
    calls: dict[int, dict[str, list[tuple[float, int]]]] = {b: {p: [] for p in PATHS} for b in points}
    failed = 0
    messages = grpc_messages(model, bodies)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=channel_options(64 << 20))
    stub = Stub(channel)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        async def configure(b: int) -> None:
            # the window lets a batch fill while its requests are still being decoded (8 speech requests in
            # JSON take ~100 ms of the event loop): a tenth of the batch's call time, at least 50 ms
            window = max(50.0, 100.0 * b / probed[b]) if b > 1 else 0.0
            r = await c.post(control, json={"batch_size": b, "max_batch_time_ms": round(window, 1)}, headers=auth)
            r.raise_for_status()
            await runtime_block(c, server.url, model, bodies, b, 0.0)  # warm-up at this batch size
            await grpc_block(stub, messages, b, 0.0)

        async def measure(path: str, b: int) -> float:
            nonlocal failed
            if path == "direct":
                ms: list[float] = []
                rate = direct.block(b, seconds, ms)
                calls[b][path].extend((m, b) for m in ms)
                return rate
            if path == "rest":
                rate, f = await runtime_block(c, server.url, model, bodies, b, seconds, calls[b][path])
            else:
                clients = 2 * b if path == "grpc-2b" else b
                rate, f = await grpc_block(stub, messages, clients, seconds, calls[b][path])
            failed += f
            return rate

        for r in range(rounds):
            for b in points:
                await configure(b)
                order = PATHS[r % len(PATHS):] + PATHS[:r % len(PATHS)]
                out[b].append({path: await measure(path, b) for path in order})
    await channel.close()
    return best, out, failed, {b: {p: (statistics.median(ms for ms, _ in got), statistics.mean(n for _, n in got))
                                   for p, got in per.items()} for b, per in calls.items()}


async def switching(server: Server, model: str, bodies: list[bytes], batch: int, variants: list[str],
                    runs: int, before_s: float = 8.0) -> list[tuple[str, float, float | None, int]]:
    """(variant, switch seconds, serving ratio or None when the switch was too short to tell, failed) per switch,
    the variants in turn, each `runs` times."""
    auth = {"authorization": f"Bearer {server.token}"}
    control = f"{server.url}/v2/models/{model}/control"
    done: list[float] = []
    failed = 0
    stop = asyncio.Event()

    async def client(c: httpx.AsyncClient, i: int) -> None:
        nonlocal failed
        while not stop.is_set():
            r = await c.post(f"{server.url}/v2/models/{model}/infer", content=bodies[i % len(bodies)],
                             headers={"content-type": "application/json"})
            i += 1
            if r.status_code == 200:
                done.append(time.perf_counter())
            else:
                failed += 1

    out = []
    async with httpx.AsyncClient(timeout=600) as c:
        await c.post(control, json={"batch_size": batch, "max_batch_time_ms": 20}, headers=auth)
        load = [asyncio.create_task(client(c, i)) for i in range(batch)]
        order = variants[1:] + variants[:1]
        for k in range(runs * len(variants)):
            await asyncio.sleep(before_s)
            failed_before, t0 = failed, time.perf_counter()
            state = (await c.post(control, json={"variant": order[k % len(order)]}, headers=auth)).json()
            t1 = time.perf_counter()
            answered = sum(t0 - before_s <= t < t0 for t in done)
            during = sum(t0 <= t < t1 for t in done) / (t1 - t0)
            # a ratio needs a switch that outlasts a few answers; shorter ones cost little capacity anyway
            measurable = answered > 0 and t1 - t0 >= 4 * before_s / answered
            out.append((order[k % len(order)], state["last_switch_ms"] / 1000,
                        during / (answered / before_s) if measurable else None, failed - failed_before))
        stop.set()
        await asyncio.gather(*load)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/pipelines-models"))
    parser.add_argument("--families", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="with --switch: closed-loop clients and batch size")
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes the best batch is chosen from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-s", type=float, default=4.0, help="seconds per measurement block")
    parser.add_argument("--exports", type=Path,
                        help="the export cache for builds without ONNX exports (default: ipa up's, $IPA_EXPORT_CACHE or "
                             "$XDG_CACHE_HOME/ipa/onnx)")
    parser.add_argument("--tiny", action="store_true", help="build tiny configurations in a temporary folder")
    parser.add_argument("--switch", type=int, default=0, metavar="RUNS",
                        help="measure only the switch: every variant switched to RUNS times under load")
    parser.add_argument("--switch-profile", type=Path, help="with --switch: write the medians to this CSV")
    parser.add_argument("--runtime-tree", type=Path, help="with --switch: serve with this checkout's runtime")
    parser.add_argument("--cores", type=float,
                        help="with --switch: the replica's CPU limit, as the local cluster sets it (cgroup quota); "
                             "default none (the switch may then load on more than its threads' cores)")
    args = parser.parse_args()
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES, build_repository

    if args.switch:
        switch_main(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="ipa-bench-tf-"))
    batches = [int(b) for b in args.batches.split(",")]
    print(f"runtime vs direct: {args.threads} thread(s), {args.rounds} interleaved rounds of {args.block_s:g} s per "
          f"path and point, best batch of {batches}; rows per second (median over rounds); load average "
          f"{load_avg()}")
    print(f"{'family':<16} {'variant':<22} {'backend':<11} {'batch':>5} {'direct':>7} {'grpc':>7} {'grpc2b':>7} "
          f"{'rest':>7} {'grpc/direct':>16} {'grpc-2b/direct':>16} {'rest/direct':>16} {'fail':>4} "
          f"{'ms d/g/g2/r':>22} {'rows g/g2/r':>14}  load avg")
    for family in args.families.split(","):
        fam = TRANSFORMERS_FAMILIES[family]
        first = fam.variant_names[0]
        if args.tiny:
            build_repository(family, tmp / "tiny", [first], tiny=True)
            settings_file = tmp / "tiny" / family / "model-settings.json"
        else:
            settings_file = served(args.models, family, first, args.exports)
        kind, question = KINDS[family]
        p = payload(kind, question=question)
        bodies = [p.body({}, i) for i in range(len(p.alternatives))]
        direct = Direct(variant_folder(settings_file, first), first, args.threads, bodies)
        server = serve(settings_file, family, args.threads, tmp)
        try:
            server.wait_ready([family], timeout=900)
            best, points, failed, where = asyncio.run(interleaved(server, family, direct, bodies, batches,
                                                                  args.rounds, args.block_s))
        finally:
            server.stop()
            direct.close()
        for b, runs in points.items():
            med = {path: statistics.median(run[path] for run in runs) for path in PATHS}
            ratio = {path: [run[path] / run["direct"] for run in runs] for path in PATHS[1:]}
            shown = {path: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for path, v in ratio.items()}
            ms = "/".join(f"{where[b][path][0]:.0f}" if where[b][path][0] >= 100 else f"{where[b][path][0]:.1f}"
                          for path in PATHS)
            rows = "/".join(f"{where[b][path][1]:.1f}" for path in PATHS[1:])
            print(f"{family:<16} {first:<22} {direct.backend:<11} {b:>4}{'*' if b == best else ' '} "
                  f"{med['direct']:>7.2f} {med['grpc']:>7.2f} {med['grpc-2b']:>7.2f} {med['rest']:>7.2f} "
                  f"{shown['grpc']:>16} {shown['grpc-2b']:>16} {shown['rest']:>16} {failed:>4} {ms:>22} {rows:>14}"
                  f"  {load_avg()}", flush=True)
    print("* the family's best batch (most rows per second direct); ratios: median (min-max) over rounds of the "
          "runtime's rows per second / direct's in the same round; ms: one direct call, and the runtime's service "
          "time of one batch as it reports it (medians); rows: rows per runtime batch (mean); grpc-2b: 2b clients")
    shutil.rmtree(tmp, ignore_errors=True)


def served(models: Path, family: str, variant: str, exports: Path | None) -> Path:
    """The model-settings.json serving `variant` of the family built in `models/<family>` as `ipa up` serves it
    (`zoo.served_family`: the build read as it is; an encoder variant without its export is served from the
    export cache, `exports` or ipa up's own)."""
    from mlserver_ipa.zoo import ExportCache, served_family

    cache = ExportCache.from_environment() if exports is None else ExportCache(exports, 20 * 10**9)
    t0 = time.perf_counter()
    repo = served_family(family, models / family, [variant], cache)
    if repo.is_file():
        print(f"  ({family}: {variant} from the export cache {cache.root}, {time.perf_counter() - t0:.0f} s; load "
              f"average {load_avg()})", flush=True)
    return repo if repo.is_file() else repo / "model-settings.json"


def variant_folder(settings_file: Path, variant: str) -> Path:
    settings = json.loads(settings_file.read_text())
    uri = next(v["uri"] for v in settings["parameters"]["extra"]["variants"] if v["name"] == variant)
    return (settings_file.parent / uri).resolve()


def serve(settings_file: Path, family: str, threads: int, tmp: Path) -> Server:
    """A replica as the pipeline starts one (`python -m mlserver_ipa.server`: MLServer's REST with our guards, our
    V2 gRPC servicer) serving the family's model-settings.json with `threads` intra-op threads."""
    repo = tmp / f"repo-{family}"
    (repo / family).mkdir(parents=True, exist_ok=True)
    settings = json.loads(settings_file.read_text())
    for v in settings["parameters"]["extra"]["variants"]:
        v["uri"] = str((settings_file.parent / v["uri"]).resolve())
    settings["parameters"]["extra"].update(threads=threads)
    (repo / family / "model-settings.json").write_text(json.dumps(settings))
    return Server(repo, None, tmp / f"{family}.log", command=[sys.executable, "-m", "mlserver_ipa.server"])


def switch_main(args: argparse.Namespace) -> None:
    import os
    import statistics

    from adapter.executors.cgroups import detect_cpu_controller
    from adapter.profiling.switch_profile import SwitchRow, write_switch_profile
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES

    if args.runtime_tree is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(args.runtime_tree.resolve()), os.environ.get("PYTHONPATH", "")])
    tmp = Path(tempfile.mkdtemp(prefix="ipa-bench-switch-"))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    cores = "no CPU limit" if args.cores is None else f"{args.cores:g} core(s) ({detect_cpu_controller().kind})"
    print(f"runtime: {args.runtime_tree or 'this tree'}; switch under load: {args.threads} thread(s), {cores}, "
          f"{args.batch} closed-loop clients at batch {args.batch}, {args.switch} runs per variant; load average {load}")
    print(f"{'family':<16} {'switch to':<24} {'MB':>6} {'switch s (runs)':<28} {'median':>7} {'serving':>7} "
          f"{'failed':>6}  load avg")
    rows = []
    for family in args.families.split(","):
        fam = TRANSFORMERS_FAMILIES[family]
        if len(fam.variant_names) < 2:
            print(f"{family:<16} one variant ({', '.join(fam.variant_names)}): nothing to switch to")
            continue
        folder = args.models / family / family
        kind, question = KINDS[family]
        p = payload(kind, question=question)
        bodies = [p.body({}, i) for i in range(len(p.alternatives))]
        server = serve(folder / "model-settings.json", family, args.threads, tmp)
        limit = None if args.cores is None else detect_cpu_controller().create(f"switch-{os.getpid()}", args.cores)
        try:
            if limit is not None:
                limit.attach(server.process.pid)
            server.wait_ready([family], timeout=600)
            got = asyncio.run(switching(server, family, bodies, args.batch, list(fam.variant_names), args.switch))
        finally:
            server.stop()
            if limit is not None:
                limit.remove()
        for v in fam.variant_names:
            mine = [g for g in got if g[0] == v]
            times, ratios = [g[1] for g in mine], [g[2] for g in mine if g[2] is not None]
            size = sum(f.stat().st_size for f in (folder / v).glob("*.safetensors"))
            med = statistics.median(times)
            ratio = statistics.median(ratios) if ratios else None
            load = " ".join(f"{x:.1f}" for x in os.getloadavg())
            shown = f"{ratio:>7.2f}" if ratio is not None else f"{'short':>7}"
            print(f"{family:<16} {v:<24} {size / 1e6:>6.0f} {' '.join(f'{t:.1f}' for t in times):<28} {med:>7.1f} "
                  f"{shown} {sum(g[3] for g in mine):>6}  {load}", flush=True)
            note = "" if ratio is not None else "; serving_ratio not measurable (switch shorter than 4 answers): 0.5 assumed"
            rows.append(SwitchRow(variant=v, family=family, bytes=size, switch_s=round(med, 2),
                                  serving_ratio=round(min(max(ratio if ratio is not None else 0.5, 0.01), 1.5), 2),
                                  runs=len(times),
                                  machine=f"measured: {args.threads} thread(s), {cores}, batch {args.batch}, "
                                          f"load {load}{note}"))
    if args.switch_profile is not None:
        write_switch_profile(args.switch_profile, rows)
        print(f"wrote {args.switch_profile}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
