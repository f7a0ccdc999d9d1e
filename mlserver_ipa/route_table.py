"""The pipeline router's table: which replicas serve each stage, how a stage's load is split, and where the
next request of a stage goes.

The executor writes a `StageRoute` per stage (in process, or as the body of `PUT /router/stages/<stage>`):
replica groups, one per variant in use, each with its decided `load_share` and its *ready* replicas. A
request first draws a group with probability proportional to its share (groups with no replica left are
skipped and the others renormalised), then goes to the replica of that group with the fewest outstanding
requests. Outstanding counts are kept per replica id, also for replicas just removed from the table, so the
executor can wait until a replica it took out has finished its last request before stopping it.

What a route may name is checked when it is set (`Upstreams`): replica URLs are `http(s)://host:port` with
nothing after the port, on an allowed host (loopback unless told otherwise) and, when the executor says which
replicas it started, one of their addresses; model, variant and replica names have no path characters. A
route that does not pass is refused whole (`ValueError`; `ForbiddenUpstream` for a well-formed URL the router may
not send to), the previous one stays. A replica's `grpc_port` (where the router calls it over V2 gRPC, when the
stage's `protocol` is `grpc`) is checked as the address `host:grpc_port`, by the same rules. The executor sends that list (`UpstreamList`, `PUT /router/upstreams` when the
router runs as its own process) before every route it writes; until it first does, any port of an allowed host
passes, unless the router was started to require the list (`Upstreams.required`, the router's
`--require-upstreams`, as `ipa up` starts it): then a route naming any replica is refused until the list comes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Model, variant and replica names: letters, digits, `_`, `.`, `-`; never a path (`../admin?x=`)."""
MAX_GROUPS = 64
MAX_REPLICAS = 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def replica_address(url: str) -> str:
    """`host:port` of a replica base URL `http(s)://host:port`; `ValueError` for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"replica url {url!r}: scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"replica url {url!r}: no user or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"replica url {url!r}: only scheme, host and port (no path, query or fragment)")
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"replica url {url!r}: {e}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"replica url {url!r}: needs a host and a port")
    return f"{parts.hostname}:{port}"


class ForbiddenUpstream(ValueError):
    """A well-formed replica URL the router may not send to: another host, or no replica the cluster started."""


ADDRESS_PATTERN = r"^[A-Za-z0-9._-]{1,253}:[0-9]{1,5}$"


class UpstreamList(BaseModel):
    """Body of `PUT /router/upstreams`: the `host:port` of every replica the cluster started (the allow-list)."""

    model_config = ConfigDict(extra="forbid")

    addresses: list[str] = Field(max_length=8 * MAX_REPLICAS,
                                 description="e.g. `127.0.0.1:8081`; replaces the previous list")

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        bad = [a for a in addresses if not re.fullmatch(ADDRESS_PATTERN, a) or not 0 < int(a.rsplit(":", 1)[1]) < 65536]
        if bad:
            raise ValueError(f"not host:port: {', '.join(repr(a) for a in bad[:5])}")
        return addresses


@dataclass
class Upstreams:
    """Where the router may send a stage's requests (see module doc)."""

    hosts: Collection[str] = LOOPBACK_HOSTS
    """hosts replica URLs may name"""
    addresses: Callable[[], Collection[str]] | None = None
    """the `host:port` of every replica the executor started (None: not sent yet)"""
    required: bool = False
    """while `addresses` is None, refuse every replica (True) or take any port of an allowed host (False)"""

    def check(self, url: str) -> None:
        address = replica_address(url)
        host = address.rsplit(":", 1)[0]
        if host not in self.hosts:
            raise ForbiddenUpstream(f"replica url {url!r}: host {host!r} is not one the router sends to "
                             f"({', '.join(sorted(self.hosts))})")
        if self.addresses is None and self.required:
            raise ForbiddenUpstream(f"replica url {url!r}: the router takes no replica until the executor has sent "
                                    "the replicas it started (PUT /router/upstreams)")
        if self.addresses is not None and address not in set(self.addresses()):
            raise ForbiddenUpstream(f"replica url {url!r}: {address} is not a replica the cluster started")


class ReplicaRoute(BaseModel):
    """One ready replica of a stage."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=NAME_PATTERN, description="unique over the pipeline, e.g. `detector-3`")
    url: str = Field(max_length=256, description="base URL of its V2 REST server, e.g. http://127.0.0.1:8081")
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="its batch size: the router sends it "
                                   "at most a few batches' worth at once (None: a default number of requests)")
    grpc_port: int | None = Field(default=None, ge=1, le=65535, description="its V2 gRPC port, on the url's host "
                                  "(None: the router calls it over REST)")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        replica_address(url)
        return url.rstrip("/")

    @property
    def grpc_address(self) -> str | None:
        """`host:port` of its gRPC server, or None."""
        if self.grpc_port is None:
            return None
        return f"{replica_address(self.url).rsplit(':', 1)[0]}:{self.grpc_port}"


class RouteGroup(BaseModel):
    """Replicas of one variant and the fraction of the stage's load they get."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    variant: str = Field(pattern=NAME_PATTERN)
    load_share: float = Field(1.0, ge=0, le=1e6, description="relative weight; shares need not sum to 1")
    replicas: list[ReplicaRoute] = Field(default_factory=list, max_length=MAX_REPLICAS)


class StageRoute(BaseModel):
    """Body of `PUT /router/stages/<stage>`: the whole routing of one stage, replacing the previous one."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=NAME_PATTERN, description="model name served by the replicas (`/v2/models/<model>`)")
    protocol: Literal["grpc", "rest"] = Field(default="grpc", description="how the router calls the replicas: V2 gRPC with "
                                              "raw tensor contents (replicas without a `grpc_port` over REST), or "
                                              "V2 REST/JSON")
    groups: list[RouteGroup] = Field(default_factory=list, max_length=MAX_GROUPS)

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
    waiting: int = Field(default=0, description="requests waiting at the router for a free slot on a replica")


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
    upstreams: Upstreams = field(default_factory=Upstreams)

    def set_route(self, stage: str, route: StageRoute) -> None:
        """Replace the route of `stage`; `KeyError` for another stage, `ValueError` for a replica the router
        may not send to (the previous route stays)."""
        if stage not in self.stages:
            raise KeyError(stage)
        for group in route.groups:
            for replica in group.replicas:
                self.upstreams.check(replica.url)
                if replica.grpc_address is not None:
                    self.upstreams.check(f"http://{replica.grpc_address}")
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

    def replica_ids(self, stage: str) -> list[str]:
        route = self.routes.get(stage)
        return [] if route is None else [r.id for g in route.groups for r in g.replicas]

    def configs(self, stage: str) -> set[tuple[str, int | None]]:
        """The (variant, batch size) of the replicas `stage` routes to: what a call's duration depends on."""
        route = self.routes.get(stage)
        return set() if route is None else {(g.variant, r.batch_size) for g in route.groups for r in g.replicas}

    def batch_size_of(self, stage: str, replica_id: str) -> int | None:
        """The replica's batch size (None: not given, or no longer routed)."""
        route = self.routes.get(stage)
        if route is None:
            return None
        return next((r.batch_size for g in route.groups for r in g.replicas if r.id == replica_id), None)

    def pick(self, stage: str, exclude: Collection[str] = (),
             admit: Callable[[str], bool] | None = None) -> Pick | None:
        """The replica for the next request of `stage`, avoiding `exclude` (replicas that just failed it) and,
        with `admit`, replicas it refuses (e.g. those without a free slot)."""
        route = self.routes.get(stage)
        if route is None:
            return None
        groups = [(g, [r for r in g.replicas if r.id not in exclude and (admit is None or admit(r.id))])
                  for g in route.groups]
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
