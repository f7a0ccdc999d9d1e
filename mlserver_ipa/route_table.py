"""The pipeline router's table: which replicas serve each stage, how a stage's load is split, and where the
next request of a stage goes.

The executor writes a `StageRoute` per stage (in process, or as the body of `PUT /router/stages/<stage>`):
replica groups, one per variant in use, each with its decided `load_share` and its *ready* replicas. A
request first draws a group with probability proportional to its share (groups with no replica left are
skipped and the others renormalised), then goes to the replica of that group with the fewest outstanding
requests. Outstanding counts are kept per replica id, also for replicas just removed from the table, so the
executor can wait until a replica it took out has finished its last request before stopping it.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ReplicaRoute(BaseModel):
    """One ready replica of a stage."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="unique over the pipeline, e.g. `detector-3`")
    url: str = Field(min_length=1, description="base URL of its V2 REST server, e.g. http://127.0.0.1:8081")


class RouteGroup(BaseModel):
    """Replicas of one variant and the fraction of the stage's load they get."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    load_share: float = Field(1.0, ge=0, description="relative weight; shares need not sum to 1")
    replicas: list[ReplicaRoute] = Field(default_factory=list)


class StageRoute(BaseModel):
    """Body of `PUT /router/stages/<stage>`: the whole routing of one stage, replacing the previous one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="model name served by the replicas (`/v2/models/<model>`)")
    groups: list[RouteGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_replicas(self) -> StageRoute:
        ids = [r.id for g in self.groups for r in g.replicas]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"replica ids repeat: {', '.join(repeated)}")
        return self

    @property
    def replica_ids(self) -> set[str]:
        return {r.id for g in self.groups for r in g.replicas}


class ReplicaStatus(BaseModel):
    id: str
    url: str | None = Field(default=None, description="None once the replica left the table (still draining)")
    variant: str | None = None
    outstanding: int


class StageStatus(BaseModel):
    """What the router knows of a stage: its route and the requests in flight on each replica."""

    name: str
    model: str | None
    ready: bool = Field(description="at least one replica to send requests to")
    replicas: list[ReplicaStatus]


class RouterStatus(BaseModel):
    pipeline: str
    ready: bool
    stages: list[StageStatus]


@dataclass
class Pick:
    """Where one request of a stage goes."""

    replica: ReplicaRoute
    variant: str


@dataclass
class RouteTable:
    """The routes of all stages and the outstanding requests of every replica (plain state, no I/O)."""

    stages: list[str]
    routes: dict[str, StageRoute] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)
    stage_of: dict[str, str] = field(default_factory=dict)  # replica id -> stage, while it has requests
    rng: random.Random = field(default_factory=random.Random)

    def set_route(self, stage: str, route: StageRoute) -> None:
        if stage not in self.stages:
            raise KeyError(stage)
        self.routes[stage] = route
        for rid in route.replica_ids:
            self.outstanding.setdefault(rid, 0)
            self.stage_of[rid] = stage
        self._forget_idle()

    def _forget_idle(self) -> None:
        routed = set().union(*(r.replica_ids for r in self.routes.values())) if self.routes else set()
        for rid in [r for r, n in self.outstanding.items() if n <= 0 and r not in routed]:
            del self.outstanding[rid]
            self.stage_of.pop(rid, None)

    def ready(self, stage: str) -> bool:
        route = self.routes.get(stage)
        return route is not None and any(g.replicas for g in route.groups)

    def pick(self, stage: str, exclude: Collection[str] = ()) -> Pick | None:
        """The replica for the next request of `stage`, avoiding `exclude` (replicas that just failed it)."""
        route = self.routes.get(stage)
        if route is None:
            return None
        groups = [(g, [r for r in g.replicas if r.id not in exclude]) for g in route.groups]
        groups = [(g, rs) for g, rs in groups if rs]
        if not groups:
            return None
        weights = [g.load_share for g, _ in groups]
        if sum(weights) <= 0:  # no shares decided: spread by replica count
            weights = [float(len(rs)) for _, rs in groups]
        group, replicas = self.rng.choices(groups, weights=weights)[0]
        fewest = min(self.outstanding.get(r.id, 0) for r in replicas)
        best = [r for r in replicas if self.outstanding.get(r.id, 0) == fewest]
        return Pick(self.rng.choice(best), group.variant)

    def begin(self, stage: str, replica_id: str) -> None:
        self.outstanding[replica_id] = self.outstanding.get(replica_id, 0) + 1
        self.stage_of[replica_id] = stage

    def end(self, replica_id: str) -> None:
        left = self.outstanding.get(replica_id, 1) - 1
        self.outstanding[replica_id] = left
        if left <= 0:
            self._forget_idle()

    def stage_status(self, stage: str) -> StageStatus:
        if stage not in self.stages:
            raise KeyError(stage)
        route = self.routes.get(stage)
        rows: list[ReplicaStatus] = []
        if route is not None:
            for g in route.groups:
                for r in g.replicas:
                    rows.append(ReplicaStatus(id=r.id, url=r.url, variant=g.variant,
                                              outstanding=self.outstanding.get(r.id, 0)))
        # Replicas taken out of this stage that still finish requests (the executor waits for them to drain).
        routed = {row.id for row in rows}
        for rid, n in sorted(self.outstanding.items()):
            if rid not in routed and n > 0 and self.stage_of.get(rid) == stage:
                rows.append(ReplicaStatus(id=rid, outstanding=n))
        return StageStatus(name=stage, model=route.model if route else None, ready=self.ready(stage),
                           replicas=rows)

    def status(self, pipeline: str) -> RouterStatus:
        stages = [self.stage_status(s) for s in self.stages]
        return RouterStatus(pipeline=pipeline, ready=all(s.ready for s in stages), stages=stages)
