"""Workloads: per-second load traces, the papers' named windows, synthetic shapes and request arrival times.

A trace is the public web-service-datasets format: one line of space-separated request counts, one per second,
as a plain text file or compressed (`.tbz2`/`.tar.bz2`: a bz2 tar holding e.g. `workload.txt`; `.bz2`: one
compressed text file). Files are parsed as a stream in blocks, so a window late in a 1.9 M-second trace costs one
pass and keeps only the window in memory.

    read_trace(path, start=0, length=None) -> Trace       one window of a trace file
    preset_trace(name, trace_file) -> Trace               IPA's / InfAdapter's named windows of the Twitter trace
    synthetic_trace(shape, duration_s=1200, seed=0)       the same four shapes without any data file
    workload_from_spec("bursty" | "synthetic:bursty" | FILE, trace_file=…, start=…, length=…, scale=…)
    arrival_times(rates, kind="poisson" | "uniform", seed=0) -> sorted arrival times in seconds

Every user mistake (missing or empty file, a non-numeric token, a window past the end, an unknown preset)
raises `UsageError` with one line naming the file.
"""

from __future__ import annotations

import bz2
import contextlib
import math
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from adapter.errors import UsageError

ArrivalKind = Literal["poisson", "uniform"]
ARRIVAL_KINDS: tuple[str, ...] = ("poisson", "uniform")
_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class Trace:
    """Requests per second, one value per second (second 0 first); values may be fractional after scaling."""

    rates: np.ndarray
    name: str = "trace"

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=np.float64)
        rates.flags.writeable = False  # shared freely between simulator runs
        object.__setattr__(self, "rates", rates)

    def __len__(self) -> int:
        return int(self.rates.shape[0])

    @property
    def duration_s(self) -> int:
        return len(self)

    @property
    def mean_rps(self) -> float:
        return float(self.rates.mean()) if len(self) else 0.0

    @property
    def peak_rps(self) -> float:
        return float(self.rates.max()) if len(self) else 0.0

    @property
    def total_requests(self) -> float:
        return float(self.rates.sum())

    def window(self, start: int = 0, length: int | None = None) -> Trace:
        """Seconds `[start, start + length)` of this trace (to the end when `length` is None)."""
        stop = _check_window(self.name, len(self), start, length)
        return Trace(self.rates[start:stop], f"{self.name}[{start}:{stop}]")

    def scaled(self, factor: float) -> Trace:
        """Every second's load multiplied by `factor` (IPA divides the Twitter trace by 8: factor 0.125)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise UsageError(f"scale must be a positive number, got {factor}")
        return Trace(self.rates * factor, self.name if factor == 1 else f"{self.name}x{factor:g}")

    @staticmethod
    def concat(parts: Sequence[Trace], name: str | None = None) -> Trace:
        """The parts played one after the other."""
        if not parts:
            raise UsageError("cannot concatenate zero traces")
        return Trace(np.concatenate([p.rates for p in parts]), name or "+".join(p.name for p in parts))


# --------------------------------------------------------------------------------------------- reading files


def _check_window(source: str, total: int, start: int, length: int | None) -> int:
    """Validate a window against a trace of `total` seconds; return its stop second."""
    if start < 0:
        raise UsageError(f"{source}: start must be >= 0, got {start}")
    if length is not None and length <= 0:
        raise UsageError(f"{source}: length must be > 0, got {length}")
    stop = total if length is None else start + length
    if start >= total or stop > total:
        raise UsageError(f"{source}: window [{start}, {stop}) is past the end of the trace ({total} seconds)")
    return stop


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator[IO[bytes]]:
    name = path.name.lower()
    if not path.is_file():
        raise UsageError(f"{path}: no such trace file")
    try:
        if name.endswith((".tbz2", ".tar.bz2", ".tbz", ".tar", ".tgz", ".tar.gz")):
            # stream mode: one pass of decompression (listing the members first would decompress it twice)
            with tarfile.open(path, mode="r|*") as tar:
                member = next((m for m in tar if m.isfile()), None)  # the datasets ship one `workload.txt`
                if member is None:
                    raise UsageError(f"{path}: the archive holds no file")
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file always has a stream
                with stream:
                    yield stream
        elif name.endswith(".bz2"):
            with bz2.open(path, "rb") as stream:
                yield stream
        else:
            with path.open("rb") as stream:
                yield stream
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UsageError(f"{path}: cannot read the trace: {e}") from e


def _parse_block(tokens: list[bytes], source: Path, first_second: int) -> np.ndarray:
    try:
        values = np.fromiter(map(float, tokens), dtype=np.float64, count=len(tokens))
    except ValueError:
        for i, token in enumerate(tokens):  # find the culprit only on the (rare) error path
            try:
                float(token)
            except ValueError:
                raise UsageError(
                    f"{source}: second {first_second + i}: not a number: {token.decode(errors='replace')!r}"
                ) from None
        raise
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        i = int(bad[0])
        raise UsageError(
            f"{source}: second {first_second + i}: a load must be a finite number >= 0, got {tokens[i].decode()!r}"
        )
    return values


def iter_trace_blocks(path: str | Path) -> Iterator[np.ndarray]:
    """The per-second loads of a trace file, in consecutive blocks (float64 arrays), parsed as a stream."""
    source = Path(path)
    with _open_stream(source) as stream:
        carry = b""
        seconds = 0
        while True:
            block = stream.read(_BLOCK_BYTES)
            if not block:
                break
            block = carry + block
            tokens = block.split()
            # a token cut by the block boundary is finished by the next block
            carry = tokens.pop() if tokens and not block[-1:].isspace() else b""
            if tokens:
                values = _parse_block(tokens, source, seconds)
                seconds += values.size
                yield values
        if carry:
            yield _parse_block([carry], source, seconds)


def read_windows(path: str | Path, windows: Sequence[tuple[int, int | None]]) -> tuple[list[np.ndarray], int]:
    """Several `(start, length)` windows of one trace file in a single pass; also returns the seconds read.

    Reading stops as soon as every window is complete, so early windows of a long trace are cheap.
    """
    source = Path(path)
    for start, length in windows:
        _check_window(str(source), 1 << 62, start, length)  # sign checks before reading anything
    need = None if any(length is None for _, length in windows) else max(s + (n or 0) for s, n in windows)
    parts: list[list[np.ndarray]] = [[] for _ in windows]
    offset = 0
    for block in iter_trace_blocks(source):
        lo, hi = offset, offset + block.size
        for k, (start, length) in enumerate(windows):
            stop = hi if length is None else start + length
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                parts[k].append(block[a - lo : b - lo])
        offset = hi
        if need is not None and offset >= need:
            break
    if offset == 0:
        raise UsageError(f"{source}: empty trace (no per-second counts)")
    # stopping early means every window was complete; otherwise `offset` is the length of the whole trace
    complete = need is not None and offset >= need
    result = []
    for (start, length), chunks in zip(windows, parts, strict=True):
        if not complete:
            _check_window(str(source), offset, start, length)
        result.append(np.concatenate(chunks))
    return result, offset


def read_trace(path: str | Path, start: int = 0, length: int | None = None) -> Trace:
    """Seconds `[start, start + length)` of a trace file (`.txt`, `.tbz2`, `.bz2`); to the end if no length."""
    (rates,), _ = read_windows(path, [(start, length)])
    name = Path(path).name
    return Trace(rates, name if start == 0 and length is None else f"{name}[{start}:{start + rates.size}]")


# ------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A named workload: windows of the Twitter trace played in order, then multiplied by `scale`."""

    name: str
    windows: tuple[tuple[int, int], ...]
    """`(start second, length in seconds)` in the Twitter trace (`web-service-datasets` twitter_trace)."""
    scale: float
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("bursty", ((1301160, 1200),), 1 / 8, "IPA: 1,200 s from second 1,301,160, divided by 8"),
        Preset("steady-low", ((1299600, 1200),), 1 / 8, "IPA: 1,200 s from second 1,299,600, divided by 8"),
        Preset(
            "steady-high",
            ((1768800, 600), (1768800, 600)),
            1 / 8,
            "IPA: 600 s from second 1,768,800 played twice, divided by 8",
        ),
        Preset(
            "fluctuating",
            ((1301400, 600), (1308600, 600)),
            1 / 8,
            "IPA: 600 s from second 1,301,400 then 600 s from 1,308,600, divided by 8",
        ),
        Preset("infadapter", ((1300920, 1260),), 1.0, "InfAdapter: seconds 1,300,920 to 1,302,180, not divided"),
    )
}


def preset_trace(name: str, trace_file: str | Path) -> Trace:
    """The named window `name` (see `PRESETS`) cut from the Twitter trace file `trace_file`."""
    preset = PRESETS.get(name)
    if preset is None:
        raise UsageError(f"unknown workload preset {name!r}; known: {', '.join(PRESETS)}")
    arrays, _ = read_windows(trace_file, list(preset.windows))
    return Trace(np.concatenate(arrays) * preset.scale, name)


# ----------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_SHAPES: tuple[str, ...] = ("bursty", "steady-low", "steady-high", "fluctuating")


def _smooth_noise(rng: np.random.Generator, n: int, corr_s: float) -> np.ndarray:
    """Unit-variance AR(1) noise with correlation time `corr_s` seconds (the trace wobbles, it does not jump)."""
    phi = math.exp(-1.0 / corr_s)
    shocks = rng.normal(0.0, math.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    level = rng.normal()
    for i in range(n):
        level = phi * level + shocks[i]
        out[i] = level
    return out


def _plateaus(
    rng: np.random.Generator,
    n: int,
    low: float,
    high: tuple[float, float],
    spans_s: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
) -> np.ndarray:
    """Alternating low and high plateaus: a sharp rise (5 s) and a slower fall (30–90 s), like the Twitter windows.

    `spans_s` are the ranges of the first low, the later lows and the highs, in seconds.
    """
    first_low_s, low_s, high_s = spans_s
    out = np.empty(n)
    t, value, up = 0, low, False
    while t < n:
        target = rng.uniform(*high) if up else low
        span = int(rng.uniform(*(high_s if up else low_s if t else first_low_s)))
        ramp = 5 if up else int(rng.uniform(30, 90))
        seg = np.full(span, target)
        k = min(ramp, span)
        seg[:k] = value + (target - value) * (np.arange(1, k + 1) / k)
        if up:  # the Twitter bursts sag by ~15 % over their plateau
            seg[k:] *= np.linspace(1.0, 0.85, span - k)
        out[t : t + span] = seg[: n - t]
        t, value, up = t + span, float(seg[-1]), not up
    return out


def synthetic_trace(shape: str, duration_s: int = 1200, seed: int = 0) -> Trace:
    """A seeded trace with the shape and level of one of IPA's windows (divided by 8), needing no data file.

    steady-low ~5.5 rps and steady-high ~29 rps (flat with counting noise); bursty: ~6 rps with one sharp burst
    to ~28 rps for a few minutes per 20 minutes; fluctuating: plateaus alternating between ~6 and ~28 rps every
    few minutes. The per-second noise is the counting noise of the undivided trace (sd = sqrt(rate / 8)).
    """
    if shape not in SYNTHETIC_SHAPES:
        raise UsageError(f"unknown synthetic shape {shape!r}; known: {', '.join(SYNTHETIC_SHAPES)}")
    if duration_s <= 0:
        raise UsageError(f"duration must be > 0 seconds, got {duration_s}")
    rng = np.random.default_rng([seed, SYNTHETIC_SHAPES.index(shape)])
    wobble = 1 + 0.04 * _smooth_noise(rng, duration_s, corr_s=60.0)
    if shape == "steady-low":
        level = 5.5 * wobble
    elif shape == "steady-high":
        level = 29.0 * wobble
    elif shape == "fluctuating":
        level = _plateaus(rng, duration_s, 6.0, (24.0, 30.0), ((100, 200), (150, 300), (200, 350))) * wobble
    else:
        level = _plateaus(rng, duration_s, 6.0, (25.0, 31.0), ((250, 450), (700, 950), (250, 400))) * wobble
    noise = rng.normal(0.0, 1.0, duration_s) * np.sqrt(level / 8)
    return Trace(np.clip(level + noise, 0, None), f"synthetic:{shape}")


# -------------------------------------------------------------------------------------- one spec, all kinds


def workload_from_spec(
    spec: str,
    *,
    trace_file: str | Path | None = None,
    start: int = 0,
    length: int | None = None,
    scale: float = 1.0,
    seed: int = 0,
) -> Trace:
    """The workload a user names on the command line.

    `spec` is a preset name (`bursty`, …; needs `trace_file`), `synthetic:<shape>` (seeded by `seed`, `length`
    seconds long, default 1,200) or a trace file. `start`/`length` then cut a window (for a file: seconds of the
    file; for a preset: seconds of the preset) and `scale` multiplies the load.
    """
    if spec.startswith("synthetic:"):
        trace = synthetic_trace(spec.partition(":")[2], duration_s=(start + length) if length else 1200, seed=seed)
        trace = trace.window(start, length)
        if start == 0:
            trace = Trace(trace.rates, spec)
    elif spec in PRESETS:
        if trace_file is None:
            raise UsageError(f"preset {spec!r} is a window of the Twitter trace: pass the trace file (--trace-file)")
        trace = preset_trace(spec, trace_file)
        if start or length is not None:
            trace = trace.window(start, length)
    else:
        path = Path(spec)
        if not path.exists():
            raise UsageError(
                f"{spec}: no such trace file, preset ({', '.join(PRESETS)}) or synthetic:<shape> "
                f"({', '.join(SYNTHETIC_SHAPES)})"
            )
        trace = read_trace(path, start, length)
    return trace.scaled(scale) if scale != 1.0 else trace


# ------------------------------------------------------------------------------------------------ arrivals


def _poisson_second(rate: float, seed: int, second: int) -> np.ndarray:
    """Arrival offsets in [0, 1) of one second: exponential gaps from the second's own random stream."""
    rng = np.random.default_rng([seed, second])
    # draw enough gaps for all but ~1e-9 of cases in one call, then top up if that was not enough
    chunk = int(rate + 6 * math.sqrt(rate) + 8)
    times = np.cumsum(rng.exponential(1.0 / rate, chunk))
    while times[-1] < 1.0:
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / rate, chunk))])
    return times[times < 1.0]


def arrival_times(rates: Trace | np.ndarray | Sequence[float], kind: str = "poisson", seed: int = 0) -> np.ndarray:
    """Sorted arrival times (seconds from the start of the trace) of the requests of a per-second trace.

    poisson: a Poisson process of the second's rate, drawn with exponential gaps from a fresh random stream
    per second seeded by `(seed, second)`, so a second's arrivals do not depend on the seconds before it.
    uniform: the second's requests evenly spaced; fractional rates carry over to the next seconds so the
    total matches the trace. Seconds of rate 0 have no arrivals.
    """
    values = rates.rates if isinstance(rates, Trace) else np.asarray(rates, dtype=np.float64)
    if kind not in ARRIVAL_KINDS:
        raise UsageError(f"unknown arrival process {kind!r}; known: {', '.join(ARRIVAL_KINDS)}")
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        raise UsageError("arrival rates must be finite numbers >= 0")
    parts: list[np.ndarray] = []
    if kind == "poisson":
        for second, rate in enumerate(values.tolist()):
            if rate > 0:
                parts.append(second + _poisson_second(rate, seed, second))
    else:
        cumulative = np.floor(np.cumsum(values) + 1e-9)
        counts = np.diff(np.concatenate([[0.0], cumulative])).astype(np.int64)
        for second, n in enumerate(counts.tolist()):
            if n > 0:
                parts.append(second + np.arange(n) / n)
    return np.concatenate(parts) if parts else np.empty(0)
