"""`ipa experiment` and `ipa report` end to end through the real CLI, and the one-line errors of bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.sim.report import SUMMARY_COLUMNS, read_frame, read_summary

ROOT = Path(__file__).resolve().parents[1]
RESNET = ROOT / "tests" / "data" / "sim" / "resnet.yaml"  # a frozen copy of the shipped graph and profile


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ipa experiment: error:"), err
    for f in fragments:
        assert f in lines[0], err


def test_small_experiment_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code, stdout, err = run(
        ["experiment", str(RESNET), "--trace", "synthetic:bursty", "--length", "90", "--scale", "0.5",
         "--policies", "static,joint", "--predictor", "reactive", "--seed", "3", "--quiet", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "| static |" in stdout and "| joint |" in stdout
    for name in ("static.csv", "joint.csv", "summary.csv", "summary.md", "overview.png", "load.png",
                 "accuracy.png", "cores.png", "latency.png", "tradeoff.png", "meta.json"):
        assert (out / name).exists(), name
    frame = read_frame(out / "joint.csv")
    assert len(frame["t"]) == 90
    assert (frame["served"] + frame["dropped"] == frame["load"]).all()
    summaries = read_summary(out / "summary.csv")
    assert [s.policy for s in summaries] == ["static", "joint"]
    with open(out / "summary.csv") as f:
        assert tuple(next(csv.reader(f))) == SUMMARY_COLUMNS
    meta = json.loads((out / "meta.json").read_text())
    assert meta["policies"] == ["static", "joint"] and meta["seed"] == 3

    (out / "overview.png").unlink()
    (out / "summary.md").unlink()
    code, stdout, err = run(["report", str(out)], capsys)
    assert code == 0, err
    assert (out / "overview.png").exists() and (out / "summary.md").exists()
    assert "| joint |" in (out / "summary.md").read_text()

    # a published folder keeps only the table and the plots: the table can still be drawn again
    for name in ("static.csv", "joint.csv", "summary.md"):
        (out / name).unlink()
    code, stdout, err = run(["report", str(out)], capsys)
    assert code == 0, err
    assert "| static |" in (out / "summary.md").read_text()


def test_unknown_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["experiment", str(RESNET), "--trace", "synthetic:bursty", "--length", "30",
                        "--policies", "static,best-ever", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "best-ever", "known:")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content,fragment",
    [("", "empty"), ("3 4 five 6\n", "five")],
    ids=["empty", "non-numeric"],
)
def test_bad_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text(content)
    code, _, err = run(["experiment", str(RESNET), "--trace", str(trace), "--policies", "static",
                        "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "trace.txt", fragment)


def test_window_past_the_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text(" ".join(["5"] * 100) + "\n")
    code, _, err = run(["experiment", str(RESNET), "--trace", str(trace), "--start", "150", "--length", "60",
                        "--policies", "static", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "trace.txt")


def test_all_zero_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "zeros.txt"
    trace.write_text(" ".join(["0"] * 50) + "\n")
    code, _, err = run(["experiment", str(RESNET), "--trace", str(trace), "--policies", "static",
                        "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "no requests")


def test_missing_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["experiment", str(tmp_path / "nope.yaml"), "--trace", "synthetic:bursty",
                        "--policies", "static", "--out", str(tmp_path / "r")], capsys)
    one_line_error(code, err, "nope.yaml")


def test_report_on_a_folder_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["report", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip().startswith("ipa report: error:") and len(err.strip().splitlines()) == 1
