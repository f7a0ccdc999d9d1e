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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--families", default=",".join(KINDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--tiny", action="store_true", help="build tiny configurations in a temporary folder")
    args = parser.parse_args()
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES, build_repository

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


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
