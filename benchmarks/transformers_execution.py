"""Which execution path for the encoder-only text stages: PyTorch, or the ONNX export through onnxruntime?

    python benchmarks/transformers_execution.py [--models /work/pipelines-models] [--variants a,b]
                                                [--threads 1] [--rounds 5] [--batches 1,4,8]

For each encoder-only variant (question answering, sentiment, language identification; default one per
family), it takes the full-size build in `--models` (read-only is fine: the folder is linked into a temporary
one), exports it to ONNX exactly as `ipa models build` does (`mlserver_ipa.zoo.onnx_export`), and opens it twice
as the runtime does (`TransformersSession`, backend `torch` and `onnxruntime`, same intra-op threads). Both are
then timed on the inputs the demo sends that family (sentences with their questions, French paragraphs) at
each batch size, **interleaved**: every round times both back to back, alternating which goes first, so machine
load affects both alike. It prints the median ms per call and the median ratio torch/onnxruntime with its
min-max over rounds (> 1: onnxruntime is faster), and the load average.

Then, for the QA variant, whether bucketing rows by length pays: a batch of 4 sentences and 4 documents in one
call padded to the longest, vs split into length buckets (`text.length_buckets`), both on onnxruntime.

Sequence-to-sequence stages are not compared: `generate` (greedy decoding with a KV cache) would need a
decoder-with-past export and a decoding loop of our own; PyTorch runs it as it is. The machine is shared: run
it more than once and compare ratios, not times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from adapter.workloads.inputs import DOCUMENTS, FRENCH, SENTENCES
from mlserver_ipa.settings import SequenceLimits

DEFAULT = {"squad2-qa": "xlm-roberta-base-squad2", "sentiment": "distilbert-sentiment",
           "lang-id": "xlm-roberta-base-langid"}
FAMILY_OF = {"xlm-roberta-base-squad2": "squad2-qa", "roberta-base-squad2": "squad2-qa",
             "distilbert-sentiment": "sentiment", "bert-sentiment": "sentiment", "roberta-sentiment": "sentiment",
             "distilbert-sst2": "sentiment", "xlm-roberta-base-langid": "lang-id"}


def texts_of(family: str, rows: int) -> dict[str, np.ndarray]:
    """`rows` rows of what the demo sends `family`."""
    if family == "lang-id":
        pairs = [(t, "") for t in FRENCH]
    else:
        pairs = list(SENTENCES)
    chosen = [pairs[i % len(pairs)] for i in range(rows)]
    feeds = {"input": np.array([t for t, _ in chosen], dtype=object)}
    if family == "squad2-qa":
        feeds["question"] = np.array([q for _, q in chosen], dtype=object)
    return feeds


def linked(source: Path, into: Path) -> Path:
    """A writable folder whose files are links to `source`'s (the export is written beside them)."""
    into.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.name not in ("model.onnx", "execution.json"):
            (into / f.name).symlink_to(f.resolve())
    return into


def ms(fn, feeds) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn([feeds])
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("/work/pipelines-models"),
                        help="full-size builds, one folder per family (ipa models build --family F --out MODELS/F)")
    parser.add_argument("--variants", default=",".join(DEFAULT.values()))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="1,4,8")
    args = parser.parse_args()
    from mlserver_ipa.transformers_session import TransformersSession
    from mlserver_ipa.zoo.onnx_export import export_encoder

    batches = [int(b) for b in args.batches.split(",")]
    print(f"{args.threads} thread(s), {args.rounds} interleaved rounds, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; ms per call (median), torch/onnxruntime (median, "
          "min-max over rounds)")
    print(f"{'variant':<26} {'batch':>5} {'torch ms':>9} {'ort ms':>8} {'torch/ort':>9} {'min-max':>11}")
    with tempfile.TemporaryDirectory(prefix="ipa-bench-exec-") as tmp:
        for variant in args.variants.split(","):
            family = FAMILY_OF[variant]
            folder = linked(args.models / family / family / variant, Path(tmp) / variant)
            t0 = time.perf_counter()
            export_encoder(folder)
            exported = time.perf_counter() - t0
            sessions = {b: TransformersSession(variant, folder, args.threads, SequenceLimits(), backend=b)
                        for b in ("torch", "onnxruntime")}
            for batch in batches:
                feeds = texts_of(family, batch)
                for s in sessions.values():  # warm-up
                    s.run_sync([feeds])
                times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
                for r in range(args.rounds):
                    order = ["torch", "onnxruntime"] if r % 2 == 0 else ["onnxruntime", "torch"]
                    for b in order:
                        times[b].append(ms(sessions[b].run_sync, feeds))
                ratios = [t / o for t, o in zip(times["torch"], times["onnxruntime"], strict=True)]
                print(f"{variant:<26} {batch:>5} {statistics.median(times['torch']):>9.1f} "
                      f"{statistics.median(times['onnxruntime']):>8.1f} {statistics.median(ratios):>9.2f} "
                      f"{min(ratios):>5.2f}-{max(ratios):<5.2f}", flush=True)
            print(f"  (export {exported:.0f} s; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
            if family == "squad2-qa":
                bucketing(sessions["onnxruntime"], args.rounds)
            del sessions


def bucketing(session, rounds: int) -> None:  # type: ignore[no-untyped-def]
    """A mixed batch (4 sentences, 4 documents) padded to its longest vs split into length buckets."""
    pairs = [SENTENCES[i] for i in range(4)] + [DOCUMENTS[i % len(DOCUMENTS)] for i in range(4)]
    feeds = {"input": np.array([t for t, _ in pairs], dtype=object),
             "question": np.array([q for _, q in pairs], dtype=object)}
    heads = session.heads
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds + 1):
        for bucket in ((True, False) if r % 2 == 0 else (False, True)):
            heads.bucket = bucket
            t = ms(session.run_sync, feeds)
            if r:  # the first round warms up
                times[bucket].append(t)
    heads.bucket = True
    ratios = [a / b for a, b in zip(times[False], times[True], strict=True)]
    print(f"  bucketing, 4 sentences + 4 documents: padded to the longest {statistics.median(times[False]):.1f} ms, "
          f"bucketed {statistics.median(times[True]):.1f} ms, ratio {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})", flush=True)


if __name__ == "__main__":
    main()
