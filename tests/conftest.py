"""Shared test fixtures: free ports, small model repositories, and real `mlserver start` processes.

    server = start_mlserver(repo_dir)            # any MLServer model repository folder
    server.http_url, server.grpc_url, server.metrics_url, server.log()
    server.stop()                                # or leave it to the fixture's teardown

`start_mlserver` runs `python -m mlserver_ipa.server` (`mlserver start` with the pipeline's guards) on loopback, on free ports, in its own process group, from a run folder
beside the repository (its `settings.json` overridden with host and ports, everything else linked), waits until
every model in it is READY, and at teardown ends the process group. The repository is never modified, so one
built repository can be served by several servers at once.

`variant_repo` is a small two-variant repository for `mlserver_ipa.runtime.VariantRuntime`, built once per
session with the demo zoo (`mlserver_ipa.zoo.build_repository`) at a small resolution.

The test session has one pipeline token (`TEST_TOKEN`, in a file named by `$IPA_TOKEN_FILE`), which every
server started here inherits and `V2Client` sends with its writes, as in a pipeline `ipa up` started.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 90.0


def _session_token() -> str:
    from mlserver_ipa.auth import TOKEN_FILE_ENV, load_token, write_token_file

    if not os.environ.get(TOKEN_FILE_ENV):
        path = Path(tempfile.mkdtemp(prefix="ipa-test-token-")) / "token"
        write_token_file(path)
        os.environ[TOKEN_FILE_ENV] = str(path)
    token = load_token()
    assert token is not None
    return token


TEST_TOKEN = _session_token()
AUTH = {"authorization": f"Bearer {TEST_TOKEN}"}
"""The header writes need in this test session."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MLServer:
    """A running `mlserver start` process."""

    repo: Path
    run_dir: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    models: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def http_host(self) -> str:
        """`host:port`, the form tritonclient wants."""
        return f"127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text

    def stop(self) -> None:
        """End the whole process group: SIGTERM, then SIGKILL after a grace period."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


def _run_dir(repo: Path, run_dir: Path, settings: dict[str, Any]) -> None:
    """A folder that serves `repo` with `settings` merged into its settings.json; the rest is symlinked."""
    run_dir.mkdir(parents=True)
    base: dict[str, Any] = {}
    if (repo / "settings.json").is_file():
        base = json.loads((repo / "settings.json").read_text())
    base.setdefault("parallel_workers", 0)
    base.update(settings)
    base = {k: v for k, v in base.items() if v is not None}  # None: leave the setting out
    (run_dir / "settings.json").write_text(json.dumps(base, indent=2))
    for child in repo.iterdir():
        if child.name != "settings.json":
            (run_dir / child.name).symlink_to(child.resolve(), target_is_directory=child.is_dir())


def launch_mlserver(repo: Path, run_dir: Path, *, timeout: float = STARTUP_TIMEOUT_S,
                    environ: Mapping[str, str] | None = None, **settings: Any) -> MLServer:
    """Start a replica server (`mlserver_ipa.server`) serving `repo` and wait until all its models are READY;
    `environ`: its environment (this process's when None)."""
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    _run_dir(Path(repo), run_dir, {"host": "127.0.0.1", **ports, **settings})
    log_path = run_dir.parent / f"{run_dir.name}.log"
    env = {**(os.environ if environ is None else environ), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlserver_ipa.server", str(run_dir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=run_dir, env=env, start_new_session=True,
        )
    server = MLServer(Path(repo), run_dir, ports["http_port"], ports["grpc_port"], ports["metrics_port"],
                      process, log_path)
    expected = {json.loads(p.read_text()).get("name", p.parent.name)
                for p in Path(repo).rglob("model-settings.json")}
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise RuntimeError(f"mlserver exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            index = httpx.post(f"{server.http_url}/v2/repository/index", json={}, timeout=2).json()
            ready = {m["name"] for m in index if m.get("state") == "READY"}
            failed = [m for m in index if m.get("state") == "FAILED"]
            if failed:
                server.stop()
                raise RuntimeError(f"models failed to load: {failed}\n{server.log()[-4000:]}")
            if expected <= ready:
                server.models = sorted(ready)
                return server
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlserver not ready after {timeout:.0f} s:\n{server.log()[-4000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def start_mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MLServer]]:
    """Start servers with `start_mlserver(repo_dir, **settings)`; all are stopped when the module ends."""
    started: list[MLServer] = []

    def start(repo: Path | str, **settings: Any) -> MLServer:
        server = launch_mlserver(Path(repo), tmp_path_factory.mktemp("mlserver") / "run", **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- model repositories ------------------------------------------------------------------------------------

SMALL_RESOLUTION = 32
SMALL_VARIANTS = ("resnet18", "resnet50")


@pytest.fixture(scope="session")
def variant_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet family repository (resnet18 and resnet50 at 32x32) served by `VariantRuntime`, model `resnet`."""
    from mlserver_ipa.zoo import build_repository

    out = tmp_path_factory.mktemp("repo") / "resnet"
    build_repository("resnet", out, variants=list(SMALL_VARIANTS), resolution=SMALL_RESOLUTION)
    return out


def image_request(rows: int = 1, **parameters: Any) -> dict[str, Any]:
    """A V2 JSON body of `rows` random images at SMALL_RESOLUTION for the `input` tensor, with `parameters`."""
    import numpy as np

    x = np.random.default_rng(0).random((rows, 3, SMALL_RESOLUTION, SMALL_RESOLUTION), dtype=np.float32)
    body: dict[str, Any] = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return body


def write_model_settings(repo: Path, name: str, **extra: Any) -> Path:
    """Copy-on-write helper: a new repository folder beside `repo` whose model `name` has `extra` merged into
    `parameters.extra` (the ONNX files are linked, not copied)."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:12]
    target = repo.parent / f"{repo.name}-{digest}"
    if target.exists():
        return target
    target.mkdir()
    for child in repo.iterdir():
        if child.is_dir():
            (target / child.name).mkdir()
            for f in child.iterdir():
                if f.name == "model-settings.json":
                    settings = json.loads(f.read_text())
                    if settings.get("name", child.name) == name:
                        settings.setdefault("parameters", {}).setdefault("extra", {}).update(extra)
                    (target / child.name / f.name).write_text(json.dumps(settings, indent=2))
                else:
                    (target / child.name / f.name).symlink_to(f.resolve())
        else:
            (target / child.name).symlink_to(child.resolve())
    return target
