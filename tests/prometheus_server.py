"""A real Prometheus server for tests: Debian's `prometheus` binary on a free loopback port, in a temp folder.

    server = start_prometheus(folder, targets_file)   # file_sd on the cluster's prometheus-targets.json
    server.url; server.wait_for('ipa_router_requests_total'); server.stop()

Scrapes every second. `PROMETHEUS` is the binary (None when it is not installed: `requires_prometheus`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import free_port

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
MISSING = "the `prometheus` binary is not installed (Debian package `prometheus`; .ci/run installs it)"
requires_prometheus = pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"), reason=MISSING)
"""Skips a test on a developer's machine without Prometheus; in CI (`$CI` set) the test runs and fails, saying
what is missing: a Prometheus test that silently skipped there would pass for the wrong reason."""

CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ipa
    scrape_interval: 1s
    scrape_timeout: 900ms
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def query(self, promql: str) -> list[dict]:
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        resp.raise_for_status()
        result: list[dict] = resp.json()["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout_s: float = 60.0, *, at_least: float | None = None) -> None:
        """Wait until `promql` has a result (whose first value is >= `at_least`, when given)."""
        deadline = time.monotonic() + timeout_s
        last: list[dict] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                last = self.query(promql)
            except httpx.HTTPError:
                last = []
            if last and (at_least is None or float(last[0]["value"][1]) >= at_least):
                return
            time.sleep(0.3)
        raise AssertionError(f"no {promql} in Prometheus after {timeout_s} s (last: {last}): "
                             f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_prometheus(folder: Path, targets: Path) -> PrometheusServer:
    """Start Prometheus scraping the file_sd `targets` every second; returns once it is ready."""
    assert PROMETHEUS is not None, MISSING
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(CONFIG.format(targets=targets))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus not ready after 60 s: {log.read_text()[-2000:]}")
