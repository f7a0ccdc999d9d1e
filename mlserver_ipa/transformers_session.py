"""Hugging Face checkpoint folders as sessions: the execution of the text and speech stages.

`TransformersSession` has the interface of `session.VariantSession` (inputs, outputs, signature, config,
`run_requests`, `measure`) so `VariantRuntime` batches, measures and swaps it the same way; what it runs
depends on the folder's task (`tasks`) and backend (`onnx_encoder.backend_of`):

- encoder-only stages (question answering, classification) in one forward call per length bucket, padded to
  the longest row of the bucket (`encoder_heads`), in onnxruntime where the folder has its ONNX export
  (`ipa models build` writes one, with the measurement behind the choice in `execution.json`), else in PyTorch;
- sequence-to-sequence stages (summarisation, translation, speech recognition) in PyTorch with `generate`
  (`torch_model`), greedy, at most `max_new_tokens` tokens.

Tokenizer and feature extractor are the folder's own (`AutoTokenizer`, `AutoFeatureExtractor`), so a real
checkpoint a user brings is served by this same code.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlserver_ipa.audio import check_waveforms, warmup_waveform
from mlserver_ipa.encoder_heads import EncoderHeads, Forward
from mlserver_ipa.measuring import fastest
from mlserver_ipa.onnx_encoder import ENCODER_TASKS, ONNX_FILE, Backend, OnnxEncoder, backend_of
from mlserver_ipa.settings import SequenceLimits
from mlserver_ipa.tasks import SAMPLING_RATE, TENSORS, task_of
from mlserver_ipa.tensor_spec import Signature, signature_of, spec_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the replica's threads are the model's

import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

SAMPLE_TEXT = ("The city council voted on Tuesday to build a new library next to the railway station, and the "
               "mayor said that work would start in the spring.")
SAMPLE_QUESTION = "What did the council vote to build?"


class TransformersSession:
    """One variant's checkpoint folder loaded with a fixed number of intra-op threads.

    `backend` overrides the folder's own choice (benchmarks compare the two on one folder)."""

    def __init__(self, variant: str, path: Path, threads: int, limits: SequenceLimits,
                 backend: Backend | None = None) -> None:
        self.variant = variant
        self.path = path
        self.threads = threads
        self.limits = limits
        self.task = task_of(path)
        self.backend: Backend = backend or backend_of(path, self.task)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.features = (transformers.AutoFeatureExtractor.from_pretrained(path)
                         if self.task == "speech-recognition" else None)
        config = json.loads((path / "config.json").read_text())
        self._model: Any = None
        forward: Forward
        if self.backend == "onnxruntime":
            if self.task not in ENCODER_TASKS:
                raise ValueError(f"{path}: onnxruntime serves encoder-only stages, not {self.task}")
            forward = OnnxEncoder(path / ONNX_FILE, self.task, threads)
        else:
            from mlserver_ipa.torch_model import TorchModel  # torch: only where it runs

            self._model = forward = TorchModel(path, self.task, threads)
        positions = config.get("max_position_embeddings") or limits.max_input_tokens
        self.max_tokens = min(limits.max_input_tokens, int(self.tokenizer.model_max_length or positions), positions)
        labels = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
        self.heads = (EncoderHeads(self.task, self.tokenizer, labels, self.max_tokens, forward)
                       if self.task in ENCODER_TASKS else None)
        inputs, outputs = TENSORS[self.task]
        self.inputs = [spec_of(t.name, t.datatype, t.shape) for t in inputs]
        self.outputs = [spec_of(t.name, t.datatype, t.shape) for t in outputs]

    @property
    def config(self) -> tuple[str, int]:
        return (self.variant, self.threads)

    def signature(self) -> Signature:
        """Inputs and outputs as requests see them (`tensor_spec.signature_of`)."""
        return signature_of(self.inputs, self.outputs)

    def batch_key(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """Every request can share a batch: rows are padded here (text to its longest, audio to its longest)."""
        return ()

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Refuse, before queueing, what this stage cannot serve."""
        if self.task == "speech-recognition":
            check_waveforms("input", feeds["input"], self.limits.max_audio_s)

    # -- execution -------------------------------------------------------------------------------------

    async def run_requests(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self.run_sync, requests)

    def run_sync(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Serve the rows of `requests` in one batch; outputs are their rows in order."""
        if self.task == "speech-recognition":
            assert self.features is not None
            waves = [row.astype(np.float32) for r in requests for row in r["input"]]
            feats = self.features(waves, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True,
                                  return_tensors="np")
            return {"output": _texts(self._generate(feats))}
        texts = [str(t) for r in requests for t in r["input"]]
        if self.heads is not None:
            questions = ([str(q) for r in requests for q in r["question"]]
                         if self.task == "question-answering" else None)
            return self.heads.run(texts, questions)
        return {"output": _texts(self._generate(self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np")))}

    def _generate(self, encoded: Mapping[str, Any]) -> list[str]:
        ids = self._model.generate(encoded, self.limits.max_new_tokens)
        return list(self.tokenizer.batch_decode(ids, skip_special_tokens=True))

    # -- measurement -----------------------------------------------------------------------------------

    def sample(self, rows: int) -> dict[str, np.ndarray]:
        """A representative request of `rows` rows: a 25-word sentence (with a question), or 3 s of sound."""
        if self.task == "speech-recognition":
            return {"input": warmup_waveform(rows)}
        feeds = {"input": _texts([SAMPLE_TEXT] * rows)}
        if self.task == "question-answering":
            feeds["question"] = _texts([SAMPLE_QUESTION] * rows)
        return feeds

    def measure(self, rows: int, repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
        """Fastest of `repeats` runs on the sample request, in seconds."""
        feeds = self.sample(rows)
        return fastest(lambda: self.run_sync([feeds]), repeats, clock)


def _texts(items: Sequence[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out
