"""`ipa demo runtime` on a small family: it serves, bursts, switches, prints its table and stops the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import SMALL_VARIANTS


def test_demo_runs_and_reports(variant_repo: Path, tmp_path: Path) -> None:
    ipa = Path(sys.executable).parent / "ipa"
    done = subprocess.run([str(ipa), "demo", "runtime", "--models", str(variant_repo), "--requests", "60"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for text in ("interactive", "standard", "background", "batch sizes seen",
                 f"{SMALL_VARIANTS[0]} -> {SMALL_VARIANTS[1]}", "0 failed requests during the switch",
                 "errors other than deadline (504) and overload (503): 0"):
        assert text in out, out
    started = [line for line in out.splitlines() if line.startswith("starting mlserver")]
    assert started, out
    running = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "ipa-demo-" not in running  # the demo stopped its server (its run folder is named ipa-demo-*)
