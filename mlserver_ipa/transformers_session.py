"""Hugging Face checkpoint folders served in PyTorch: the execution of the text and speech stages.

`TransformersSession` has the interface of `session.VariantSession` (inputs, outputs, signature, config,
`run_requests`, `measure`) so `VariantRuntime` batches, measures and swaps it the same way; what it runs
depends on the folder's task (`tasks`):

- encoder-only stages (question answering, classification) in one forward call per length bucket (`text`),
  padded to the longest row of the bucket;
- sequence-to-sequence stages (summarisation, translation, speech recognition) with `generate`, greedy
  (one beam, no sampling), at most `max_new_tokens` tokens; the folder's generation config may ask for fewer
  or fix the length (the demo families do, since random weights stop at an arbitrary token).

Tokenizer and feature extractor are the folder's own (`AutoTokenizer`, `AutoFeatureExtractor`), so a real
checkpoint a user brings is served by this same code. PyTorch, not onnxruntime: measured in
`benchmarks/transformers_execution.py` (same threads, batch 1 and 8), and `generate` needs no export.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mlserver_ipa.audio import check_waveforms, warmup_waveform
from mlserver_ipa.settings import SequenceLimits
from mlserver_ipa.tasks import SAMPLING_RATE, TENSORS, task_of
from mlserver_ipa.tensor_spec import spec_of
from mlserver_ipa.text import length_buckets

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model folders are local; never reach for a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the replica's threads are torch's

import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set in this process
    pass

SAMPLE_TEXT = ("The city council voted on Tuesday to build a new library next to the railway station, and the "
               "mayor said that work would start in the spring.")
SAMPLE_QUESTION = "What did the council vote to build?"
MAX_ANSWER_TOKENS = 30


class TransformersSession:
    """One variant's checkpoint folder loaded in PyTorch with a fixed number of intra-op threads."""

    def __init__(self, variant: str, path: Path, threads: int, limits: SequenceLimits) -> None:
        self.variant = variant
        self.path = path
        self.threads = threads
        self.limits = limits
        self.task = task_of(path)
        torch.set_num_threads(threads)  # per process: a replica serves one session at a time
        auto = {
            "question-answering": transformers.AutoModelForQuestionAnswering,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "text-generation": transformers.AutoModelForSeq2SeqLM,
            "speech-recognition": transformers.AutoModelForSpeechSeq2Seq,
        }[self.task]
        self.model = auto.from_pretrained(path, dtype=torch.float32).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.features = (transformers.AutoFeatureExtractor.from_pretrained(path)
                         if self.task == "speech-recognition" else None)
        self._accepts = set(inspect.signature(self.model.forward).parameters)
        positions = getattr(self.model.config, "max_position_embeddings", None) or limits.max_input_tokens
        self.max_tokens = min(limits.max_input_tokens, int(self.tokenizer.model_max_length or positions), positions)
        inputs, outputs = TENSORS[self.task]
        self.inputs = [spec_of(t.name, t.datatype, t.shape) for t in inputs]
        self.outputs = [spec_of(t.name, t.datatype, t.shape) for t in outputs]

    @property
    def config(self) -> tuple[str, int]:
        return (self.variant, self.threads)

    def signature(self) -> tuple[tuple[tuple[str, str, tuple[int | None, ...]], ...], ...]:
        return (tuple(s.signature() for s in self.inputs), tuple(s.signature() for s in self.outputs))

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
        with torch.inference_mode():
            if self.task == "speech-recognition":
                waves = [row for r in requests for row in r["input"]]
                return {"output": _texts(self._transcribe(waves))}
            texts = [str(t) for r in requests for t in r["input"]]
            if self.task == "text-generation":
                return {"output": _texts(self._generate(self.tokenizer(
                    texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")))}
            if self.task == "text-classification":
                return self._classify(texts)
            questions = [str(q) for r in requests for q in r["question"]]
            return self._answer(questions, texts)

    def _forward(self, encoded: Mapping[str, torch.Tensor]) -> object:
        return self.model(**{k: v for k, v in encoded.items() if k in self._accepts})

    def _generate(self, encoded: Mapping[str, torch.Tensor]) -> list[str]:
        cap = self.limits.max_new_tokens
        wanted = self.model.generation_config
        ids = self.model.generate(
            **{k: v for k, v in encoded.items() if k in self._accepts},
            max_new_tokens=min(cap, wanted.max_new_tokens or cap),
            min_new_tokens=min(cap, wanted.min_new_tokens or 0),
            num_beams=1, do_sample=False)
        return list(self.tokenizer.batch_decode(ids, skip_special_tokens=True))

    def _transcribe(self, waves: list[np.ndarray]) -> list[str]:
        assert self.features is not None
        feats = self.features([w.astype(np.float32) for w in waves], sampling_rate=SAMPLING_RATE, padding=True,
                              return_attention_mask=True, return_tensors="pt")
        return self._generate(feats)

    def _classify(self, texts: list[str]) -> dict[str, np.ndarray]:
        labels = np.empty(len(texts), dtype=object)
        scores = np.zeros(len(texts), dtype=np.float32)
        for rows in self._buckets(texts):
            enc = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            probs = torch.softmax(self._forward(enc).logits.float(), dim=-1)  # type: ignore[attr-defined]
            best = probs.argmax(dim=-1)
            for j, i in enumerate(rows):
                labels[i] = str(self.model.config.id2label.get(int(best[j]), int(best[j])))
                scores[i] = float(probs[j, best[j]])
        return {"output": _texts(texts), "label": labels, "score": scores}

    def _answer(self, questions: list[str], contexts: list[str]) -> dict[str, np.ndarray]:
        answers = np.empty(len(contexts), dtype=object)
        scores = np.zeros(len(contexts), dtype=np.float32)
        lengths = [len(q) + len(c) for q, c in zip(questions, contexts, strict=True)]
        for rows in length_buckets(lengths) if len(contexts) > 1 else [[0]]:
            enc = self.tokenizer([questions[i] for i in rows], [contexts[i] for i in rows], padding=True,
                                 truncation="only_second", max_length=self.max_tokens, return_offsets_mapping=True,
                                 return_tensors="pt")
            offsets = enc.pop("offset_mapping")
            out = self._forward(enc)
            start_p = torch.softmax(out.start_logits.float(), dim=-1)  # type: ignore[attr-defined]
            end_p = torch.softmax(out.end_logits.float(), dim=-1)  # type: ignore[attr-defined]
            for j, i in enumerate(rows):
                in_context = torch.tensor([s == 1 for s in enc.sequence_ids(j)])
                s_scores = torch.where(in_context, start_p[j], torch.zeros_like(start_p[j]))
                start = int(s_scores.argmax())
                window = end_p[j, start:start + MAX_ANSWER_TOKENS] * in_context[start:start + MAX_ANSWER_TOKENS]
                end = start + int(window.argmax())
                a, b = int(offsets[j, start, 0]), int(offsets[j, end, 1])
                answers[i] = contexts[i][a:b] or contexts[i][a:a + 1]
                scores[i] = float(s_scores[start] * end_p[j, end])
        return {"output": answers, "score": scores}

    def _buckets(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [[0]]
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]]
        return length_buckets(lengths)

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
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = clock()
            self.run_sync([feeds])
            best = min(best, clock() - t0)
        return best


def _texts(items: Sequence[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out

