"""A checkpoint folder's model in PyTorch: the forward pass of an encoder, and greedy generation of a seq2seq one.

`TorchModel` loads the folder with the `transformers` auto class of its task and runs it under
`torch.inference_mode` with the replica's intra-op threads. Encoder-only stages call it as an
`encoder_heads.Forward` (numpy arrays in, logits by name out, as `onnx_encoder.OnnxEncoder`);
sequence-to-sequence stages (summarisation, translation, speech recognition) call `generate`: greedy (one beam,
no sampling), at most `max_new_tokens` tokens; the folder's generation config may ask for fewer or fix the
length (the demo families do, since random weights stop at an arbitrary token).

Only this module runs torch; a replica serving an ONNX export builds no torch model.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlserver_ipa.tasks import Task

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the replica's threads are torch's

import torch  # noqa: E402
import transformers  # noqa: E402

try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set in this process
    pass


class TorchModel:
    """One checkpoint folder's model in PyTorch with `threads` intra-op threads."""

    def __init__(self, path: Path, task: Task, threads: int) -> None:
        torch.set_num_threads(threads)  # per process: a replica serves one session at a time
        auto = {
            "question-answering": transformers.AutoModelForQuestionAnswering,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForSeq2SeqLM,
            "speech-recognition": transformers.AutoModelForSpeechSeq2Seq,
        }[task]
        self.threads = threads
        self.model = auto.from_pretrained(path, dtype=torch.float32).eval()
        self.config = self.model.config
        self._accepts = set(inspect.signature(self.model.forward).parameters)

    def _tensors(self, encoded: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in encoded.items() if k in self._accepts}

    def __call__(self, encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The encoder's logits by name (`logits`, or `start_logits` and `end_logits`)."""
        with torch.inference_mode():
            out = self.model(**self._tensors(encoded))
        return {k: v.float().numpy() for k, v in out.items() if k.endswith("logits")}

    def generate(self, encoded: Mapping[str, Any], max_new_tokens: int) -> torch.Tensor:
        """Greedy generation of at most `max_new_tokens` (the folder's generation config may ask for fewer)."""
        wanted = self.model.generation_config
        with torch.inference_mode():
            return self.model.generate(
                **self._tensors(encoded),
                max_new_tokens=min(max_new_tokens, wanted.max_new_tokens or max_new_tokens),
                min_new_tokens=min(max_new_tokens, wanted.min_new_tokens or 0),
                num_beams=1, do_sample=False)
