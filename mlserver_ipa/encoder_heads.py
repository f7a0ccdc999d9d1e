"""The encoder-only text stages around their forward pass: tokenise, bucket by length, read the answer.

`EncoderHeads` turns texts into the V2 outputs of a classifier (`label`, `score`, the text passed on) or of an
extractive QA model (`output`: the answer span, `score`), given any `Forward`: a callable from the tokenizer's
numpy arrays to the model's logits by name. PyTorch (`torch_model`) and onnxruntime (`onnx_encoder`) are two
such callables, so both backends share every step but the forward pass, and their answers agree to within the
float error of the logits.

A batch of several rows is split by token length (`text.length_buckets`) so that each call pads to the longest
row of its bucket, not of the batch (`benchmarks/transformers_execution.py` measures what that saves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlserver_ipa.tasks import Task
from mlserver_ipa.text import length_buckets

Forward = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
MAX_ANSWER_TOKENS = 30
"""Longest answer span, tokens."""


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _texts(items: list[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class EncoderHeads:
    """Tokenisation and answer extraction of one encoder-only stage (`task`), around `forward`."""

    def __init__(self, task: Task, tokenizer: Any, id2label: Mapping[int, str], max_tokens: int,
                 forward: Forward, bucket: bool = True) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.id2label = dict(id2label)
        self.max_tokens = max_tokens
        self.forward = forward
        self.bucket = bucket

    def run(self, texts: list[str], questions: list[str] | None = None) -> dict[str, np.ndarray]:
        if self.task == "question-answering":
            assert questions is not None
            return self.answer(questions, texts)
        return self.classify(texts)

    def classify(self, texts: list[str]) -> dict[str, np.ndarray]:
        labels = np.empty(len(texts), dtype=object)
        scores = np.zeros(len(texts), dtype=np.float32)
        for rows in self._buckets(texts):
            enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="np")
            probs = _softmax(np.asarray(self.forward(dict(enc))["logits"]))
            best = probs.argmax(axis=-1)
            for j, i in enumerate(rows):
                labels[i] = str(self.id2label.get(int(best[j]), int(best[j])))
                scores[i] = float(probs[j, best[j]])
        return {"output": _texts(texts), "label": labels, "score": scores}

    def answer(self, questions: list[str], contexts: list[str]) -> dict[str, np.ndarray]:
        answers = np.empty(len(contexts), dtype=object)
        scores = np.zeros(len(contexts), dtype=np.float32)
        lengths = [len(q) + len(c) for q, c in zip(questions, contexts, strict=True)]
        groups = length_buckets(lengths) if self.bucket and len(contexts) > 1 else [list(range(len(contexts)))]
        for rows in groups:
            enc = self.tokenizer([questions[i] for i in rows], [contexts[i] for i in rows], padding=True,
                                 truncation="only_second", max_length=self.max_tokens, return_offsets_mapping=True,
                                 return_tensors="np")
            offsets = enc.pop("offset_mapping")
            out = self.forward(dict(enc))
            start_p = _softmax(np.asarray(out["start_logits"]))
            end_p = _softmax(np.asarray(out["end_logits"]))
            for j, i in enumerate(rows):
                in_context = np.array([s == 1 for s in enc.sequence_ids(j)])
                s_scores = np.where(in_context, start_p[j], 0.0)
                start = int(s_scores.argmax())
                window = end_p[j, start:start + MAX_ANSWER_TOKENS] * in_context[start:start + MAX_ANSWER_TOKENS]
                end = start + int(window.argmax())
                a, b = int(offsets[j, start, 0]), int(offsets[j, end, 1])
                answers[i] = contexts[i][a:b] or contexts[i][a:a + 1]
                scores[i] = float(s_scores[start] * end_p[j, end])
        return {"output": answers, "score": scores}

    def _buckets(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1 or not self.bucket:
            return [list(range(len(texts)))]
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]]
        return length_buckets(lengths)
