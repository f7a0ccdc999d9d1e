"""The readable state of a local cluster: what runs where, written to a JSON file for `ipa status`.

`LocalCluster.state()` returns a `ClusterState`; the cluster also rewrites it, atomically, to
`<IPA_HOME or ./.ipa>/<pipeline>/state.json` whenever something changes (and every second while it runs), so
another process can read it with `read_state()` without talking to the cluster. Beside it,
`prometheus-targets.json` lists the metrics endpoints for a Prometheus server (`file_sd_configs`). A state file whose owner
process is gone is stale: the cluster was killed before it could clean up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

ReplicaPhase = Literal["starting", "ready", "draining", "stopping", "crashed", "unresponsive", "failed"]

STATE_FILE = "state.json"
TARGETS_FILE = "prometheus-targets.json"


def ipa_home() -> Path:
    """Where local clusters keep their replica folders and state files: `$IPA_HOME`, else `./.ipa`."""
    return Path(os.environ.get("IPA_HOME", ".ipa")).resolve()  # replicas run in their own folders: never relative


class ReplicaState(BaseModel):
    """One replica process of a stage."""

    id: str
    phase: ReplicaPhase
    pid: int | None = None
    url: str = Field(description="base URL of its V2 REST server")
    http_port: int
    grpc_port: int
    metrics_port: int
    metrics_url: str = Field(description="its Prometheus endpoint")
    variant: str
    batch: int
    cores: float = Field(description="cores the CPU limit gives it")
    threads: int = Field(description="onnxruntime threads the runtime uses")
    cpu_limit: str = Field(description="cgroup2, cgroup1 or affinity")
    cgroup: str | None = Field(default=None, description="its cgroup directory, when limited by a cgroup")
    ready: bool
    outstanding: int = Field(0, description="requests the router has in flight on it")
    started_at: float = Field(description="unix time the process started")
    restarts: int = Field(0, description="how many crashed replicas this one replaces in a row")
    log: str = Field(description="its MLServer log file")


class StageState(BaseModel):
    name: str
    model: str = Field(description="model name the replicas serve")
    load_shares: dict[str, float] = Field(default_factory=dict, description="decided share of load per variant")
    replicas: list[ReplicaState] = Field(default_factory=list)

    @property
    def cores(self) -> float:
        return sum(r.cores for r in self.replicas if r.phase not in ("crashed", "unresponsive"))


class ClusterState(BaseModel):
    """A snapshot of a local cluster."""

    pipeline: str
    owner_pid: int = Field(description="the process running the cluster")
    updated_at: float = Field(description="unix time of the snapshot")
    cpu_limit: str
    router_url: str | None = None
    stages: list[StageState] = Field(default_factory=list)
    crashes: int = Field(0, description="replica processes that exited on their own since start")
    unresponsive: int = Field(0, description="replicas killed and replaced since start because they stopped "
                                             "answering their health or metrics route")
    last_apply: list[str] = Field(default_factory=list, description="steps of the last apply that took effect")
    last_failures: list[str] = Field(default_factory=list, description="steps of the last apply that did not")

    @property
    def cores(self) -> float:
        return sum(s.cores for s in self.stages)

    @property
    def stale(self) -> bool:
        """True when the owner process is gone (the state file outlived the cluster)."""
        try:
            os.kill(self.owner_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def prometheus_targets(state: ClusterState) -> list[dict[str, object]]:
    """Scrape targets in Prometheus' file service-discovery format (`file_sd_configs`): every ready replica's
    metrics port (labels pipeline, stage, replica) and the router. Path `/metrics` on each."""
    groups: list[dict[str, object]] = []
    for s in state.stages:
        for r in s.replicas:
            if r.ready:
                groups.append({"targets": [f"127.0.0.1:{r.metrics_port}"],
                               "labels": {"pipeline": state.pipeline, "stage": s.name, "replica": r.id}})
    if state.router_url:
        groups.append({"targets": [state.router_url.split("://", 1)[-1].rstrip("/")],
                       "labels": {"pipeline": state.pipeline, "stage": "", "replica": "router"}})
    return groups


def state_path(pipeline: str, home: Path | None = None) -> Path:
    return (home if home is not None else ipa_home()) / pipeline / STATE_FILE


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_state(path: Path, state: ClusterState) -> None:
    write_text_atomic(path, state.model_dump_json(indent=2))


def read_state(path: Path) -> ClusterState:
    """Read a state file; raises `FileNotFoundError` when there is none, `ValueError` when it is not one."""
    return ClusterState.model_validate_json(path.read_text())


def find_states(home: Path | None = None) -> list[Path]:
    """State files of all local clusters under `home` (default: `ipa_home()`)."""
    root = home if home is not None else ipa_home()
    return sorted(root.glob(f"*/{STATE_FILE}"))
