"""Speech in V2 tensors: mono FP32 waveforms at 16 kHz, one row per utterance, checked before they are queued.

A request's `input` is FP32 `[rows, samples]` in [-1, 1] (what `soundfile`/`librosa` load); rows of one request
share a length, requests of different lengths are batched together (the feature extractor pads each batch to
its longest). `check_waveforms` turns what the feature extractor would choke on or what would hold a replica
for long (too short, too long, not finite, far out of range) into an `InvalidInput` that says what to send.
"""

from __future__ import annotations

import numpy as np

from mlserver_ipa.errors import InvalidInput
from mlserver_ipa.tasks import SAMPLING_RATE

MIN_SAMPLES = 400
"""One 25 ms analysis window at 16 kHz: anything shorter has no features."""
PEAK_LIMIT = 32.0
"""Samples beyond this are not a [-1, 1] waveform (16-bit integers sent as floats, say)."""


def check_waveforms(name: str, waves: np.ndarray, max_seconds: float) -> None:
    """Raise InvalidInput unless `waves` [rows, samples] is speech this runtime can serve."""
    if waves.ndim != 2:
        raise InvalidInput(f"input {name!r}: a waveform batch is FP32 [rows, samples] at {SAMPLING_RATE} Hz")
    samples = waves.shape[1]
    if samples < MIN_SAMPLES:
        raise InvalidInput(f"input {name!r}: {samples} samples is shorter than one 25 ms window "
                           f"({MIN_SAMPLES} samples at {SAMPLING_RATE} Hz)")
    if samples > max_seconds * SAMPLING_RATE:
        raise InvalidInput(f"input {name!r}: {samples / SAMPLING_RATE:.1f} s of audio; this model takes at most "
                           f"{max_seconds:g} s ({int(max_seconds * SAMPLING_RATE)} samples at {SAMPLING_RATE} Hz): "
                           "split it")
    if not np.isfinite(waves).all():
        raise InvalidInput(f"input {name!r}: the waveform has NaN or infinite samples")
    peak = float(np.abs(waves).max())
    if peak > PEAK_LIMIT:
        raise InvalidInput(f"input {name!r}: samples reach {peak:g}; send float samples in [-1, 1] "
                           f"(16-bit PCM divided by 32768) at {SAMPLING_RATE} Hz")


def warmup_waveform(rows: int, seconds: float = 3.0) -> np.ndarray:
    """A deterministic stand-in utterance (a vowel-like tone plus noise) for warm-up measurements."""
    t = np.arange(int(seconds * SAMPLING_RATE), dtype=np.float32) / SAMPLING_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    noise = np.random.default_rng(0).standard_normal(t.shape).astype(np.float32) * 0.01
    return np.tile((tone + noise).astype(np.float32), (rows, 1))
