"""Workload traces: reading (plain, tbz2, bz2, streamed across blocks), windows, scaling, presets, synthetic
shapes and arrival processes."""

from __future__ import annotations

import bz2
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA

from adapter.errors import UsageError
from adapter.workloads.traces import (
    PRESETS,
    SYNTHETIC_SHAPES,
    Trace,
    arrival_times,
    preset_trace,
    read_trace,
    synthetic_trace,
    workload_from_spec,
)

TWITTER = SHARED_DATA / "traces" / "twitter.tbz2"
needs_twitter = pytest.mark.skipif(not TWITTER.is_file(), reason="shared Twitter trace not present")


def write_tbz2(path: Path, text: str, member: str = "workload.txt") -> Path:
    data = text.encode()
    with tarfile.open(path, "w:bz2") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_plain_tbz2_and_bz2_give_the_same_trace(tmp_path: Path) -> None:
    text = "5 0 0 7 12 3\n"
    plain = tmp_path / "w.txt"
    plain.write_text(text)
    packed = write_tbz2(tmp_path / "w.tbz2", text)
    single = tmp_path / "w.txt.bz2"
    single.write_bytes(bz2.compress(text.encode()))
    for path in (plain, packed, single):
        trace = read_trace(path)
        assert trace.rates.tolist() == [5, 0, 0, 7, 12, 3]
        assert trace.duration_s == 6 and trace.total_requests == 27 and trace.peak_rps == 12


def test_streaming_across_block_boundaries_matches_a_plain_parse(tmp_path: Path) -> None:
    values = np.random.default_rng(1).integers(0, 100_000, 700_000)  # ~4 MB: several 1 MiB blocks
    path = tmp_path / "big.txt"
    path.write_text(" ".join(map(str, values.tolist())))  # no trailing newline: the last token ends the file
    assert np.array_equal(read_trace(path).rates, values)
    window = read_trace(path, 650_000, 1000)
    assert np.array_equal(window.rates, values[650_000:651_000])


def test_windows_zero_seconds_and_scale(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("1 2 0 0 0 6 7 8\n")
    window = read_trace(path, start=2, length=4)
    assert window.rates.tolist() == [0, 0, 0, 6]
    assert window.window(1, 2).rates.tolist() == [0, 0]
    assert window.scaled(0.5).rates.tolist() == [0, 0, 0, 3]
    assert read_trace(path, start=5).rates.tolist() == [6, 7, 8]  # to the end
    joined = Trace.concat([window, window])
    assert joined.duration_s == 8
    assert not window.rates.flags.writeable  # shared between runs: nobody may change it in place


@pytest.mark.parametrize(
    ("text", "start", "length", "message"),
    [
        ("", 0, None, "empty trace"),
        ("   \n", 0, None, "empty trace"),
        ("1 2 x3 4", 0, None, "second 2: not a number: 'x3'"),
        ("1 2 -3", 0, None, "second 2: a load must be a finite number >= 0"),
        ("1 nan", 0, None, "second 1: a load must be a finite number"),
        ("1 2 3", 2, 5, "window [2, 7) is past the end of the trace (3 seconds)"),
        ("1 2 3", 3, None, "past the end"),
        ("1 2 3", -1, None, "start must be >= 0"),
        ("1 2 3", 0, 0, "length must be > 0"),
    ],
)
def test_bad_traces_raise_one_line(tmp_path: Path, text: str, start: int, length: int | None, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        read_trace(path, start, length)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_and_archive_without_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such trace file"):
        read_trace(tmp_path / "nope.txt")
    empty = tmp_path / "empty.tbz2"
    with tarfile.open(empty, "w:bz2"):
        pass
    with pytest.raises(UsageError, match="holds no file"):
        read_trace(empty)
    broken = tmp_path / "broken.tbz2"
    broken.write_bytes(b"not bz2 at all")
    with pytest.raises(UsageError, match="cannot read the trace"):
        read_trace(broken)


def test_presets_are_the_windows_of_the_papers() -> None:
    # ../shared/data/README.md: 1,200 s windows divided by 8; InfAdapter's 1300920..1302180 undivided
    assert {n: (p.windows, p.scale) for n, p in PRESETS.items()} == {
        "bursty": (((1301160, 1200),), 0.125),
        "steady-low": (((1299600, 1200),), 0.125),
        "steady-high": (((1768800, 600), (1768800, 600)), 0.125),
        "fluctuating": (((1301400, 600), (1308600, 600)), 0.125),
        "infadapter": (((1300920, 1260),), 1.0),
    }


@needs_twitter
def test_presets_cut_their_windows_from_the_twitter_trace() -> None:
    full = read_trace(TWITTER)
    assert full.duration_s == 1_899_061 and full.peak_rps == 388
    for name in ("fluctuating", "steady-high"):  # several windows; played twice
        preset = PRESETS[name]
        expected = np.concatenate([full.rates[s : s + n] for s, n in preset.windows]) / 8
        trace = preset_trace(name, TWITTER)
        assert trace.duration_s == 1200 and np.array_equal(trace.rates, expected), name
        assert workload_from_spec(name, trace_file=TWITTER, length=100, scale=2).rates.tolist() == (
            2 * expected[:100]
        ).tolist()


def test_synthetic_shapes_are_seeded_and_at_the_presets_levels() -> None:
    levels = {"steady-low": (4.5, 6.5), "steady-high": (26, 32), "bursty": (7, 18), "fluctuating": (9, 22)}
    for shape in SYNTHETIC_SHAPES:
        a, b = synthetic_trace(shape, seed=3), synthetic_trace(shape, seed=3)
        assert np.array_equal(a.rates, b.rates)
        assert not np.array_equal(a.rates, synthetic_trace(shape, seed=4).rates)
        assert a.duration_s == 1200 and a.rates.min() >= 0
        low, high = levels[shape]
        assert low <= a.mean_rps <= high, (shape, a.mean_rps)
    bursty = synthetic_trace("bursty").rates
    assert bursty.max() > 3 * np.median(bursty)  # a burst well above the calm level
    with pytest.raises(UsageError, match="unknown synthetic shape"):
        synthetic_trace("spiky")


def test_workload_from_spec(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("4 4 8 8 0 2")
    assert workload_from_spec(str(path), start=2, length=2, scale=0.5).rates.tolist() == [4, 4]
    synthetic = workload_from_spec("synthetic:steady-low", length=60, seed=1)
    assert synthetic.duration_s == 60 and synthetic.name == "synthetic:steady-low"
    with pytest.raises(UsageError, match="needs the Twitter trace|pass the trace file"):
        workload_from_spec("bursty")
    with pytest.raises(UsageError, match="no such trace file, preset"):
        workload_from_spec("burst")
    with pytest.raises(UsageError, match="scale must be a positive"):
        workload_from_spec(str(path), scale=0)


def test_poisson_arrivals_have_the_rate_and_dispersion_of_a_poisson_process() -> None:
    rate, seconds = 40.0, 300
    times = arrival_times(np.full(seconds, rate), "poisson", seed=7)
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < seconds
    expected = rate * seconds
    assert abs(times.size - expected) < 4 * np.sqrt(expected)
    counts = np.bincount(times.astype(int), minlength=seconds)
    dispersion = counts.var(ddof=1) / counts.mean()  # 1 for Poisson; sd of the estimate ~ sqrt(2/(n-1)) = 0.08
    assert 0.7 < dispersion < 1.3
    gaps = np.diff(times)
    assert abs(gaps.mean() * rate - 1) < 0.05
    assert 0.9 < gaps.std() / gaps.mean() < 1.1  # exponential gaps: coefficient of variation 1


def test_poisson_seconds_are_independent_and_zero_rate_seconds_are_empty() -> None:
    rates = np.array([10.0, 0.0, 0.0, 25.0, 0.3, 0.0])
    times = arrival_times(rates, "poisson", seed=1)
    per_second = np.bincount(times.astype(int), minlength=rates.size)
    assert per_second[1] == per_second[2] == per_second[5] == 0
    # a fresh stream per second: changing other seconds leaves second 3's arrivals as they were
    other = arrival_times(np.array([99.0, 5.0, 0.0, 25.0, 0.0, 7.0]), "poisson", seed=1)
    assert np.array_equal(times[times.astype(int) == 3], other[other.astype(int) == 3])
    assert not np.array_equal(times, arrival_times(rates, "poisson", seed=2))
    assert arrival_times(np.zeros(5)).size == 0
    assert arrival_times(np.array([])).size == 0


def test_uniform_arrivals_are_evenly_spaced_and_keep_the_total() -> None:
    times = arrival_times(np.array([4.0, 0.0, 2.0]), "uniform")
    assert times.tolist() == [0, 0.25, 0.5, 0.75, 2.0, 2.5]
    fractional = arrival_times(np.full(10, 0.5), "uniform")
    assert fractional.size == 5  # fractions carry over to the next seconds
    with pytest.raises(UsageError, match="unknown arrival process"):
        arrival_times(np.ones(3), "bursty")
    with pytest.raises(UsageError, match="finite numbers >= 0"):
        arrival_times(np.array([1.0, -2.0]))
