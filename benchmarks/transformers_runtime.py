"""The speech and text families through `VariantRuntime` vs the same model called directly, and switching under load.

    python benchmarks/transformers_runtime.py [--models build/models] [--families s2t,sentiment,...]
                                              [--threads 1] [--batch 4] [--requests 12] [--tiny]

Per family (its first variant, the inputs `ipa load` sends for it: speech, sentences with a question, French
paragraphs, documents):

1. direct: `TransformersSession.run_sync` in this process, rows handed in whole, no HTTP: throughput at batch 1
   (one row per call) and at `--batch` rows per call;
2. runtime: `mlserver start` serving the family, a closed loop of 1 client at batch size 1, then `--batch`
   clients at batch size `--batch` (the runtime forms the batches); the ratio runtime/direct per point;
3. switch: while `--batch` clients keep sending, the control endpoint switches to the family's second variant;
   failed requests during the run and the switch time the runtime reports (`last_switch_ms`).

With `--switch RUNS` only the switch is measured, properly: the family's variants in turn, each switched to RUNS
times while `--batch` closed-loop clients keep sending; per switch the time the runtime reports, the failed
requests, and the serving ratio (answers per second while the new variant loads and warms up / in the 8 s
before); per variant the median and spread. `--switch-profile profiles/switch.csv` writes the medians there (the
decision's and the simulator's switch costs, `adapter.profiling.switch_profile`). The load average is printed
with every line. `--runtime-tree DIR` serves with another checkout's runtime (DIR first on the spawned
`mlserver start`'s PYTHONPATH): the before/after comparison of a change to the switch path.

Same intra-op threads everywhere (`--threads`); the direct measurement runs before the server starts, so the two
never share the CPU. Families are built with `ipa models build --family F --out MODELS/F` first (`--tiny`
builds tiny ones in a temporary folder instead). The machine is shared: run it more than once, compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
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


def direct(folder: Path, variant: str, threads: int, bodies: list[dict], batch: int, requests: int) -> dict[int, float]:
    """Rows per second of the session called in this process, at batch 1 and `batch`."""
    from mlserver.types import InferenceRequest

    from mlserver_ipa.tensors import decode_inputs
    from mlserver_ipa.transformers_session import TransformersSession

    session = TransformersSession(variant, folder, threads, SequenceLimits())
    feeds = []
    for body in bodies:
        req = InferenceRequest.model_validate(body)
        params = {k: v for k, v in (body.get("parameters") or {}).items() if isinstance(v, str)}
        feeds.append(decode_inputs(req.inputs, session.inputs, 64, "output", params)[0])
    out = {}
    for b in (1, batch):
        for i in range(len(feeds)):  # warm-up: every input length once, as the server's first requests are
            session.run_sync([feeds[(i + j) % len(feeds)] for j in range(b)])
        t0 = time.perf_counter()
        done = 0
        while done < requests:
            session.run_sync([feeds[(done + i) % len(feeds)] for i in range(b)])
            done += b
        out[b] = done / (time.perf_counter() - t0)
    return out


async def closed_loop(url: str, model: str, bodies: list[bytes], clients: int, requests: int,
                      stop: asyncio.Event | None = None) -> tuple[float, int, int]:
    """(rows per second, answered, failed) of `clients` closed-loop clients sending `requests` in all."""
    sent = 0
    ok = failed = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent, ok, failed
        while sent < requests and not (stop is not None and stop.is_set()):
            i = sent
            sent += 1
            r = await c.post(f"{url}/v2/models/{model}/infer", content=bodies[i % len(bodies)],
                             headers={"content-type": "application/json"})
            if r.status_code == 200:
                ok += 1
            else:
                failed += 1

    async with httpx.AsyncClient(timeout=120) as c:
        await c.post(f"{url}/v2/models/{model}/infer", content=bodies[0], headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return ok / (time.perf_counter() - t0), ok, failed


async def through_runtime(server: Server, model: str, bodies: list[bytes], batch: int, requests: int,
                          second: str | None) -> tuple[dict[int, float], tuple[int, int, float | None] | None]:
    auth = {"authorization": f"Bearer {server.token}"}
    control = f"{server.url}/v2/models/{model}/control"
    out = {}
    for b in (1, batch):
        httpx.post(control, json={"batch_size": b, "max_batch_time_ms": 20 if b > 1 else 0}, headers=auth,
                   timeout=600).raise_for_status()
        out[b] = (await closed_loop(server.url, model, bodies, b, requests))[0]
    if second is None:
        return out, None
    load = asyncio.create_task(closed_loop(server.url, model, bodies, batch, 10 ** 6, stop := asyncio.Event()))
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(timeout=600) as c:
        state = (await c.post(control, json={"variant": second}, headers=auth)).json()
    await asyncio.sleep(1.0)
    stop.set()
    _, ok, failed = await load
    return out, (ok, failed, state.get("last_switch_ms"))


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
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--families", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12)
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
    print(f"{args.threads} thread(s), batch {args.batch}, {args.requests} requests per point; rows per second")
    print(f"{'family':<16} {'variant':<24} {'direct b1':>9} {'runtime b1':>10} {'ratio':>5} "
          f"{'direct b' + str(args.batch):>9} {'runtime b' + str(args.batch):>10} {'ratio':>5} "
          f"{'switch to':<24} {'ms':>7} {'ok':>4} {'failed':>6}")
    for family in args.families.split(","):
        fam = TRANSFORMERS_FAMILIES[family]
        models = tmp / "tiny" if args.tiny else args.models / family
        if args.tiny:
            build_repository(family, models, fam.variant_names[:2], tiny=True)
        folder = models / family
        first, second = fam.variant_names[0], (fam.variant_names[1] if len(fam.variant_names) > 1 else None)
        kind, question = KINDS[family]
        p = payload(kind, question=question)
        bodies = [p.body({}, i) for i in range(len(p.alternatives))]
        d = direct(folder / first, first, args.threads, [json.loads(b) for b in bodies], args.batch, args.requests)
        repo = tmp / f"repo-{family}"
        (repo / family).mkdir(parents=True)
        settings = json.loads((folder / "model-settings.json").read_text())
        for v in settings["parameters"]["extra"]["variants"]:
            v["uri"] = str((folder / v["uri"]).resolve())
        settings["parameters"]["extra"].update(threads=args.threads)
        (repo / family / "model-settings.json").write_text(json.dumps(settings))
        server = Server(repo, None, tmp / f"{family}.log")
        try:
            server.wait_ready([family], timeout=600)
            r, switch = asyncio.run(through_runtime(server, family, bodies, args.batch, args.requests, second))
        finally:
            server.stop()
        sw = (f"{second:<24} {switch[2] or 0:>7.0f} {switch[0]:>4} {switch[1]:>6}" if switch and second
              else f"{'-':<24} {'-':>7} {'-':>4} {'-':>6}")
        print(f"{family:<16} {first:<24} {d[1]:>9.2f} {r[1]:>10.2f} {r[1] / d[1]:>5.2f} {d[args.batch]:>9.2f} "
              f"{r[args.batch]:>10.2f} {r[args.batch] / d[args.batch]:>5.2f} {sw}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


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
