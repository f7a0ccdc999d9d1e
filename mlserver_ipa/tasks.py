"""The tasks a Hugging Face model folder is served as, and the V2 tensors of each.

A variant whose `uri` is a folder with a `config.json` (the `save_pretrained` layout) is served by
`transformers_session`; its task comes from the config's `architectures`, so a user's real checkpoint and the
demo families are read the same way:

    task                 architectures ending in                          inputs                      outputs
    speech-recognition   ...ForConditionalGeneration with a feature      input FP32 [-1,-1] (16 kHz)  output BYTES [-1]
                         extractor (Speech2Text, Whisper)
    question-answering   ...ForQuestionAnswering                          input BYTES [-1] (context),  output BYTES [-1] (answer),
                                                                          question BYTES [-1]          score FP32 [-1]
    text-classification  ...ForSequenceClassification                     input BYTES [-1]             output BYTES [-1] (the text, passed on),
                                                                                                      label BYTES [-1], score FP32 [-1]
    text-generation      other ...ForConditionalGeneration / ...MTModel   input BYTES [-1]             output BYTES [-1]
                         (BART, Marian, T5: summarisation, translation)

`output` is what a pipeline passes to the next stage's `input` (router and Seldon alike), so speech -> text ->
QA / sentiment, summary -> QA and language-ID -> translation -> summary chain without glue. A classifier passes
its text on and adds its label, so language identification can stand before translation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Task = Literal["speech-recognition", "question-answering", "text-classification", "text-generation"]
SAMPLING_RATE = 16_000
"""Waveforms are mono FP32 at this rate (Speech2Text's and Whisper's)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 for a dynamic dimension; the first is the batch."""


TEXT = Tensor("input", "BYTES", (-1,))
TENSORS: dict[Task, tuple[tuple[Tensor, ...], tuple[Tensor, ...]]] = {
    "speech-recognition": ((Tensor("input", "FP32", (-1, -1)),), (Tensor("output", "BYTES", (-1,)),)),
    "question-answering": ((TEXT, Tensor("question", "BYTES", (-1,))),
                           (Tensor("output", "BYTES", (-1,)), Tensor("score", "FP32", (-1,)))),
    "text-classification": ((TEXT,), (Tensor("output", "BYTES", (-1,)), Tensor("label", "BYTES", (-1,)),
                                      Tensor("score", "FP32", (-1,)))),
    "text-generation": ((TEXT,), (Tensor("output", "BYTES", (-1,)),)),
}


def is_model_folder(path: Path) -> bool:
    """A Hugging Face checkpoint folder (as `save_pretrained` writes it)."""
    return path.is_dir() and (path / "config.json").is_file()


def task_of(folder: Path) -> Task:
    """The task of the checkpoint in `folder`; ValueError naming the file when it is none of ours."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder / 'config.json'}: cannot be read: {e}") from e
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch.endswith("ForQuestionAnswering"):
            return "question-answering"
        if arch.endswith("ForSequenceClassification"):
            return "text-classification"
        if arch.endswith(("ForConditionalGeneration", "MTModel", "ForSpeechSeq2Seq")):
            if (folder / "preprocessor_config.json").is_file():
                return "speech-recognition"
            return "text-generation"
    raise ValueError(f"{folder / 'config.json'}: architectures {architectures} are none the runtime serves "
                     "(…ForQuestionAnswering, …ForSequenceClassification, …ForConditionalGeneration, …MTModel)")
