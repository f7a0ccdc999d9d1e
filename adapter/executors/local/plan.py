"""How the replicas of a stage become the decided ones: which running replica takes which decided slot, which
are started, which are stopped, and how the stage's load is split by variant. Plain functions and data, no I/O;
`StagePlan.changes` states each step's cores so the cluster can order them within the budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from adapter.decision.model import StageDecision
from adapter.executors.local.replica import ReplicaConfig
from adapter.executors.local.stages import ClusterReplica, ClusterStage
from adapter.executors.ordering import CoreChange


def replica_targets(decision: StageDecision, max_batch_time_ms: float) -> list[ReplicaConfig]:
    """One `ReplicaConfig` per decided replica of the stage."""
    return [ReplicaConfig(g.variant, g.batch, g.cores, max_batch_time_ms)
            for g in decision.replicas for _ in range(g.count)]


def variant_shares(decision: StageDecision) -> dict[str, float]:
    """The decided fraction of the stage's load per variant (groups of one variant added up; empty ones left out)."""
    shares: dict[str, float] = {}
    for g in decision.replicas:
        if g.count > 0:
            shares[g.variant] = shares.get(g.variant, 0.0) + g.load_share
    return shares


def match_replicas(
    current: Sequence[ReplicaConfig], targets: Sequence[ReplicaConfig]
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair running replicas with decided ones, keeping as much as fits (exact, then same variant and cores,
    then same variant, then any). Returns (pairs of (current, target) indexes, targets to start, current to stop)."""
    keys: list[Callable[[ReplicaConfig], tuple[object, ...]]] = [
        lambda c: (c.variant, c.batch, c.cores),
        lambda c: (c.variant, c.cores),
        lambda c: (c.variant,),
        lambda c: (),
    ]
    free_c, free_t = list(range(len(current))), list(range(len(targets)))
    pairs: list[tuple[int, int]] = []
    for key in keys:
        for t in list(free_t):
            for c in free_c:
                if key(current[c]) == key(targets[t]):
                    pairs.append((c, t))
                    free_c.remove(c)
                    free_t.remove(t)
                    break
    return pairs, free_t, free_c


@dataclass
class StagePlan:
    """One stage's part of applying a decision: the running replicas paired with decided ones, what starts and
    what stops; `changes()` says what each does to the cores held (`adapter.executors.ordering`)."""

    st: ClusterStage
    sd: StageDecision
    targets: list[ReplicaConfig]
    live: list[ClusterReplica]
    pairs: list[tuple[int, int]]
    to_start: list[int]
    to_stop: list[int]
    failed_starts: int = 0

    def owns(self, change: CoreChange) -> bool:
        key = change.key
        return isinstance(key, tuple) and key[0] is self

    def changes(self) -> list[CoreChange]:
        """Keys `(plan, "pair" | "start" | "stop", current index, target index)`, in this order."""
        out = [CoreChange((self, "pair", c, t), self.live[c].process.config.cores, self.targets[t].cores)
               for c, t in self.pairs]
        out += [CoreChange((self, "start", -1, t), 0.0, self.targets[t].cores) for t in self.to_start]
        out += [CoreChange((self, "stop", c, -1), self.live[c].process.config.cores, 0.0) for c in self.to_stop]
        return out
