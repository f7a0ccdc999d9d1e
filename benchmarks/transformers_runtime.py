"""The speech and text families through `VariantRuntime` vs the same model called directly, and switching under load.

    python benchmarks/transformers_runtime.py [--models /work/pipelines-models] [--families s2t,sentiment,...]
                                              [--threads 1] [--batches 1,2,4,8] [--rounds 3] [--block-s 4] [--tiny]

Per family (its first variant, served by the backend its folder records: onnxruntime for the encoder-only
families, exported first into a linked copy when the build has no export; PyTorch for seq2seq), on the inputs
`ipa load` sends it (speech, sentences with a question, French paragraphs, documents):

- direct: the same session class the runtime uses (`TransformersSession.run_sync`, tokeniser and answer
  extraction included) called with the same intra-op threads, no HTTP, in a process of its own started as the
  server is (its own session: with the kernel's autogroup scheduling, a process in the benchmark's session would
  get another share of a loaded machine than the server does): `b` one-row requests per call, as the runtime
  hands a batch of `b` requests over;
- runtime: a real `mlserver start` serving the family, `b` closed-loop V2 clients (REST/JSON, one row per
  request), batch size `b` and a batch window of a tenth of the batch's direct call time (at least 50 ms) set
  through the control endpoint (the runtime forms the batches);
- interleaved: each round measures direct then runtime (alternating which goes first) for `--block-s`
  seconds each, at batch 1 and at the family's best batch (the `--batches` size with the most rows per second
  direct, measured first), so machine load affects both alike. It prints rows per second of both (median over
  rounds), the ratio runtime/direct per round (median and min-max), and the load average before and after.

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


async def runtime_block(c: httpx.AsyncClient, url: str, model: str, bodies: list[bytes], clients: int,
                        seconds: float, service_ms: list[tuple[float, int]] | None = None) -> tuple[float, int]:
    """(rows per second, failed) of `clients` closed-loop clients for about `seconds`; the batches' service
    times and rows the runtime reports go to `service_ms` (once per batch)."""
    ok = failed = 0
    batches: set[int] = set()
    t0 = time.perf_counter()

    async def client(i: int) -> None:
        nonlocal ok, failed
        while time.perf_counter() - t0 < seconds or ok < 2 * clients:
            r = await c.post(f"{url}/v2/models/{model}/infer", content=bodies[i % len(bodies)],
                             headers={"content-type": "application/json"})
            i += 1
            if r.status_code == 200:
                ok += 1
                params = r.json()["parameters"]
                if service_ms is not None and params["batch_id"] not in batches:
                    batches.add(params["batch_id"])
                    service_ms.append((params["service_ms"], params["batch_size"]))
            else:
                failed += 1
                if failed > 100:
                    raise RuntimeError(f"{model}: {r.status_code} {r.text}")

    await asyncio.gather(*(client(i) for i in range(clients)))
    return ok / (time.perf_counter() - t0), failed


async def interleaved(server: Server, model: str, direct: Direct, bodies: list[bytes], batches: list[int],
                      rounds: int, seconds: float) -> tuple[int, dict[int, list[tuple[float, float]]], int,
                                                            dict[int, tuple[float, float, float]]]:
    """(best batch, {batch: [(direct, runtime) rows per second per round]}, failed requests, {batch: (median ms
    of a direct call, median service ms of a runtime batch, mean rows per runtime batch)}: where the time goes)."""
    auth = {"authorization": f"Bearer {server.token}"}
    control = f"{server.url}/v2/models/{model}/control"
    for b in batches:  # warm-up: every input length once at every batch size
        direct.block(b, 0.0)
    probed = {b: direct.block(b, seconds / 2) for b in batches}
    best = max(batches, key=lambda b: probed[b])
    points = sorted({1, best})
    out: dict[int, list[tuple[float, float]]] = {b: [] for b in points}
    calls: dict[int, tuple[list[float], list[tuple[float, int]]]] = {b: ([], []) for b in points}
    failed = 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as c:
        async def configure(b: int) -> None:
            # the window lets a batch fill while its requests are still being decoded (8 speech requests in
            # JSON take ~100 ms of the event loop): a tenth of the batch's call time, at least 50 ms
            window = max(50.0, 100.0 * b / probed[b]) if b > 1 else 0.0
            r = await c.post(control, json={"batch_size": b, "max_batch_time_ms": round(window, 1)}, headers=auth)
            r.raise_for_status()
            await runtime_block(c, server.url, model, bodies, b, 0.0)  # warm-up at this batch size

        for r in range(rounds):
            for b in points:
                await configure(b)
                runtime_first = r % 2 == 1
                if runtime_first:
                    rt, f = await runtime_block(c, server.url, model, bodies, b, seconds, calls[b][1])
                d = direct.block(b, seconds, calls[b][0])
                if not runtime_first:
                    rt, f = await runtime_block(c, server.url, model, bodies, b, seconds, calls[b][1])
                failed += f
                out[b].append((d, rt))
    return best, out, failed, {b: (statistics.median(d), statistics.median(ms for ms, _ in s),
                                   statistics.mean(rows for _, rows in s)) for b, (d, s) in calls.items()}


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
                        help="keep the ONNX exports of read-only builds here, for the next run (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="build tiny configurations in a temporary folder")
    parser.add_argument("--switch", type=int, default=0, metavar="RUNS",
                        help="measure only the switch: every variant switched to RUNS times under load")
    parser.add_argument("--switch-profile", type=Path, help="with --switch: write the medians to this CSV")
    parser.add_argument("--runtime-tree", type=Path, help="with --switch: serve with this checkout's runtime")
    args = parser.parse_args()
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES, build_repository

    if args.switch:
        switch_main(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="ipa-bench-tf-"))
    batches = [int(b) for b in args.batches.split(",")]
    print(f"runtime vs direct: {args.threads} thread(s), {args.rounds} interleaved rounds of {args.block_s:g} s per "
          f"point, best batch of {batches}; rows per second (median over rounds); load average {load_avg()}")
    print(f"{'family':<16} {'variant':<24} {'backend':<11} {'batch':>5} {'direct':>8} {'runtime':>8} "
          f"{'ratio':>5} {'min-max':>10} {'failed':>6} {'call ms':>8} {'serve ms':>8} {'rows':>5}  load avg")
    for family in args.families.split(","):
        fam = TRANSFORMERS_FAMILIES[family]
        first = fam.variant_names[0]
        if args.tiny:
            build_repository(family, tmp / "tiny", [first], tiny=True)
            folder = tmp / "tiny" / family
        else:
            folder = with_backend(args.models / family / family, fam, first, (args.exports or tmp / "linked") / family)
        kind, question = KINDS[family]
        p = payload(kind, question=question)
        bodies = [p.body({}, i) for i in range(len(p.alternatives))]
        direct = Direct(folder / first, first, args.threads, bodies)
        server = serve(folder, family, args.threads, tmp)
        try:
            server.wait_ready([family], timeout=900)
            best, points, failed, call_ms = asyncio.run(interleaved(server, family, direct, bodies, batches,
                                                                    args.rounds, args.block_s))
        finally:
            server.stop()
            direct.close()
        for b, runs in points.items():
            ratios = [rt / d for d, rt in runs]
            print(f"{family:<16} {first:<24} {direct.backend:<11} {b:>4}{'*' if b == best else ' '} "
                  f"{statistics.median(d for d, _ in runs):>8.2f} {statistics.median(rt for _, rt in runs):>8.2f} "
                  f"{statistics.median(ratios):>5.2f} {min(ratios):>4.2f}-{max(ratios):<5.2f} {failed:>6} "
                  f"{call_ms[b][0]:>8.1f} {call_ms[b][1]:>8.1f} {call_ms[b][2]:>5.1f}  {load_avg()}", flush=True)
    print("* the family's best batch (most rows per second direct); call ms: one direct call (median); serve ms: "
          "the runtime's service time of one batch as it reports it (median); rows: rows per runtime batch (mean)")
    shutil.rmtree(tmp, ignore_errors=True)


def with_backend(built: Path, fam, variant: str, into: Path) -> Path:  # type: ignore[no-untyped-def]
    """`built` itself when `variant` there already has its family's backend; otherwise a copy of the model
    folder whose `variant` links to the built files and gains the ONNX export (builds may be read-only)."""
    from mlserver_ipa.onnx_encoder import ONNX_FILE
    from mlserver_ipa.zoo.onnx_export import export_encoder

    if fam.backend != "onnxruntime" or (built / variant / ONNX_FILE).is_file():
        return built
    if (into / variant / ONNX_FILE).is_file():  # exported by an earlier run (--exports)
        return into
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    shutil.copy(built / "model-settings.json", into / "model-settings.json")
    settings = json.loads((into / "model-settings.json").read_text())
    for v in settings["parameters"]["extra"]["variants"]:
        v["uri"] = str((built / v["uri"]).resolve()) if v["name"] != variant else v["uri"]
    (into / "model-settings.json").write_text(json.dumps(settings))
    (into / variant).mkdir()
    for f in (built / variant).iterdir():
        if f.is_file():
            (into / variant / f.name).symlink_to(f.resolve())
    t0 = time.perf_counter()
    export_encoder(into / variant)
    print(f"  ({variant}: exported to ONNX in {time.perf_counter() - t0:.0f} s; load average {load_avg()})", flush=True)
    return into


def serve(folder: Path, family: str, threads: int, tmp: Path) -> Server:
    """`mlserver start` serving the family's built folder with `threads` intra-op threads."""
    repo = tmp / f"repo-{family}"
    (repo / family).mkdir(parents=True, exist_ok=True)
    settings = json.loads((folder / "model-settings.json").read_text())
    for v in settings["parameters"]["extra"]["variants"]:
        v["uri"] = str((folder / v["uri"]).resolve())
    settings["parameters"]["extra"].update(threads=threads)
    (repo / family / "model-settings.json").write_text(json.dumps(settings))
    return Server(repo, None, tmp / f"{family}.log")


def switch_main(args: argparse.Namespace) -> None:
    import os
    import statistics

    from adapter.profiling.switch_profile import SwitchRow, write_switch_profile
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES

    if args.runtime_tree is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(args.runtime_tree.resolve()), os.environ.get("PYTHONPATH", "")])
    tmp = Path(tempfile.mkdtemp(prefix="ipa-bench-switch-"))
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"runtime: {args.runtime_tree or 'this tree'}; switch under load: {args.threads} thread(s), {args.batch} closed-loop clients at batch {args.batch}, "
          f"{args.switch} runs per variant; load average {load}")
    print(f"{'family':<16} {'switch to':<24} {'MB':>6} {'switch s (runs)':<28} {'median':>7} {'serving':>7} "
          f"{'failed':>6}  load avg")
    rows = []
    for family in args.families.split(","):
        fam = TRANSFORMERS_FAMILIES[family]
        folder = args.models / family / family
        kind, question = KINDS[family]
        p = payload(kind, question=question)
        bodies = [p.body({}, i) for i in range(len(p.alternatives))]
        server = serve(folder, family, args.threads, tmp)
        try:
            server.wait_ready([family], timeout=600)
            got = asyncio.run(switching(server, family, bodies, args.batch, list(fam.variant_names), args.switch))
        finally:
            server.stop()
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
                                  machine=f"measured: {args.threads} thread(s), batch {args.batch}, load {load}{note}"))
    if args.switch_profile is not None:
        write_switch_profile(args.switch_profile, rows)
        print(f"wrote {args.switch_profile}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
