"""`ipa experiment` and `ipa report` end to end through the real CLI, and the one-line errors of bad inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from adapter.cli import main
from adapter.sim.report import read_frame
from adapter.sim.summary import SUMMARY_COLUMNS, read_summary

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


def test_scores_give_late_and_dropped_requests_no_accuracy(tmp_path: Path) -> None:
    """Two runs of 30 s at 10 requests/s, same accuracy: one answers all in time on 2 cores, the other drops
    half on 1 core. Effective accuracy halves, and the realised objective says the cheaper run lost."""
    from adapter.sim.summary import summarize
    from adapter.spec import load_spec

    spec = load_spec(RESNET)  # alpha 10, beta 0.5
    n = 30  # one 30 s interval of the graph
    base = {"t": np.arange(n, dtype=float), "load": np.full(n, 10.0), "predicted": np.full(n, 10.0),
            "accuracy": np.full(n, 76.13), "batch": np.ones(n)}
    good = {**base, "served": np.full(n, 10.0), "dropped": np.zeros(n), "slo_violations": np.zeros(n),
            "ontime_acc": np.full(n, 10 * 0.7613), "cores": np.full(n, 2.0)}
    bad = {**base, "served": np.full(n, 5.0), "dropped": np.full(n, 5.0), "slo_violations": np.full(n, 5.0),
           "ontime_acc": np.full(n, 5 * 0.7613), "cores": np.full(n, 1.0)}
    g, b = summarize("good", good, spec), summarize("bad", bad, spec)
    assert g.accuracy == b.accuracy == pytest.approx(76.13)  # the accuracy of what was answered hides the drops
    assert g.effective_accuracy == pytest.approx(76.13) and b.effective_accuracy == pytest.approx(76.13 / 2)
    assert (g.slo_attainment_pct, b.slo_attainment_pct) == (100.0, 50.0)
    o = spec.objective
    assert b.objective == pytest.approx(o.alpha * 0.7613 / 2 - o.beta * 1.0 - o.delta)
    assert g.objective > b.objective
    assert g.coverage_pct == 100.0  # the interval's peak (10 rps) was planned for
    older = tmp_path / "summary.csv"  # a table written before the new columns: they read as nan
    older.write_text("policy,requests,accuracy,norm_accuracy,cores_mean,cores_peak,p99_ms,slo_violation_pct,"
                     "drop_pct,objective\nx,10,70,50,1,1,100,1,0,6\n")
    assert math.isnan(read_summary(older)[0].effective_accuracy)
