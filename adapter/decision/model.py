"""The decision: what every stage runs, on how many replicas, with how many cores and what batch size.

It is what the optimizer and every baseline policy return, what executors apply, and what
`ipa solve --json` prints (DESIGN.md §3). A decision always carries its status and the terms of its objective.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["optimal", "degraded", "timeout"]


class ReplicaGroup(BaseModel):
    """`count` identical replicas of one variant; `load_share` is the fraction of the stage's load they get."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: str
    batch: int = Field(ge=1)
    cores: float = Field(gt=0, description="cores per replica")
    count: int = Field(ge=0)
    load_share: float = Field(1.0, ge=0, le=1)


class StageDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    replicas: list[ReplicaGroup] = Field(min_length=1)
    capacity_rps: float = Field(0.0, ge=0, description="throughput the stage sustains as decided")
    latency_ms: float = Field(0.0, ge=0, description="predicted p99 of the stage including batch-fill wait")
    accuracy: float = Field(0.0, ge=0, description="load-weighted accuracy of the stage, percent")

    @property
    def cores(self) -> float:
        return sum(g.cores * g.count for g in self.replicas)

    @property
    def replica_count(self) -> int:
        return sum(g.count for g in self.replicas)


class ObjectiveTerms(BaseModel):
    """value = alpha·accuracy − beta·cores − delta·batch (− energy term); accuracy as a fraction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    accuracy: float
    cores: float
    batch: float
    energy: float = 0.0


class Decision(BaseModel):
    """What every stage runs; `status` says whether it meets the constraints (see docs/formulation.md):

    `optimal`: the best the policy may choose, meeting capacity, SLO and budget; `timeout`: the solver's time
    limit ended the search, this is the best found (it meets the constraints); `degraded`: nothing the policy
    may choose meets them all, `reason` says what fails, and this is the fallback (fastest variants at the
    capacity the budget allows) or, for fixed policies, their configuration as it is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Status
    reason: str | None = None
    policy: str = "joint"
    objective: ObjectiveTerms
    solve_time_ms: float = Field(ge=0)
    load_rps: float = Field(ge=0)
    predicted_latency_ms: float = Field(ge=0)
    stages: list[StageDecision] = Field(min_length=1)
    slo_ms: float | None = Field(None, description="the end-to-end SLO the decision was taken for")
    solver: str | None = Field(None, description="exact, mip, or none (a fixed policy or a fallback)")
    notes: list[str] = Field(default_factory=list, description="what the guards changed or held, and why")

    @property
    def cores(self) -> float:
        return sum(s.cores for s in self.stages)

    def stage(self, name: str) -> StageDecision:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)
