"""What the speech and text pipelines are sent: requests people would send, and what each stage passes on.

IPA's four other pipelines start from speech (audio-qa, audio-sent), an English document (sum-qa) or French text
(nlp). One request of each, and the text every later stage receives, are fixed here so that the profiler
measures every stage at the input length it sees in the pipeline and the load generator sends the same:

    kind        what the stage does          receives                           passes on
    speech      speech recognition           a spoken sentence (FP32, 16 kHz)   its transcript
    classify    sentiment / language id      text                               the same text
    translate   French -> English            French text                        the English translation
    summarise   abstractive summary          an English document                a one-sentence summary
    answer      extractive QA                context (upstream text) + question the answer

The texts are one news story told at three lengths (a 160-word document, a 16-word sentence, its French
translation), so a pipeline's question is answerable at every stage. Speech is that sentence spoken by
espeak-ng (Debian's `espeak-ng`) and resampled to 16 kHz; without espeak-ng a speech-like tone of the same
length stands in, with a warning. The lengths follow the demo models' generation lengths (a transcript of
~20 tokens, a translation of ~24, a summary of ~28).
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from adapter.errors import UsageError

Kind = Literal["speech", "classify", "translate", "summarise", "answer"]
KINDS: tuple[Kind, ...] = ("speech", "classify", "translate", "summarise", "answer")
SAMPLING_RATE = 16_000

SENTENCE = "The city council voted on Tuesday to open the new bridge over the river to traffic next spring."
"""Spoken to the speech pipelines; also the transcript a speech stage passes on."""
FRENCH = ("Le conseil municipal a voté mardi l'ouverture du nouveau pont sur la rivière au printemps prochain, "
          "après des années de retard.")
TRANSLATION = ("The city council voted on Tuesday to open the new bridge over the river next spring, after years "
               "of delay.")
SUMMARY = "The new bridge over the river will open to traffic next spring, after years of delay, the council said."
QUESTION = "When will the new bridge open to traffic?"
DOCUMENT = (
    "The city council voted on Tuesday to open the new bridge over the river to traffic next spring, ending years "
    "of delay that had turned the project into a symbol of the town's troubles. Work on the bridge began six years "
    "ago, but it stopped twice: first when the builder went bankrupt, and again when engineers found that the "
    "ground under the northern pier was softer than the surveys had shown. The council's transport committee said "
    "the last tests of the steel deck had been passed in October and that only the road surface, the lights and "
    "the footpaths remained to be finished over the winter. Buses will use the bridge from the first day, and the "
    "old ferry will keep running until the summer. Residents of the northern districts, who now drive forty "
    "minutes to reach the hospital, welcomed the vote. Some members of the council warned that the final bill, "
    "almost twice the first estimate, would weigh on the town's budget for a decade."
)


@dataclass(frozen=True)
class Item:
    """What one request brings to a stage: speech (the text spoken) or text, and the request's question."""

    speech: str | None = None
    text: str | None = None
    question: str | None = None


def request_item(kinds: Sequence[Kind]) -> Item:
    """The request a pipeline whose stages are `kinds` is sent (what its first stage receives)."""
    if not kinds:
        raise UsageError("a pipeline has at least one stage")
    question = QUESTION if "answer" in kinds else None
    if kinds[0] == "speech":
        return Item(speech=SENTENCE, question=question)
    first_text = next((k for k in kinds if k != "classify"), "classify")
    text = {"translate": FRENCH, "summarise": DOCUMENT, "answer": DOCUMENT}.get(first_text, SENTENCE)
    return Item(text=text, question=question)


def passed_on(kind: Kind, item: Item) -> Item:
    """What a stage of `kind` passes to the next one, given what it received."""
    if kind == "speech":
        return Item(text=item.speech, question=item.question)
    if kind == "translate":
        return Item(text=TRANSLATION, question=item.question)
    if kind == "summarise":
        return Item(text=SUMMARY, question=item.question)
    if kind == "answer":
        return Item(text="next spring", question=item.question)
    return item


def stage_items(kinds: Sequence[Kind]) -> list[Item]:
    """What every stage of the pipeline receives, in order."""
    items = [request_item(kinds)]
    for kind in kinds[:-1]:
        items.append(passed_on(kind, items[-1]))
    return items


def v2_inputs(kind: Kind, item: Item) -> list[dict[str, Any]]:
    """The V2 JSON `inputs` of one request carrying `item` to a stage of `kind` (one row)."""
    if kind == "speech":
        if item.speech is None:
            raise UsageError("a speech stage needs speech: put it first in the pipeline")
        wave_ = speech_waveform(item.speech)
        return [{"name": "input", "datatype": "FP32", "shape": [1, int(wave_.size)],
                 "data": np.round(wave_, 4).tolist()}]
    if item.text is None:
        raise UsageError(f"a {kind} stage takes text: it cannot come first in a speech pipeline's place")
    inputs: list[dict[str, Any]] = [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [item.text]}]
    if kind == "answer":
        inputs.append({"name": "question", "datatype": "BYTES", "shape": [1], "data": [item.question or QUESTION]})
    return inputs


def inputs_json(kind: Kind, item: Item) -> bytes:
    """`v2_inputs` as the compact JSON array the load generator's `V2Payload` carries."""
    return json.dumps(v2_inputs(kind, item), separators=(",", ":"), ensure_ascii=False).encode()


@functools.lru_cache(maxsize=8)
def speech_waveform(text: str, words_per_minute: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng as mono FP32 in [-1, 1] at 16 kHz (a stand-in tone without espeak-ng)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        print("warning: espeak-ng is not installed (apt-get install espeak-ng): a tone of the sentence's length "
              "stands in for speech", file=sys.stderr)
        return _tone(len(text.split()) * 60.0 / words_per_minute)
    try:
        wav = subprocess.run([exe, "-v", "en-us", "-s", str(words_per_minute), "--stdout", text],
                             capture_output=True, check=True, timeout=60).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate, width = w.getframerate(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
    except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as e:
        raise UsageError(f"espeak-ng could not speak the sentence: {e}") from None
    if width != 2:
        raise UsageError(f"espeak-ng wrote {8 * width}-bit samples; 16-bit expected")
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return _resample(samples, rate, SAMPLING_RATE)


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear resampling (espeak-ng speaks at 22,050 Hz; speech below 8 kHz survives it)."""
    if rate == target or x.size == 0:
        return x.astype(np.float32)
    n = int(round(x.size * target / rate))
    return np.interp(np.arange(n) * (rate / target), np.arange(x.size), x).astype(np.float32)


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLING_RATE), dtype=np.float32) / SAMPLING_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return tone.astype(np.float32)
