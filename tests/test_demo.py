"""`ipa demo` end to end in a short configuration: a small ResNet pipeline (two variants served at 32x32) comes
up, 30 s of compressed bursty load go through it with a decision every 3 s, the same arrivals are simulated, the
report folder is written and the real-vs-simulated table printed; nothing is left running. Ctrl-C (SIGINT) in
the middle of the load stops everything too."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SMALL_VARIANTS

from adapter.executors.cgroups import detect_cpu_controller
from adapter.live.demo import DemoSettings

ROOT = Path(__file__).resolve().parents[1]
IPA = str(Path(sys.executable).parent / "ipa")


def small_graph(path: Path) -> Path:
    """ResNet-18/50 on 0.25-1 core, at most 2 replicas, with the measured profile (at 64x64: the 32x32 replicas
    are faster than it says)."""
    graph = {
        "name": "demo-small", "slo_ms": 400, "budget_cores": 2, "interval_s": 30, "accuracy": "mean",
        "objective": {"alpha": 10, "beta": 0.5, "delta": 0.001}, "cpu_step": 0.25,
        "stages": [{"name": "classifier", "family": "resnet", "profile": str(ROOT / "profiles" / "resnet.csv"),
                    "batch_sizes": [1, 2], "cores": [0.25, 0.5, 1], "max_replicas": 2, "max_batch_time_ms": 20,
                    "variants": [{"name": v, "accuracy": a} for v, a in zip(SMALL_VARIANTS, (69.76, 76.13),
                                                                             strict=True)]}]}
    path.write_text(json.dumps(graph))
    return path


def demo_args(tmp: Path, repo: Path, duration: int) -> list[str]:
    return [IPA, "demo", "--graph", str(small_graph(tmp / "graph.yaml")), "--repository", f"classifier={repo}",
            "--duration", str(duration), "--interval", "3", "--peak-rps", "24", "--out", str(tmp / "report"),
            "--home", str(tmp / "ipa")]


def left_running(folder: Path) -> list[str]:
    """Processes whose command line names `folder` (replicas run from the demo's home, `ipa load` reads the trace
    from its report folder: both under the test's folder)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(folder) in line and "ps -ww" not in line]


def test_the_demo_reports_live_beside_simulated(variant_repo: Path, tmp_path: Path) -> None:
    done = subprocess.run(demo_args(tmp_path, variant_repo, 30), capture_output=True, text=True, timeout=150,
                          cwd=tmp_path)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr

    report = tmp_path / "report"
    for name in ("summary.csv", "summary.md", "overview.png", "load.png", "accuracy.png", "cores.png",
                 "latency.png", "tradeoff.png", "real.csv", "simulated.csv", "replayed.csv", "trace.txt",
                 "requests.csv", "requests.json", "decisions.jsonl", "meta.json"):
        assert (report / name).is_file(), name
    rows = {r["policy"]: r for r in csv.DictReader((report / "summary.csv").open())}
    assert list(rows) == ["real", "simulated", "replayed"]
    assert int(rows["real"]["requests"]) == int(rows["simulated"]["requests"]) > 100  # the very same arrivals
    assert float(rows["real"]["cores_mean"]) > 0 and float(rows["simulated"]["cores_mean"]) > 0
    real = list(csv.DictReader((report / "real.csv").open()))
    assert len(real) == 30 and {"load", "served", "dropped", "p99_ms", "accuracy", "cores"} <= set(real[0])
    served = sum(float(r["served"]) for r in real)
    assert served > 0.5 * sum(float(r["load"]) for r in real), "the live pipeline answered most requests"
    decisions = [json.loads(line) for line in (report / "decisions.jsonl").read_text().splitlines()]
    # What the loop decided to do, not how fast this machine let it: it decided on its interval (3 s), and
    # never sooner than that.
    meta = json.loads((report / "meta.json").read_text())
    assert meta["interval_s"] == 3
    # the simulated run decided with the live adapter's settings (the demo's hysteresis, not the policy default)
    assert meta["policy_settings"]["scale_down_intervals"] == DemoSettings.scale_down_intervals == 2
    intervals = [d["at"] for d in decisions if d["trigger"] == "interval"]
    assert intervals, [d["trigger"] for d in decisions]
    assert all(later - earlier >= 3.0 - 0.05 for earlier, later in zip(intervals, intervals[1:], strict=False))

    assert "| real |" in out and "| simulated |" in out and "| replayed |" in out, out
    assert "p99 latency" in out and "cores (mean)" in out and f"report: {report}" in out, out
    assert not left_running(tmp_path), left_running(tmp_path)
    assert not (tmp_path / "ipa" / "demo-small" / "state.json").exists()


def test_ctrl_c_stops_the_demo_and_leaves_nothing(variant_repo: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(demo_args(tmp_path, variant_repo, 60), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("V2 endpoint" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        time.sleep(3)  # the load is running
        running = left_running(tmp_path)
        assert any(" load " in line for line in running) and any("mlserver" in line for line in running), running
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "nothing left running" in rest, rest
    assert not left_running(tmp_path), left_running(tmp_path)
    controller = detect_cpu_controller()
    if controller.parent is not None:
        assert not list(controller.parent.glob(f"ipa-{proc.pid}-*")), "the demo's cgroups were removed"
    assert not (tmp_path / "report" / "summary.csv").exists()
