"""What the local cluster keeps per stage: its replica processes and their phases, the decided targets and load
shares, and the router's table built from them; and the router as the cluster sees it (`RouteTarget`)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from adapter.executors.local.replica import ReplicaConfig, ReplicaProcess
from adapter.executors.local.state import ReplicaPhase
from adapter.spec import StageSpec
from mlserver_ipa.route_table import ReplicaRoute, RouteGroup, StageRoute, StageStatus


class RouteTarget(Protocol):
    """The pipeline router's table as the cluster sees it: `PipelineRouter` in process, `RouterClient` over HTTP."""

    async def set_upstreams(self, addresses: Collection[str]) -> None: ...

    async def update_stage(self, stage: str, route: StageRoute) -> StageStatus: ...

    async def stage_status(self, stage: str) -> StageStatus: ...


@dataclass
class ClusterReplica:
    process: ReplicaProcess
    phase: ReplicaPhase
    restarts: int = 0
    changing: bool = False  # the cluster is changing it in place (its liveness probes do not count meanwhile)


@dataclass
class ClusterStage:
    spec: StageSpec
    template: dict[str, Any]
    replicas: list[ClusterReplica] = field(default_factory=list)
    shares: dict[str, float] = field(default_factory=dict)
    targets: list[ReplicaConfig] = field(default_factory=list)  # the replicas last decided
    next_index: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def route(self, protocol: Literal["grpc", "rest"] = "grpc") -> StageRoute:
        """The router's table for this stage: its ready replicas grouped by variant, with the decided shares,
        called over `protocol` (the graph's `transport`)."""
        groups: dict[str, list[ReplicaRoute]] = {}
        for r in self.replicas:
            if r.phase == "ready":
                groups.setdefault(r.process.config.variant, []).append(
                    ReplicaRoute(id=r.process.id, url=r.process.url, batch_size=r.process.config.batch,
                                 grpc_port=r.process.grpc_port or None))
        return StageRoute(model=self.name, protocol=protocol, groups=[RouteGroup(variant=v, load_share=self.shares.get(v, 0.0), replicas=rs)
                                                 for v, rs in groups.items()])
