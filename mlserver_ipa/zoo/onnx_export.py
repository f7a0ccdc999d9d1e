"""ONNX exports of encoder-only checkpoint folders (question answering, classification), for onnxruntime.

`export_encoder(folder)` writes `folder/model.onnx`: the folder's model traced with `torch.onnx.export`
(eager attention, opset 17) with dynamic `batch` and `sequence` axes on every input and output, then fused by
onnxruntime's transformer optimizer (attention, skip layer norm, bias GELU: the fused graph is what makes
onnxruntime faster than PyTorch at batch 1, `benchmarks/transformers_execution.py`). Its inputs are the
tokenizer's arrays the model takes (`input_ids`, `attention_mask`, and `token_type_ids` for BERT), its outputs
the model's logits by name (`onnx_encoder.LOGITS`). Before it is written, the export is run beside the PyTorch
model on two rows of different lengths and must agree with it (`ExportMismatch` otherwise).

`ipa models build` exports every encoder variant it builds; `ipa models export-onnx FOLDER` exports a
checkpoint a user brings; `ipa up`, `ipa demo` and `ipa profile` export a built family folder that has no export
into the export cache (`export_cache`), never into the folder.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mlserver_ipa.onnx_encoder import ENCODER_TASKS, LOGITS, ONNX_FILE, OnnxEncoder
from mlserver_ipa.tasks import task_of

EXPORTER_VERSION = 1
"""Bump when what an export writes changes: exports made by another version are redone."""
TOLERANCE = 1e-3
"""Largest difference allowed between the export's logits and PyTorch's (float32; typical is 1e-6)."""
CHECK_TEXTS = ("A short one.", "A somewhat longer sentence, so that the two rows are padded differently.")


class ExportMismatch(ValueError):
    """The export does not compute what the PyTorch model computes: a bug in the exporter, not the user's input."""


def export_encoder(folder: Path, target: Path | None = None) -> Path:
    """Export the encoder-only checkpoint in `folder` to `target` (default `folder/model.onnx`; the export cache
    writes elsewhere, `export_cache`); return its path. Nothing is written beside `target` but the export."""
    import torch
    import transformers
    from onnxruntime.transformers.optimizer import optimize_model

    task = task_of(folder)
    if task not in ENCODER_TASKS:
        raise ValueError(f"{folder}: a {task} model is served in PyTorch; only encoder-only stages "
                         f"({', '.join(sorted(ENCODER_TASKS))}) are exported to ONNX")
    auto = (transformers.AutoModelForQuestionAnswering if task == "question-answering"
            else transformers.AutoModelForSequenceClassification)
    model = auto.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    accepts = set(inspect.signature(model.forward).parameters)
    names = [n for n in tokenizer.model_input_names if n in accepts]
    outputs = LOGITS[task]
    if task == "question-answering":
        encoded = tokenizer(["Which one?"] * 2, list(CHECK_TEXTS), padding=True, return_tensors="np")
    else:
        encoded = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="np")

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(**dict(zip(names, args, strict=True)))
            return tuple(out[k] for k in outputs)

    args = tuple(torch.as_tensor(encoded[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update({o: ({0: "batch", 1: "sequence"} if task == "question-answering" else {0: "batch"}) for o in outputs})
    target = target if target is not None else folder / ONNX_FILE
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        raw = Path(tmp) / "raw.onnx"
        wrapper = Logits().eval()  # the exporter restores the wrapper's mode after: eval, so no dropout
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = {k: v.float().numpy() for k, v in zip(outputs, wrapper(*args), strict=True)}
            torch.onnx.export(wrapper, args, str(raw), input_names=names, output_names=list(outputs),
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        fused = optimize_model(str(raw), model_type="bert", num_heads=int(model.config.num_attention_heads),
                               hidden_size=int(model.config.hidden_size), opt_level=0)
        staged = Path(tmp) / ONNX_FILE
        fused.save_model_to_file(str(staged))
        got = OnnxEncoder(staged, task, threads=1)({n: encoded[n] for n in names})
        for name in outputs:
            diff = float(np.abs(got[name] - expected[name]).max())
            if not diff <= TOLERANCE:
                raise ExportMismatch(f"{folder}: the ONNX export's {name} differs from PyTorch's by {diff:.2g} "
                                     f"(at most {TOLERANCE:g})")
        os.replace(staged, target)
    return target
