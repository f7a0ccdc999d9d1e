"""The choice problem every solver sees: per stage a table of candidate configurations, pick one each.

A configuration is everything a stage could be told to do (one or several replica groups, each with its variant,
batch, cores, replica count and load share) together with what it implies: its p99 at the load (service, batch
fill and queueing, `adapter.decision.stage_latency`), its cores, its load-weighted accuracy and batch, its busy cores (energy)
and its capacity. A policy is a `Restriction` per stage of what may be chosen; `candidates` turns a problem and
a restriction into the table, as numpy columns so that solvers never loop over configurations in Python.

Which replica counts the table needs for each (variant, batch, cores): from the fewest that carry the load up to
the stage's bound, but only those whose latency is below that of every smaller count. More replicas cost cores
and change neither accuracy nor batch nor busy cores; they shorten the queue and lengthen the batch fill, so a
count whose latency is no better than a smaller count's is dominated (docs/formulation.md, "Replicas"). The
latency is precomputed per row, so the solvers stay linear and exact over the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from adapter.decision.problem import (
    TOLERANCE,
    AccuracyMode,
    Option,
    Problem,
    ProblemError,
    StageTable,
    Weights,
)
from adapter.decision.solvers.pareto import nondominated
from adapter.decision.stage_latency import stage_p99_ms
from adapter.decision.switching import affordable


@dataclass(frozen=True)
class Group:
    """`count` replicas running `option`, receiving `load_rps` of the stage's load."""

    option: Option
    count: int
    load_rps: float


@dataclass(frozen=True)
class Config:
    """A configuration of one stage and its consequences."""

    groups: tuple[Group, ...]
    latency_ms: float  # p99 of the stage: the slowest loaded group's p99 at its load (service, fill, queueing)
    cores: float  # total cores
    accuracy: float  # load-weighted accuracy, as a fraction
    batch: float  # load-weighted batch size
    energy: float  # busy cores: Σ load·cores/throughput (core-seconds of work per second)
    capacity_rps: float  # Σ count·throughput
    meets_load: bool  # every group's capacity covers its load·(1 + headroom)


@dataclass(frozen=True)
class Restriction:
    """What a policy lets one stage choose. None means "any of the table's values"."""

    variants: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None
    cores: tuple[float, ...] | None = None
    cores_by_variant: tuple[tuple[str, float], ...] | None = None  # IPA: one core size per variant
    replicas: int | None = None  # fixed replica count (sponge, rim, model-switching)
    max_variants: int = 1  # > 1: the stage may split its load over that many variants (InfAdapter)

    def mask(self, stage: StageTable) -> np.ndarray:
        """Which rows of the stage's option table the restriction allows."""
        col = stage.columns
        ok = np.ones(len(stage.options), dtype=bool)
        if self.variants is not None:
            ok &= np.isin(col.variant, list(self.variants))
        if self.batches is not None:
            ok &= np.isin(col.batch, list(self.batches))
        if self.cores is not None:
            ok &= np.isclose(col.cores[:, None], np.asarray(self.cores)[None, :], rtol=1e-9, atol=0).any(
                axis=1
            )
        if self.cores_by_variant is not None:
            want = dict(self.cores_by_variant)
            target = np.array([want.get(v, np.nan) for v in col.variant], dtype=float)
            ok &= np.isclose(col.cores, target, rtol=1e-9, atol=0)
        return ok

    def allows(self, o: Option) -> bool:
        if self.variants is not None and o.variant not in self.variants:
            return False
        if self.batches is not None and o.batch not in self.batches:
            return False
        if self.cores is not None and not any(math.isclose(o.cores, c, rel_tol=1e-9) for c in self.cores):
            return False
        if self.cores_by_variant is not None:
            want = dict(self.cores_by_variant).get(o.variant)
            if want is None or not math.isclose(o.cores, want, rel_tol=1e-9):
                return False
        return True


FREE = Restriction()

# Bound on the partial splits `_with_splits` enumerates (two variants never get near it: options × replicas).
MAX_SPLIT_PREFIXES = 50_000
# Shares of its capacity a full group of a split runs at (docs/formulation.md, "InfAdapter's split").
SPLIT_FILLS = (0.5, 0.7, 0.85, 1.0)


def evaluate(problem: Problem, stage: StageTable, groups: Sequence[Group]) -> Config:
    """What a stage configuration implies at the problem's load (groups with no load still cost cores)."""
    capacity = sum(g.count * g.option.throughput_rps for g in groups)
    served = [g for g in groups if g.load_rps > 0 and g.count > 0] or [g for g in groups if g.count > 0]
    latency = max((problem.latency_ms(stage, g.option, g.count, g.load_rps) for g in served), default=0.0)
    total = sum(g.load_rps for g in served)
    weight = (
        [g.load_rps / total for g in served]
        if total > 0
        else [1.0 / len(served)] * len(served)
        if served
        else []
    )
    accuracy = sum(w * g.option.accuracy for w, g in zip(weight, served, strict=True)) / 100.0
    batch = sum(w * g.option.batch for w, g in zip(weight, served, strict=True))
    energy = sum(g.load_rps * g.option.cores / g.option.throughput_rps for g in served)
    cores = sum(g.count * g.option.cores for g in groups)
    per = 1.0 + problem.headroom
    meets = (
        capacity >= problem.required_rps * (1.0 - TOLERANCE)
        and all(g.count * g.option.throughput_rps >= g.load_rps * per * (1.0 - TOLERANCE) for g in groups)
        and sum(g.count for g in groups) <= stage.max_replicas
    )
    return Config(tuple(groups), latency, cores, accuracy, batch, energy, capacity, meets)


@dataclass(frozen=True, eq=False)
class StageChoices:
    """The candidate table of one stage: what each row implies, as numpy columns, and how to rebuild its groups.

    Row i is `singles[source[i]]` on `counts[i]` replicas taking the whole load, or, when `source[i]` is past
    the singles, the split `splits[source[i] − len(singles)]`; group objects are only built for rows asked for.
    """

    stage: StageTable
    singles: tuple[Option, ...]
    splits: tuple[tuple[Group, ...], ...]
    source: np.ndarray
    counts: np.ndarray
    load_rps: float
    latency: np.ndarray
    cores: np.ndarray
    accuracy: np.ndarray  # fraction
    batch: np.ndarray
    energy: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    def groups(self, i: int) -> tuple[Group, ...]:
        src = int(self.source[i])
        if src < len(self.singles):
            return (Group(self.singles[src], int(self.counts[i]), self.load_rps),)
        return self.splits[src - len(self.singles)]

    def config(self, problem: Problem, i: int) -> Config:
        return evaluate(problem, self.stage, self.groups(i))

    def subset(self, rows: np.ndarray) -> StageChoices:
        return StageChoices(
            self.stage,
            self.singles,
            self.splits,
            self.source[rows],
            self.counts[rows],
            self.load_rps,
            self.latency[rows],
            self.cores[rows],
            self.accuracy[rows],
            self.batch[rows],
            self.energy[rows],
        )


def candidates(problem: Problem, index: int, restriction: Restriction = FREE) -> StageChoices:
    """Every configuration of stage `index` the restriction allows that sustains the load within bounds.

    One row per allowed option and replica count, for the counts from the fewest that carry the load up to
    `max_replicas` whose latency is below every smaller count's (the others are dominated, module docstring).
    """
    stage = problem.stages[index]
    col = stage.columns
    load, need = problem.load_rps, problem.required_rps
    rows = np.nonzero(restriction.mask(stage))[0]
    thr = col.throughput[rows]
    fewest = np.maximum(1.0, np.ceil(need / thr * (1.0 - TOLERANCE)))
    if restriction.replicas is None:
        counts = np.arange(1, stage.max_replicas + 1, dtype=float)[None, :]
    else:
        counts = np.array([[float(restriction.replicas)]])
    ok = (counts >= fewest[:, None]) & (counts <= stage.max_replicas) & (
        counts * thr[:, None] >= need * (1.0 - TOLERANCE)
    )
    counts = np.broadcast_to(counts, ok.shape)
    if problem.in_force and problem.in_force[index] is not None:  # a switch serves the old variant meanwhile
        wide = counts.shape[1]
        paid = affordable(col.variant[rows, None].repeat(wide, axis=1), col.cores[rows, None].repeat(wide, axis=1),
                          counts * thr[:, None], need, problem.in_force[index], stage.switch, problem.interval_s)
        ok = ok & paid if (ok & paid).any() else ok  # none can: switching is the only way forward
    latency = np.where(
        ok,
        stage_p99_ms(
            load, counts, col.batch[rows, None], thr[:, None], col.p50[rows, None], col.p99[rows, None],
            stage.max_batch_time_ms, col.queued[rows, None],
        ),
        np.inf,
    )
    # keep a count only when it is faster than every smaller one (latency strictly below their minimum)
    before = np.minimum.accumulate(np.concatenate((np.full((len(rows), 1), np.inf), latency[:, :-1]), axis=1),
                                   axis=1)
    keep = ok & np.isfinite(latency) & (latency < before * (1.0 - 1e-12))
    ri, ci = np.nonzero(keep)
    rows_k, counts_k = rows[ri], counts[ri, ci]
    thr_k = col.throughput[rows_k]
    table = StageChoices(
        stage,
        stage.options,
        (),
        rows_k,
        counts_k,
        load,
        latency[ri, ci],
        counts_k * col.cores[rows_k],
        col.accuracy[rows_k] / 100.0,
        col.batch[rows_k],
        load * col.cores[rows_k] / thr_k,
    )
    if restriction.max_variants > 1 and load > 0:
        allowed = [stage.options[i] for i in np.nonzero(restriction.mask(stage))[0]]
        table = _with_splits(problem, table, allowed, restriction.max_variants)
    return table


def _with_splits(problem: Problem, base: StageChoices, opts: list[Option], k: int) -> StageChoices:
    """Add the configurations that split the load over 2..k variants, the most accurate variant served first.

    For a given set of groups the accuracy-first split is the best one for accuracy: every group but the least
    accurate carries as much as it may and the least accurate one the rest, on the fewest replicas that carry it
    or one more (a shorter queue). How much "as much as it may" is depends on the latency it may take once
    queueing counts, so a full group runs at one of `SPLIT_FILLS` of its capacity (a profile whose latency
    already includes queueing at its throughput can run at 1); a group that would carry nothing is left out (the
    same configuration without it is cheaper). Only those shapes are enumerated, and of them only the ones no
    other configuration of the stage dominates are kept.
    """
    stage, load, per = base.stage, problem.load_rps, 1.0 + problem.headroom
    if not opts:
        return base
    rank = {a: i for i, a in enumerate(sorted({o.accuracy for o in opts}, reverse=True))}
    o_rank = np.array([rank[o.accuracy] for o in opts])
    o_thr = np.array([o.throughput_rps for o in opts])
    o_p99 = np.array([o.p99_ms for o in opts])
    o_p50 = np.array([o.median_ms for o in opts])
    o_queued = np.array([o.queued for o in opts], dtype=bool)
    o_cores = np.array([o.cores for o in opts])
    o_batch = np.array([o.batch for o in opts], dtype=float)
    o_acc = np.array([o.accuracy for o in opts]) / 100.0
    # the latency of every group a prefix may hold: option × fill × replicas, at once
    fills = np.array(SPLIT_FILLS)
    r = np.arange(1, stage.max_replicas + 1, dtype=float)
    g_load = r[None, None, :] * o_thr[:, None, None] * fills[None, :, None] / per
    g_lat = stage_p99_ms(
        g_load, r[None, None, :], o_batch[:, None, None], o_thr[:, None, None], o_p50[:, None, None],
        o_p99[:, None, None], stage.max_batch_time_ms, o_queued[:, None, None],
    )
    g_lat = np.where(o_queued[:, None, None] & (fills[None, :, None] < 1.0), np.inf, g_lat)
    latency_of: dict[int, float] = {}  # id(group) → latency, for the prefixes' groups
    # prefixes: tuples of full groups, most accurate first, that leave some load for one more group
    prefixes: list[tuple[Group, ...]] = [()]
    rows: list[list[tuple[Group, ...]]] = []
    for _ in range(k - 1):
        grown: list[tuple[Group, ...]] = []
        for groups in prefixes:
            taken = sum(g.load_rps for g in groups)
            used = sum(g.count for g in groups)
            last_rank = rank[groups[-1].option.accuracy] if groups else -1
            for j, o in enumerate(opts):
                if rank[o.accuracy] <= last_rank:
                    continue
                for f in range(len(SPLIT_FILLS)):
                    for n in range(1, stage.max_replicas - used):
                        carried = float(g_load[j, f, n - 1])
                        if taken + carried >= load * (1.0 - TOLERANCE):
                            break
                        latency = float(g_lat[j, f, n - 1])
                        if math.isfinite(latency):
                            group = Group(o, n, carried)
                            latency_of[id(group)] = latency
                            grown.append((*groups, group))
            if len(grown) > MAX_SPLIT_PREFIXES:
                raise ProblemError(
                    "max_variants",
                    f"stage {stage.name}: splitting over {k} variants gives more than {MAX_SPLIT_PREFIXES} "
                    "partial splits to enumerate; use max_variants 2 or fewer core choices/replicas",
                )
        prefixes = grown
        rows.append(grown)
    every_prefix = [p for level in rows for p in level]
    if not every_prefix:
        return base
    # the last group, for every prefix × option × (fewest replicas, one more) at once
    p_used = np.array([sum(g.count for g in p) for p in every_prefix], dtype=float)
    shared = np.array([sum(g.load_rps for g in p) for p in every_prefix])
    p_rank = np.array([rank[p[-1].option.accuracy] for p in every_prefix])
    p_lat = np.array([max(latency_of[id(g)] for g in p) for p in every_prefix])
    p_cores = np.array([sum(g.count * g.option.cores for g in p) for p in every_prefix])
    p_acc = np.array([sum(g.load_rps * g.option.accuracy for g in p) / 100.0 for p in every_prefix])
    p_batch = np.array([sum(g.load_rps * g.option.batch for g in p) for p in every_prefix])
    p_energy = np.array(
        [sum(g.load_rps * g.option.cores / g.option.throughput_rps for g in p) for p in every_prefix]
    )
    share2 = (load - shared)[:, None]
    fewest = np.maximum(1, np.ceil(share2 * per / o_thr[None, :] * (1.0 - TOLERANCE)))
    n_last = np.stack((fewest, fewest + 1), axis=2)  # P × O × 2
    share = share2[:, :, None]
    ok = (
        (o_rank[None, :, None] > p_rank[:, None, None])
        & (p_used[:, None, None] + n_last <= stage.max_replicas)
        & (share > 0)
    )
    last_lat = stage_p99_ms(
        np.where(share > 0, share, 0.0), n_last, o_batch[None, :, None], o_thr[None, :, None],
        o_p50[None, :, None], o_p99[None, :, None], stage.max_batch_time_ms, o_queued[None, :, None],
    )
    lat = np.maximum(p_lat[:, None, None], last_lat)
    ok &= np.isfinite(lat)
    cores = p_cores[:, None, None] + n_last * o_cores[None, :, None]
    acc = (p_acc[:, None, None] + share * o_acc[None, :, None]) / load
    batch = (p_batch[:, None, None] + share * o_batch[None, :, None]) / load
    energy = p_energy[:, None, None] + share * (o_cores / o_thr)[None, :, None]
    pi, oi, ei = np.nonzero(ok)
    lat, cores, acc, batch, energy = (
        np.broadcast_to(a, ok.shape)[pi, oi, ei] for a in (lat, cores, acc, batch, energy)
    )
    all_lat = np.concatenate((base.latency, lat))
    all_cores = np.concatenate((base.cores, cores))
    all_acc = np.concatenate((base.accuracy, acc))
    all_batch = np.concatenate((base.batch, batch))
    all_energy = np.concatenate((base.energy, energy))
    w = problem.weights
    cost = w.beta * all_cores + w.delta * all_batch + w.energy * all_energy
    keep = np.sort(nondominated(np.column_stack((all_lat, all_cores, -all_acc, cost))))
    chosen = keep[keep >= len(base)] - len(base)
    splits = tuple(
        (*every_prefix[p], Group(opts[o], int(n_last[p, o, e]), float(share2[p, 0])))
        for p, o, e in zip(pi[chosen], oi[chosen], ei[chosen], strict=True)
    )
    singles = keep[keep < len(base)]
    source = np.concatenate((base.source[singles], len(base.singles) + np.arange(len(splits))))
    counts = np.concatenate((base.counts[singles], np.zeros(len(splits))))
    order = np.concatenate((singles, keep[keep >= len(base)]))
    return StageChoices(
        base.stage,
        base.singles,
        splits,
        source,
        counts,
        load,
        all_lat[order],
        all_cores[order],
        all_acc[order],
        all_batch[order],
        all_energy[order],
    )


@dataclass(frozen=True, eq=False)
class ChoiceProblem:
    """Pick one row per stage table: maximise α·A − Σ cost s.t. Σ latency ≤ limit and Σ cores ≤ budget."""

    tables: tuple[StageChoices, ...]
    latency_limit_ms: float
    budget_cores: float
    weights: Weights
    accuracy: AccuracyMode

    @classmethod
    def of(cls, problem: Problem, tables: Sequence[StageChoices]) -> ChoiceProblem:
        return cls(
            tuple(tables), problem.latency_limit_ms, problem.budget_cores, problem.weights, problem.accuracy
        )

    def costs(self, t: StageChoices) -> np.ndarray:
        """The part of the objective a stage adds on its own: β·cores + δ·batch + energy·busy cores."""
        w = self.weights
        return w.beta * t.cores + w.delta * t.batch + w.energy * t.energy

    def value(self, picks: Sequence[int]) -> float:
        """α·A − Σ cost of one row per stage."""
        accs = [float(t.accuracy[i]) for t, i in zip(self.tables, picks, strict=True)]
        a = sum(accs) / len(accs) if self.accuracy == "mean" else math.prod(accs)
        return self.weights.alpha * a - sum(
            float(self.costs(t)[i]) for t, i in zip(self.tables, picks, strict=True)
        )

    def fits(self, picks: Sequence[int]) -> bool:
        """Whether the picks meet the SLO and the budget (with the float tolerance both solvers use)."""
        latency = sum(float(t.latency[i]) for t, i in zip(self.tables, picks, strict=True))
        cores = sum(float(t.cores[i]) for t, i in zip(self.tables, picks, strict=True))
        return within(latency, self.latency_limit_ms) and within(cores, self.budget_cores)


def within(x: float, limit: float) -> bool:
    """x ≤ limit up to float noise; the one comparison every solver and check uses for the constraints."""
    return x <= limit + 1e-9 * max(1.0, abs(limit))


SolutionStatus = Literal["optimal", "timeout", "infeasible", "error"]


@dataclass(frozen=True)
class Solution:
    """What a solver found: one row per stage table (None when it found nothing) and the solver's verdict.

    `optimal`: the picks are a proven optimum; `timeout`: the time limit ended the search, the picks (if any)
    are the best found; `infeasible`: no picks meet the constraints; `error`: the solver failed (`detail`).
    """

    status: SolutionStatus
    picks: tuple[int, ...] | None
    solver: str
    detail: str = ""
