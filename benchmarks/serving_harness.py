"""Processes and load for the serving benchmarks: `mlserver start` pinned to CPUs, a light HTTP load client,
and a process's CPU time. Used by `benchmarks/runtime.py`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from mlserver_ipa.auth import TOKEN_FILE_ENV, write_token_file

BENCH_DIR = Path(__file__).resolve().parent


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, printed beside every figure a benchmark measures."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def model_repository(models: Path, variant: str, out: Path, *, batch: int = 1,
                     max_batch_time_ms: float | None = None) -> tuple[Path, str]:
    """A copy of the demo family folder `models` in `out` with `variant` active at `batch` (and the batch window
    when given), and its model name."""
    import shutil

    def link_or_copy(src: str, dst: str) -> None:  # the weights are linked (a copy was 625 MB per run)
        if src.endswith(".json"):
            shutil.copy2(src, dst)  # rewritten below: never through a link into the family's folder
        else:
            os.symlink(os.path.abspath(src), dst)

    shutil.copytree(models, out, symlinks=True, ignore=shutil.ignore_patterns("settings.json"),
                    copy_function=link_or_copy)
    settings_file = next(out.rglob("model-settings.json"))
    settings = json.loads(settings_file.read_text())
    extra = {"active": variant, "batch_size": batch}
    if max_batch_time_ms is not None:
        extra["max_batch_time_ms"] = max_batch_time_ms
    settings["parameters"]["extra"].update(extra)
    settings_file.write_text(json.dumps(settings))
    return out, settings.get("name", settings_file.parent.name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`mlserver start` on loopback, free ports, own process group, pinned to `cpus`."""

    def __init__(self, repo: Path, cpus: set[int] | None, log: Path, command: list[str] | None = None) -> None:
        """`command`: the server to start (default `mlserver start`), given the repository folder."""
        repo = repo.resolve()
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        settings = {"parallel_workers": 0, "host": "127.0.0.1", "http_port": self.http_port,
                    "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        (repo / "settings.json").write_text(json.dumps(settings))
        token_file = log.with_suffix(".token")
        self.token = write_token_file(token_file)  # the runtime's control changes need one
        env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_FILE_ENV: str(token_file),
               "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")])}

        def child_setup() -> None:
            os.setsid()
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [*(command or [str(Path(sys.executable).parent / "mlserver"), "start"]), str(repo)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=repo, preexec_fn=child_setup,
            )
        self.url = f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, models: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                index = httpx.post(f"{self.url}/v2/repository/index", json={}, timeout=2).json()
                if {m["name"] for m in index if m.get("state") == "READY"} >= set(models):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"mlserver not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class LoadClient:
    """The load generator's HTTP side: aiohttp on uvloop, bodies encoded once, answers read but not decoded.

    (The project's `V2Client` decodes every answer into numpy; here the client must cost as little CPU as
    possible so that it measures the servers, not itself.)
    """

    def __init__(self, url: str, connections: int, timeout: float) -> None:
        self._session = aiohttp.ClientSession(
            base_url=url, connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def post(self, path: str, body: bytes) -> int:
        """HTTP status of one inference request; 0 when no answer came."""
        try:
            async with self._session.post(path, data=body, headers={"content-type": "application/json"}) as r:
                await r.read()
                return r.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
