"""The optimisation instance: what every solver and policy decides over, as plain in-memory data.

A `Problem` holds, for every stage, the option table (variant, accuracy, batch, cores, profiled p99 and
throughput of one replica), plus the predicted load, the SLO, the objective weights, the core budget, the
capacity headroom, the network time and each stage's replica bound and batch-fill limit. Solvers never read
files: `Catalog` builds problems from a spec and its profiles (any object with `point(variant, batch, cores)`),
memoising profile look-ups so that a policy run every second does not re-interpolate the profile.

The load-dependent quantities of the formulation (docs/formulation.md) live here, in one place:
`replicas_needed` (the fewest replicas whose capacity covers the load) and `latency_ms` (the p99 of a request's
time at a stage group at its load: service, batch fill and queueing, `adapter.decision.stage_latency`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Literal, Protocol

import numpy as np

from adapter.decision.stage_latency import stage_p99_ms
from adapter.decision.switching import InForce, SwitchCost
from adapter.errors import SpecError, UsageError
from adapter.profiling.profile import includes_queueing
from adapter.spec import GraphSpec, StageSpec

AccuracyMode = Literal["product", "mean"]

# Relative tolerance for float comparisons of capacities and constraints (profiles carry ~3 digits).
TOLERANCE = 1e-9


class ProblemError(UsageError):
    """An invalid problem instance; the message names the field (`load_rps: must be >= 0 (got -3)`)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


class LatencyPoint(Protocol):
    """What a profile says about one (variant, batch, cores) point; `adapter.profiling.profile.ProfilePoint` is one."""

    @property
    def p99_ms(self) -> float: ...

    @property
    def throughput_rps(self) -> float: ...

    # Read when there: `p50_ms` (the service-time spread the queueing model uses; without it the service
    # time is taken as constant) and `machine` (whether the latency already includes queueing).


class StageProfile(Protocol):
    """A stage's profile: measured points, or interpolated ones; `adapter.profiling.profile.Profile` is one."""

    def point(self, variant: str, batch: int, cores: float) -> LatencyPoint: ...


@dataclass(frozen=True)
class Option:
    """One replica configuration of a stage and what the profile says it does."""

    variant: str
    accuracy: float  # model-card accuracy, percent
    batch: int
    cores: float  # cores per replica
    p99_ms: float  # profiled p99 latency of one batch
    throughput_rps: float  # requests per second one replica sustains
    p50_ms: float | None = None  # profiled median latency of one batch (None: as p99, no spread)
    queued: bool = False  # the p99 already includes queueing at `throughput_rps` (InfAdapter's capacities)

    @property
    def median_ms(self) -> float:
        return self.p99_ms if self.p50_ms is None else min(self.p50_ms, self.p99_ms)


@dataclass(frozen=True)
class OptionColumns:
    p99: np.ndarray
    throughput: np.ndarray
    cores: np.ndarray
    batch: np.ndarray
    accuracy: np.ndarray  # percent
    variant: np.ndarray  # names (object array)
    p50: np.ndarray
    queued: np.ndarray  # bool


@dataclass(frozen=True)
class StageTable:
    """A stage's options and bounds."""

    name: str
    options: tuple[Option, ...]
    max_replicas: int
    max_batch_time_ms: float
    switch: Mapping[str, SwitchCost] = field(default_factory=dict, compare=False, hash=False)
    """per variant, what switching a replica to it in place costs (adapter.decision.switching)"""

    @cached_property
    def columns(self) -> OptionColumns:
        """The option table as numpy columns (computed once; the table is immutable)."""
        return OptionColumns(
            p99=np.array([o.p99_ms for o in self.options], dtype=float),
            throughput=np.array([o.throughput_rps for o in self.options], dtype=float),
            cores=np.array([o.cores for o in self.options], dtype=float),
            batch=np.array([o.batch for o in self.options], dtype=float),
            accuracy=np.array([o.accuracy for o in self.options], dtype=float),
            variant=np.array([o.variant for o in self.options], dtype=object),
            p50=np.array([o.median_ms for o in self.options], dtype=float),
            queued=np.array([o.queued for o in self.options], dtype=bool),
        )

    @cached_property
    def defect(self) -> tuple[str, str] | None:
        """The first invalid option field and why (checked once per table; tables are immutable)."""
        c = self.columns
        with np.errstate(invalid="ignore"):
            fine = (
                np.isfinite(c.accuracy).all()
                and ((c.accuracy > 0) & (c.accuracy <= 100)).all()
                and (c.batch >= 1).all()
                and all(np.isfinite(x).all() and (x > 0).all() for x in (c.cores, c.p99, c.throughput, c.p50))
                and len({(o.variant, o.accuracy) for o in self.options})
                == len({o.variant for o in self.options})
            )
        if fine:
            return None
        accuracy: dict[str, float] = {}
        for j, o in enumerate(self.options):
            at = f"options[{j}]"
            if not (_finite(o.accuracy) and 0 < o.accuracy <= 100):
                return f"{at}.accuracy", f"must be in (0, 100] (got {o.accuracy})"
            if accuracy.setdefault(o.variant, o.accuracy) != o.accuracy:
                return f"{at}.accuracy", f"variant {o.variant!r} has two accuracies"
            if o.batch < 1:
                return f"{at}.batch", f"must be >= 1 (got {o.batch})"
            for name in ("cores", "p99_ms", "throughput_rps", "p50_ms"):
                x = getattr(o, name)
                if x is None and name == "p50_ms":
                    continue
                if not (_finite(x) and x > 0):
                    return f"{at}.{name}", f"must be > 0 (got {x})"
        return None

    def variants(self) -> list[tuple[str, float]]:
        """(variant, accuracy) pairs in table order, each once."""
        seen: dict[str, float] = {}
        for o in self.options:
            seen.setdefault(o.variant, o.accuracy)
        return list(seen.items())

    def option(self, variant: str, batch: int, cores: float) -> Option | None:
        for o in self.options:
            if o.variant == variant and o.batch == batch and math.isclose(o.cores, cores, rel_tol=1e-9):
                return o
        return None


@dataclass(frozen=True)
class Weights:
    """Objective weights: alpha·accuracy − beta·cores − delta·batch − energy·busy_cores."""

    alpha: float = 1.0
    beta: float = 0.01
    delta: float = 0.0
    energy: float = 0.0


@dataclass(frozen=True)
class Problem:
    """One decision to take: choose per stage variant, batch, cores and replicas (docs/formulation.md)."""

    stages: tuple[StageTable, ...]
    load_rps: float
    slo_ms: float
    budget_cores: float
    weights: Weights = field(default_factory=Weights)
    accuracy: AccuracyMode = "product"
    network_ms: float = 0.0
    headroom: float = 0.0
    in_force: tuple[InForce | None, ...] = ()  # per stage, what runs now (empty: nothing, switches are free)
    interval_s: float = 0.0  # how long the decision is for; 0: switch times are not counted

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def latency_limit_ms(self) -> float:
        """What the stages may spend together: the SLO minus the network time."""
        return self.slo_ms - self.network_ms

    @property
    def required_rps(self) -> float:
        """The capacity every stage must provide: the load plus the headroom."""
        return self.load_rps * (1.0 + self.headroom)

    def replicas_needed(self, option: Option, load_rps: float | None = None) -> int:
        """Fewest replicas (>= 1) of `option` whose capacity covers `load_rps` (default: the whole load)."""
        need = (self.load_rps if load_rps is None else load_rps) * (1.0 + self.headroom)
        return max(1, math.ceil(need / option.throughput_rps * (1.0 - TOLERANCE)))

    def latency_ms(self, stage: StageTable, option: Option, count: int, load_rps: float | None = None) -> float:
        """p99 of a request's time at `count` replicas of `option` receiving `load_rps` (default: all the load):
        service, batch fill and queueing (`adapter.decision.stage_latency.stage_p99_ms`); inf at or past saturation."""
        load = self.load_rps if load_rps is None else load_rps
        return float(
            stage_p99_ms(
                load, count, option.batch, option.throughput_rps, option.median_ms, option.p99_ms,
                stage.max_batch_time_ms, option.queued,
            )
        )

    def with_changes(self, **changes: object) -> Problem:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def _check(ok: bool, field_name: str, reason: str) -> None:
    if not ok:
        raise ProblemError(field_name, reason)


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _validate(p: Problem) -> None:
    _check(
        _finite(p.load_rps) and p.load_rps >= 0,
        "load_rps",
        f"must be a finite number >= 0 (got {p.load_rps})",
    )
    _check(_finite(p.slo_ms) and p.slo_ms > 0, "slo_ms", f"must be a finite number > 0 (got {p.slo_ms})")
    _check(
        _finite(p.budget_cores) and p.budget_cores > 0, "budget_cores", f"must be > 0 (got {p.budget_cores})"
    )
    _check(_finite(p.network_ms) and p.network_ms >= 0, "network_ms", f"must be >= 0 (got {p.network_ms})")
    _check(_finite(p.headroom) and p.headroom >= 0, "headroom", f"must be >= 0 (got {p.headroom})")
    _check(p.accuracy in ("product", "mean"), "accuracy", f"must be 'product' or 'mean' (got {p.accuracy!r})")
    for name in ("alpha", "beta", "delta", "energy"):
        w = getattr(p.weights, name)
        _check(_finite(w) and w >= 0, f"objective.{name}", f"must be a finite number >= 0 (got {w})")
    _check(len(p.stages) > 0, "stages", "at least one stage is needed")
    _check(len(p.in_force) in (0, len(p.stages)), "in_force", f"one entry per stage or none (got {len(p.in_force)})")
    _check(_finite(p.interval_s) and p.interval_s >= 0, "interval_s", f"must be >= 0 (got {p.interval_s})")
    names = [s.name for s in p.stages]
    _check(len(set(names)) == len(names), "stages", f"stage names repeat: {names}")
    for i, s in enumerate(p.stages):
        where = f"stages[{i}]"
        _check(len(s.options) > 0, f"{where}.options", f"stage {s.name!r} has no options")
        _check(s.max_replicas >= 1, f"{where}.max_replicas", f"must be >= 1 (got {s.max_replicas})")
        _check(
            _finite(s.max_batch_time_ms) and s.max_batch_time_ms >= 0,
            f"{where}.max_batch_time_ms",
            f"must be >= 0 (got {s.max_batch_time_ms})",
        )
        defect = s.defect
        if defect is not None:
            raise ProblemError(f"{where}.{defect[0]}", defect[1])


class Catalog:
    """A spec and its stage profiles, turned into problems; profile points are looked up once and kept.

    The memo is a cache of a pure function (a profile point never changes), not policy state.
    """

    def __init__(
        self,
        spec: GraphSpec,
        profiles: Mapping[str, StageProfile],
        switch_costs: Mapping[str, SwitchCost] | None = None,
    ) -> None:
        missing = [s.name for s in spec.stages if s.name not in profiles]
        if missing:
            raise ProblemError("profiles", f"no profile for stage(s) {missing}")
        self.spec = spec
        self.profiles = dict(profiles)
        self.switch_costs = dict(switch_costs or {})  # per variant name (profiles/switch.csv)
        self._points: dict[tuple[str, str, int, float], Option] = {}
        self._tables: dict[tuple[object, ...], StageTable] = {}

    def option(self, stage: StageSpec, variant: str, batch: int, cores: float) -> Option:
        """The option at (variant, batch, cores), measured or interpolated by the stage's profile."""
        key = (stage.name, variant, batch, round(cores, 9))
        found = self._points.get(key)
        if found is None:
            accuracy = stage.variant(variant).accuracy
            try:
                point = self.profiles[stage.name].point(variant, batch, cores)
            except (KeyError, ValueError, LookupError) as e:
                raise SpecError(
                    stage.profile,
                    f"stage {stage.name} variant {variant} batch {batch} cores {cores:g}",
                    str(e),
                ) from None
            p50 = getattr(point, "p50_ms", None)
            found = Option(
                variant, accuracy, batch, float(cores), float(point.p99_ms), float(point.throughput_rps),
                p50_ms=None if p50 is None else float(p50),
                queued=includes_queueing(str(getattr(point, "machine", ""))),
            )
            self._points[key] = found
        return found

    def table(
        self,
        stage: StageSpec,
        cores: Sequence[float] | None = None,
        batches: Sequence[int] | None = None,
        variants: Sequence[str] | None = None,
    ) -> StageTable:
        """The option table of a stage over its configured grid, or over the given cores/batches/variants."""
        names = tuple(variants) if variants is not None else tuple(v.name for v in stage.variants)
        bs = tuple(batches) if batches is not None else tuple(stage.batch_sizes)
        cs = tuple(cores) if cores is not None else tuple(stage.cores)
        key = (stage.name, names, bs, cs)
        table = self._tables.get(key)
        if table is None:
            options = tuple(self.option(stage, v, b, c) for v in names for b in bs for c in cs)
            switch = {v: self.switch_costs[v] for v in names if v in self.switch_costs}
            table = StageTable(stage.name, options, stage.max_replicas, stage.max_batch_time_ms, switch)
            self._tables[key] = table
        return table

    def problem(
        self,
        load_rps: float,
        *,
        slo_ms: float | None = None,
        weights: Weights | None = None,
        core_grid: Mapping[str, Sequence[float]] | None = None,
        variants: Mapping[str, Sequence[str]] | None = None,
        in_force: Mapping[str, InForce] | None = None,
    ) -> Problem:
        """The problem for one interval at `load_rps`: the spec's grid, or per stage the given cores/variants;
        with `in_force` (per stage, what runs now) a variant switch's time counts (adapter.decision.switching)."""
        spec = self.spec
        grid, names = core_grid or {}, variants or {}
        tables = tuple(self.table(s, cores=grid.get(s.name), variants=names.get(s.name)) for s in spec.stages)
        return Problem(
            stages=tables,
            load_rps=load_rps,
            slo_ms=spec.slo_ms if slo_ms is None else slo_ms,
            budget_cores=spec.budget_cores,
            weights=weights or weights_of(spec),
            accuracy=spec.accuracy,
            network_ms=spec.network_ms,
            headroom=spec.headroom,
            in_force=tuple(in_force.get(s.name) for s in spec.stages) if in_force else (),
            interval_s=spec.interval_s if in_force else 0.0,
        )


def weights_of(spec: GraphSpec) -> Weights:
    o = spec.objective
    return Weights(alpha=o.alpha, beta=o.beta, delta=o.delta, energy=o.energy)


def build_problem(
    spec: GraphSpec, profiles: Mapping[str, StageProfile], load_rps: float, *, slo_ms: float | None = None
) -> Problem:
    """One-shot helper: the problem of `spec` at `load_rps` over its configured grid."""
    return Catalog(spec, profiles).problem(load_rps, slo_ms=slo_ms)
