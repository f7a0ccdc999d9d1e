"""Which backend runs a checkpoint folder, and the onnxruntime forward pass of an encoder-only one.

A folder's backend is, in this order:

1. what its `execution.json` says (`ExecutionRecord`: `backend` and `why`; `ipa models build` writes one
   into every folder it builds, with the measurement behind the choice);
2. otherwise `onnxruntime` when the folder is an encoder-only stage (question answering, classification) with
   a `model.onnx` beside its config (what `ipa models build` exports, and the layout `optimum-cli export onnx`
   writes);
3. otherwise `torch`: a checkpoint a user brings as `save_pretrained` wrote it is served in PyTorch, unchanged.
   Nothing is exported on load: the folder may be read-only, and an export holds a cold start for tens of
   seconds; `ipa models export-onnx FOLDER` exports it once.

Sequence-to-sequence stages (summarisation, translation, speech) always run in PyTorch (`generate`).
`OnnxEncoder` takes the tokenizer's numpy arrays and answers the model's logits by name (`logits`, or
`start_logits` and `end_logits`), exactly what the PyTorch model answers, so `encoder_heads` reads both alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, ValidationError

from mlserver_ipa.ort_options import session_options
from mlserver_ipa.tasks import Task

Backend = Literal["onnxruntime", "torch"]
ONNX_FILE = "model.onnx"
EXECUTION_FILE = "execution.json"
ENCODER_TASKS: frozenset[Task] = frozenset({"question-answering", "text-classification"})
LOGITS: dict[Task, tuple[str, ...]] = {"question-answering": ("start_logits", "end_logits"),
                                       "text-classification": ("logits",)}
"""The outputs an encoder-only task's graph answers, in the PyTorch model's order."""


class ExecutionRecord(BaseModel):
    """`execution.json` in a checkpoint folder: the backend that serves it, and why."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend
    why: str = ""
    """The measurement behind the choice, for people reading the folder."""


def backend_of(folder: Path, task: Task) -> Backend:
    """The backend serving `folder` (see the module docstring); ValueError naming the file when it is wrong."""
    record_path = folder / EXECUTION_FILE
    if record_path.is_file():
        try:
            record = ExecutionRecord.model_validate_json(record_path.read_text())
        except (OSError, ValidationError) as e:
            raise ValueError(f"{record_path}: {e}") from e
        if record.backend == "onnxruntime":
            if task not in ENCODER_TASKS:
                raise ValueError(f"{record_path}: backend onnxruntime serves encoder-only stages "
                                 f"({', '.join(sorted(ENCODER_TASKS))}), not {task}")
            if not (folder / ONNX_FILE).is_file():
                raise ValueError(f"{record_path}: backend onnxruntime, but there is no {ONNX_FILE} beside it")
        return record.backend
    return "onnxruntime" if task in ENCODER_TASKS and (folder / ONNX_FILE).is_file() else "torch"


class OnnxEncoder:
    """An encoder-only checkpoint's `model.onnx` in onnxruntime, with `threads` intra-op threads."""

    def __init__(self, path: Path, task: Task, threads: int) -> None:
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.input_names = [a.name for a in self.session.get_inputs()]
        self.output_names = list(LOGITS[task])
        missing = set(self.output_names) - {a.name for a in self.session.get_outputs()}
        if missing:
            raise ValueError(f"{path}: the graph has no output {sorted(missing)} (a {task} stage answers "
                             f"{', '.join(self.output_names)})")

    def __call__(self, encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits by name for the tokenizer's arrays (those the graph does not take are left out)."""
        feeds = {n: np.asarray(encoded[n], dtype=np.int64) for n in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))
