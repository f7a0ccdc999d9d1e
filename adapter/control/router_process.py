"""The pipeline router as a process of its own (`python -m mlserver_ipa.router`), as Seldon's executor is on
Kubernetes: its event loop serves requests only, never the adapter's decisions, the cluster's process
management or a load generator, so a burst cannot starve the clock that stamps arrivals or the loop that sheds.

    async with RouterProcess("video", ["detector", "classifier"], token_file=path, log=folder / "router.log") as r:
        r.url          # http://127.0.0.1:<port>: V2 endpoint, /metrics, /router
        r.grpc_address # 127.0.0.1:<grpc_port>: the same pipeline over V2 gRPC (a free port unless given)
        r.client       # a RouterClient: the table the local cluster writes (with the pipeline's token)

CPU: the router runs at a higher scheduling priority than the replicas (`nice` `NICE`, and its session's
autogroup too, when this process may set them), so under contention it gets its share of the machine before
theirs; the replicas stay bounded by their own CPU limits. It dies with this process (PR_SET_PDEATHSIG) and is stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from adapter.errors import UsageError
from mlserver_ipa.auth import TOKEN_FILE_ENV
from mlserver_ipa.router import RouterClient

NICE = -5
"""The router's niceness (replicas run at 0): its reserved share under contention."""
START_TIMEOUT_S = 60.0


def detach_at_router_priority() -> None:
    """In a child before its exec: a session of its own that dies with this process, at the router's priority
    (for the router, and for a load generator that stands in for clients on other machines)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    with contextlib.suppress(OSError):
        os.nice(NICE)
    # setsid put the router in an autogroup of its own, and across autogroups the kernel weighs the group's
    # nice, not the process's: without this its priority held only against its own threads.
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(NICE))


class RouterProcess:
    """`python -m mlserver_ipa.router` serving one pipeline (see module doc)."""

    def __init__(self, pipeline: str, stages: Sequence[str], *, host: str = "127.0.0.1", port: int = 8080,
                 grpc_port: int = 0, token_file: Path, log: Path, budget_window_s: float = 30.0,
                 require_upstreams: bool = False) -> None:
        """`budget_window_s`: the window of the arrival budgets it exports (the adapter's interval);
        `require_upstreams`: it takes no route naming a replica until the executor sent the replicas it started
        (`--require-upstreams`; off for a table written by hand, as benchmarks do)."""
        self.pipeline, self.stages = pipeline, list(stages)
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.budget_window_s = budget_window_s
        self.require_upstreams = require_upstreams
        self.token_file, self.log = token_file, log
        self.proc: asyncio.subprocess.Process | None = None
        self.client: RouterClient | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    async def __aenter__(self) -> RouterProcess:
        from adapter.executors.local.replica import free_ports

        free = iter(free_ports(2, self.host))  # distinct, for whichever is 0
        if self.port == 0:
            self.port = next(free)
        if self.grpc_port == 0:
            self.grpc_port = next(free)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, TOKEN_FILE_ENV: str(self.token_file), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mlserver_ipa.router", "--pipeline", self.pipeline, "--stages",
                ",".join(self.stages), "--host", self.host, "--port", str(self.port),
                "--grpc-port", str(self.grpc_port), "--budget-window-s", f"{self.budget_window_s:g}",
                *(["--require-upstreams"] if self.require_upstreams else []), env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=detach_at_router_priority)
        try:
            await self._wait_live()
        except BaseException:
            await self.stop()
            raise
        self.client = RouterClient(self.url, token=self.token_file.read_text().strip())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _wait_live(self) -> None:
        assert self.proc is not None
        until = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1.0) as c:
            while time.monotonic() < until:
                if self.proc.returncode is not None:
                    tail = self.log.read_text(errors="replace")[-600:]
                    raise UsageError(f"the router exited with {self.proc.returncode} (is port {self.port} in use? "
                                     f"--port):\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(f"{self.url}/v2/health/live")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise UsageError(f"the router did not answer on {self.url} within {START_TIMEOUT_S:.0f} s (log: {self.log})")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after `timeout_s`. Idempotent."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
