"""What requests carry: random images for the vision pipelines, real sentences and real speech for the others.

    kind        what each request's `input` is                                    used by
    image       FP32 [1, 3, R, R] uniform noise                                   resnet, video-monitoring
    speech      FP32 [1, samples]: a sentence spoken by espeak-ng, 16 kHz mono    audio-qa, audio-sent
    sentences   BYTES [1]: one English sentence                                   sentiment, QA stages alone
    documents   BYTES [1]: an English paragraph of five to six sentences          sum-qa
    french      BYTES [1]: a French paragraph of three sentences                  nlp (language-ID -> translation)

With `question=True` each request also carries `parameters.question`, a question its text (or speech) answers:
a QA stage later in the pipeline reads it there (the router and Seldon pass request parameters on).
Requests rotate through the samples. The speech clips are shipped in `speech/` (`make_speech` wrote them with
Debian's `espeak-ng`; run it again to change them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from adapter.errors import UsageError
from adapter.spec import GraphSpec
from adapter.workloads.loadgen import V2Payload

INPUT_KINDS = ("image", "speech", "sentences", "documents", "french")
SPEECH = Path(__file__).with_name("speech")
RATE = 16_000

SENTENCES: tuple[tuple[str, str], ...] = (
    ("The train to the airport leaves every fifteen minutes from platform four.",
     "Where does the train to the airport leave from?"),
    ("The museum will stay open until ten in the evening during the summer months.",
     "When does the museum close in summer?"),
    ("A new bridge across the harbour was opened by the mayor on Saturday.", "Who opened the new bridge?"),
    ("Children in the village walk two miles to school when the bus does not come.",
     "How far do the children walk to school?"),
    ("The astronauts returned to Earth after six months on the space station.",
     "How long were the astronauts on the space station?"),
    ("What a wonderful day, the sun is shining and everyone is happy.", "How is the weather?"),
)
DOCUMENTS: tuple[tuple[str, str], ...] = (
    ("The city council voted on Tuesday to build a new library next to the railway station. The library will "
     "lend books, films and music to anyone who lives in the town. Work will start in the spring and should "
     "take two years. The mayor said the old library was too small and too far from the centre. Local schools "
     "welcomed the news, and a group of parents offered to help run a reading club for children.",
     "Where will the new library be built?"),
    ("A thick fog covered the airport on Monday morning and many flights were delayed until the afternoon. "
     "Passengers waited for hours in the main hall, where the shops ran out of coffee and sandwiches. The "
     "airport said that no plane could land safely before noon. Trains to the city were full all day. By the "
     "evening most flights had left, and the airport thanked travellers for their patience.",
     "Until when were the flights delayed?"),
    ("Engineers at a small company are testing a new kind of battery that charges in a few minutes. The "
     "battery uses salt instead of rare metals, so it is cheaper to make. The first cells will go into electric "
     "bicycles next year. If the tests go well, the company hopes to build batteries for cars and for storing "
     "solar power at home. Investors have already promised money for a new factory.",
     "What does the new battery use instead of rare metals?"),
)
FRENCH: tuple[str, ...] = (
    "Le conseil municipal a voté mardi la construction d'une nouvelle bibliothèque à côté de la gare. Les travaux "
    "commenceront au printemps. Le maire a dit que l'ancienne bibliothèque était trop petite.",
    "Un épais brouillard a recouvert l'aéroport et de nombreux vols ont été retardés jusqu'à l'après-midi. Les "
    "passagers ont attendu pendant des heures. Le soir, la plupart des vols étaient partis.",
    "Des ingénieurs testent un nouveau type de batterie qui se recharge en quelques minutes. Elle utilise du sel "
    "au lieu de métaux rares. Les premières cellules équiperont des vélos électriques l'année prochaine.",
)


def payload(kind: str, *, resolution: int = 64, question: bool = False, seed: int = 0) -> V2Payload:
    """The requests of `kind` (one of INPUT_KINDS), rotating through the samples."""
    if kind == "image":
        if question:
            raise UsageError("image requests carry no question")
        return V2Payload.random(resolution, seed=seed)
    if kind == "speech":
        samples = [(_speech_tensor(clip), q) for clip, (_, q) in zip(speech_clips(), SENTENCES, strict=True)]
    elif kind in ("sentences", "documents", "french"):
        texts: tuple[tuple[str, str], ...] = {"sentences": SENTENCES, "documents": DOCUMENTS,
                                               "french": tuple((t, "") for t in FRENCH)}[kind]
        if question and kind == "french":
            raise UsageError("the French texts carry no question (no QA stage reads French here)")
        samples = [({"name": "input", "datatype": "BYTES", "shape": [1], "data": [t]}, q) for t, q in texts]
    else:
        raise UsageError(f"unknown input kind {kind!r}; known: {', '.join(INPUT_KINDS)}")
    bodies = tuple(json.dumps([tensor], separators=(",", ":")).encode() for tensor, _ in samples)
    questions = tuple({"question": q} for _, q in samples) if question else ()
    return V2Payload(bodies[0], alternatives=bodies, parameters=questions)


def inputs_for(spec: GraphSpec) -> tuple[str, bool]:
    """(input kind, question?) for a graph's demo load: from its first stage's family, and whether a QA stage
    follows. Graphs of your own models get images unless their first stage is one of the demo families."""
    families = [st.family for st in spec.stages]
    first = families[0]
    kind = {"s2t": "speech", "sentiment": "sentences", "squad2-qa": "sentences", "distilbart-xsum": "documents",
            "lang-id": "french", "opus-mt": "french"}.get(first or "", "image")
    return kind, "squad2-qa" in families


def speech_clips() -> list[np.ndarray]:
    """The shipped utterances as float32 waveforms at 16 kHz, one per sentence of SENTENCES."""
    clips = []
    for i in range(len(SENTENCES)):
        path = SPEECH / f"sentence-{i}.wav"
        if not path.is_file():
            raise UsageError(f"{path} is missing: make it with adapter.workloads.inputs.make_speech()")
        clips.append(read_wav(path))
    return clips


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV at 16 kHz as float32 in [-1, 1]."""
    with wave.open(str(path)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise UsageError(f"{path}: expected 16-bit mono at {RATE} Hz")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def make_speech(folder: Path = SPEECH, voice: str = "en-us", words_per_minute: int = 165) -> list[Path]:
    """Speak SENTENCES with espeak-ng into `folder`/sentence-<i>.wav, 16 kHz 16-bit mono."""
    if shutil.which("espeak-ng") is None:
        raise UsageError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (text, _) in enumerate(SENTENCES):
        raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "--stdout", text],
                             check=True, capture_output=True).stdout
        path = folder / f"sentence-{i}.wav"
        tmp = path.with_suffix(".tmp.wav")
        tmp.write_bytes(raw)
        with wave.open(str(tmp)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        tmp.unlink()
        n = int(len(pcm) * RATE / rate)  # espeak-ng speaks at 22050 Hz: resample by interpolation
        resampled = np.interp(np.arange(n) * rate / RATE, np.arange(len(pcm)), pcm)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(np.clip(np.round(resampled), -32768, 32767).astype("<i2").tobytes())
        written.append(path)
    return written


def _speech_tensor(clip: np.ndarray) -> dict[str, object]:
    return {"name": "input", "datatype": "FP32", "shape": [1, int(clip.size)],
            "data": np.round(clip.astype(np.float64), 4).tolist()}
