"""Which execution path for the text stages: PyTorch in the runtime, or an ONNX export through onnxruntime?

    python benchmarks/transformers_execution.py [--threads 1] [--tokens 96] [--repeats 5]

For the encoder-only families (question answering, classification) it instantiates the published
architectures (random weights, as `ipa models build` does), exports each to ONNX (torch.onnx.export, dynamic
batch and sequence), and times one forward pass in both on the same padded batch with the same intra-op
threads, at batch 1 and 8: best of `repeats`, printed with the ratio torch/onnxruntime (> 1: onnxruntime is
faster). Sequence-to-sequence stages are not compared: `generate` (greedy decoding with a KV cache) would need
a decoder-with-past export and a decoding loop of our own; PyTorch runs it as it is.

The runtime serves Hugging Face folders in PyTorch (mlserver_ipa/transformers_session.py); this is the
measurement behind that choice. The machine is shared: run it more than once and compare ratios, not times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=96, help="tokens per row (a paragraph plus a question)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch
    import transformers

    from mlserver_ipa.session import session_options
    from mlserver_ipa.zoo import TRANSFORMERS_FAMILIES

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cases = [("squad2-qa", "roberta-base-squad2"), ("sentiment", "distilbert-sst2"), ("sentiment", "bert-sentiment")]
    print(f"one forward pass, {args.tokens} tokens per row, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'variant':<22} {'batch':>5} {'torch ms':>9} {'onnxruntime ms':>15} {'torch/ort':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for family, variant in cases:
            arch = TRANSFORMERS_FAMILIES[family].architecture(variant)
            config = getattr(transformers, arch.config_class)(**arch.dims)
            torch.manual_seed(0)
            model = getattr(transformers, arch.model_class)(config).eval()
            ids = torch.randint(5, 1000, (8, args.tokens))
            mask = torch.ones_like(ids)
            path = Path(tmp) / f"{variant}.onnx"
            with torch.inference_mode():
                torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                                  dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}},
                                  opset_version=17, dynamo=False)
            session = ort.InferenceSession(str(path), session_options(args.threads), providers=["CPUExecutionProvider"])
            for batch in (1, 8):
                i, a = ids[:batch], mask[:batch]
                feeds = {"input_ids": i.numpy().astype(np.int64), "attention_mask": a.numpy().astype(np.int64)}
                with torch.inference_mode():
                    t_torch = _best(lambda: model(input_ids=i, attention_mask=a), args.repeats)  # noqa: B023
                t_ort = _best(lambda: session.run(None, feeds), args.repeats)  # noqa: B023
                print(f"{variant:<22} {batch:>5} {t_torch:>9.1f} {t_ort:>15.1f} {t_torch / t_ort:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
