"""One replica of a stage on this machine: a real `mlserver start` process (`python -m mlserver_ipa.server`:
MLServer with the request limits and the token check) in its own CPU limit.

A `ReplicaProcess` owns a folder (`settings.json`, `<model>/model-settings.json` for its variant and batch,
the MLServer log), three free loopback ports, a process group, and a `CpuLimit`. It starts, waits until the
server and its model are ready, changes its cores (the CPU limit and the runtime's threads) and its variant or
batch in place through the runtime's control endpoint, and stops (SIGTERM to the group, SIGKILL if it
lingers). It knows nothing of routing or draining: `LocalCluster` does those. Its control changes carry the
pipeline's token (`$IPA_TOKEN_FILE` / `$IPA_TOKEN`, which the process inherits; without one, a token is made
for the replica in its folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from adapter.errors import UsageError
from adapter.executors.cgroups import CpuController, CpuLimit
from adapter.spec import GraphSpec, StageSpec
from mlserver_ipa.auth import TOKEN_ENV, TOKEN_FILE_ENV, bearer, load_token, write_token_file
from mlserver_ipa.settings import threads_for

RUNTIME = "mlserver_ipa.runtime.VariantRuntime"
HOST = "127.0.0.1"
LOG_FILE = "mlserver.log"
TOKEN_FILE = "token"


class ReplicaError(RuntimeError):
    """A replica could not start, be reached, or take a change; the message says which and why."""



def free_ports(n: int, host: str = HOST) -> list[int]:
    """`n` distinct ports free on `host` now (held together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """In the child before exec: own session, and SIGKILL if the cluster process dies without cleaning up."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def replica_command(folder: Path) -> list[str]:
    """The replica server of the running interpreter's environment, serving `folder`."""
    return [sys.executable, "-m", "mlserver_ipa.server", str(folder)]


def stage_template(spec: GraphSpec, stage: StageSpec, repository: Path | None) -> dict[str, Any]:
    """The stage's model-settings.json with absolute variant URIs: read from `repository` (a model-settings.json,
    or a folder holding one, e.g. what `ipa models build` wrote), or made from the variants' `model` paths."""
    if repository is None:
        missing = [v.name for v in stage.variants if v.model is None]
        if missing:
            raise UsageError(f"stage {stage.name!r}: variants {missing} have no `model` file and no built "
                             f"repository was given (build the {stage.family or 'demo'} family first)")
        base = spec.source.parent if spec.source is not None else Path.cwd()
        variants = [{"name": v.name, "uri": str((base / str(v.model)).resolve()), "accuracy": v.accuracy}
                    for v in stage.variants]
        return {"name": stage.name, "implementation": RUNTIME, "parameters": {"extra": {"variants": variants}}}
    path = repository
    if path.is_dir():
        found = [path / "model-settings.json"] if (path / "model-settings.json").exists() else []
        found = found or sorted(path.glob("*/model-settings.json"))
        if len(found) != 1:
            raise UsageError(f"stage {stage.name!r}: expected one model-settings.json in {path}, found {len(found)}")
        path = found[0]
    try:
        template: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"stage {stage.name!r}: cannot read {path}: {e}") from None
    extra = template.get("parameters", {}).get("extra", {})
    listed: list[dict[str, Any]] = extra.get("variants") or []
    for v in listed:
        v["uri"] = str((path.parent / v["uri"]).resolve())
    missing = sorted({v.name for v in stage.variants} - {v["name"] for v in listed})
    if missing:
        raise UsageError(f"stage {stage.name!r}: variants {missing} are not in {path}")
    return template


@dataclass
class ReplicaConfig:
    """What a replica runs: the part of a decision that concerns one replica."""

    variant: str
    batch: int
    cores: float
    max_batch_time_ms: float = 0.0

    @property
    def threads(self) -> int:
        return threads_for(self.cores)


@dataclass
class ReplicaProcess:
    """One `mlserver start` process serving `model` (see module doc)."""

    id: str
    model: str
    folder: Path
    template: dict[str, Any]  # the stage's model-settings.json, variant URIs absolute
    config: ReplicaConfig
    controller: CpuController
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    token_file: Path | None = None  # the pipeline's token file; None: $IPA_TOKEN_FILE / $IPA_TOKEN, else its own
    proc: asyncio.subprocess.Process | None = None
    limit: CpuLimit | None = None
    started_at: float = 0.0
    _client: httpx.AsyncClient | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def log(self) -> Path:
        return self.folder / LOG_FILE

    def log_tail(self, lines: int = 3) -> str:
        """Why it failed: the first exception line of its log, else the log's last lines."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if re.match(r"^[\w.]+(Error|Exception|Failed)\b", line)
                  and "CancelledError" not in line]
        tail = " | ".join(text[-lines:]) or "(empty log)"
        return f"{errors[0]} (log {self.log})" if errors else f"{tail} (log {self.log})"

    def _write_settings(self) -> None:
        model_dir = self.folder / self.model
        model_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "debug": False,
            "parallel_workers": 0,  # the runtime runs in the server process: one process per replica
            "host": HOST,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "metrics_dir": str(self.folder / ".metrics"),
            "environments_dir": str(self.folder / ".envs"),
            "gzip_enabled": False,  # gzip of JSON tensors costs more CPU than loopback saves
            "load_models_at_startup": True,
        }
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=2))
        ms = json.loads(json.dumps(self.template))
        ms["name"] = self.model
        extra = ms.setdefault("parameters", {}).setdefault("extra", {})
        extra.update(active=self.config.variant, batch_size=self.config.batch,
                     max_batch_time_ms=self.config.max_batch_time_ms, threads=self.config.threads)
        (model_dir / "model-settings.json").write_text(json.dumps(ms, indent=2))

    async def start(self) -> None:
        """Start the process in its CPU limit (on fresh ports); returns at once, see `wait_ready()`."""
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_settings()
        if self.limit is None:
            self.limit = self.controller.create(self.id, self.config.cores)
        else:
            self.limit.set_cores(self.config.cores)
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "MLSERVER_HTTP_PORT": str(self.http_port), "MLSERVER_GRPC_PORT": str(self.grpc_port),
               "MLSERVER_METRICS_PORT": str(self.metrics_port)}
        if self.token_file is not None:
            env[TOKEN_FILE_ENV] = str(self.token_file.resolve())
            env.pop(TOKEN_ENV, None)
        token = load_token(env)
        if token is None:  # no pipeline token: one for this replica alone
            token = write_token_file(self.folder / TOKEN_FILE)
            env[TOKEN_FILE_ENV] = str((self.folder / TOKEN_FILE).resolve())
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *replica_command(self.folder.resolve()), cwd=self.folder, env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.time()
        self.limit.attach(self.proc.pid)
        self._client = httpx.AsyncClient(base_url=self.url, timeout=10.0, headers=bearer(token))

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once the server and its model answer ready; raise `ReplicaError` if it exits or times out."""
        assert self.proc is not None and self._client is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.returncode is not None:
                raise ReplicaError(f"replica {self.id} exited with {self.proc.returncode} while starting: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                server = await self._client.get("/v2/health/ready", timeout=2.0)
                model = await self._client.get(f"/v2/models/{self.model}/ready", timeout=2.0)
                if server.status_code == 200 and model.status_code == 200:
                    return
                if server.status_code == 200:  # the server is up: did the model fail to load (it stays up)?
                    index = (await self._client.post("/v2/repository/index", json={}, timeout=2.0)).json()
                    failed = [m for m in index if m.get("name") == self.model and m.get("state") == "FAILED"]
                    if failed:
                        raise ReplicaError(f"replica {self.id}: model {self.model} failed to load: "
                                           f"{failed[0].get('reason') or self.log_tail()}")
            if time.monotonic() > deadline:
                raise ReplicaError(f"replica {self.id} not ready after {timeout_s:.0f} s: {self.log_tail()}")
            await asyncio.sleep(0.2)

    async def control(self, **changes: Any) -> dict[str, Any]:
        """POST the runtime's control endpoint (variant, batch_size, max_batch_time_ms, threads, ...)."""
        if self._client is None:
            raise ReplicaError(f"replica {self.id} is not started")
        try:
            resp = await self._client.post(f"/v2/models/{self.model}/control", json=changes, timeout=60.0)
        except httpx.HTTPError as e:
            raise ReplicaError(f"replica {self.id}: control {changes} failed: {type(e).__name__}: {e}") from e
        if resp.status_code != 200:
            raise ReplicaError(f"replica {self.id}: control {changes} answered {resp.status_code}: {resp.text[:300]}")
        state: dict[str, Any] = resp.json()
        return state

    async def control_state(self) -> dict[str, Any]:
        """GET the runtime's control endpoint: the configuration in force."""
        if self._client is None:
            raise ReplicaError(f"replica {self.id} is not started")
        resp = await self._client.get(f"/v2/models/{self.model}/control", timeout=10.0)
        resp.raise_for_status()
        state: dict[str, Any] = resp.json()
        return state

    async def reconfigure(self, target: ReplicaConfig) -> list[str]:
        """Bring the running replica to `target` in place; returns what changed (empty when nothing did)."""
        assert self.limit is not None
        now, changed = self.config, []
        body: dict[str, Any] = {}
        if target.variant != now.variant:
            body["variant"] = target.variant
            changed.append(f"variant {now.variant}->{target.variant}")
        if target.batch != now.batch:
            body["batch_size"] = target.batch
            changed.append(f"batch {now.batch}->{target.batch}")
        if target.max_batch_time_ms != now.max_batch_time_ms:
            body["max_batch_time_ms"] = target.max_batch_time_ms
        if target.threads != now.threads:
            body["threads"] = target.threads
        if target.cores > now.cores:  # more CPU first, so the new threads find it
            self.limit.set_cores(target.cores)
        if body:
            await self.control(**body)
        if target.cores != now.cores:
            self.limit.set_cores(target.cores)
            changed.append(f"cores {now.cores:g}->{target.cores:g}")
        self.config = ReplicaConfig(target.variant, target.batch, target.cores, target.max_batch_time_ms)
        return changed

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout_s`, then remove the CPU limit. Idempotent."""
        if self.proc is not None:
            pid = self.proc.pid
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                if self.proc.returncode is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), wait)
            # Children the server may have left in its group (none expected with parallel_workers 0).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.limit is not None:
            await asyncio.to_thread(self.limit.remove)
            self.limit = None
