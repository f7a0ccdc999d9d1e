"""The dry-run executor: applies a decision to nothing, and says what it would have changed.

`ipa up --dry-run` runs the adapter with it: the loop observes, predicts, decides and records as usual, and
every apply lists, per stage, the replica groups that would be started, changed or stopped, without touching
any process. It keeps what it was last given as the deployment in force, so the next apply is a difference
against it, as with a real executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapter.decision.model import Decision, ReplicaGroup
from adapter.executors import ApplyResult, StepFailure
from adapter.spec import GraphSpec


def describe(group: ReplicaGroup) -> str:
    return f"{group.count}x {group.variant} b{group.batch} {group.cores:g} cores share {group.load_share:.2f}"


@dataclass
class DryRunExecutor:
    """An `Executor` that changes nothing: it records decisions and reports the steps a real one would take."""

    deployed: Decision | None = None
    """The decision last applied (what a real executor would now run)."""
    applied: list[Decision] = field(default_factory=list)
    """Every decision given to `apply`, oldest first."""

    async def apply(self, spec: GraphSpec, decision: Decision) -> ApplyResult:
        result = ApplyResult()
        known = {s.name: s for s in spec.stages}
        before = {s.name: s for s in self.deployed.stages} if self.deployed is not None else {}
        for sd in decision.stages:
            stage = known.get(sd.name)
            if stage is None:
                result.failed.append(StepFailure(f"stage {sd.name}", "apply", "no such stage in the spec"))
                continue
            variants = {v.name for v in stage.variants}
            unknown = sorted({g.variant for g in sd.replicas} - variants)
            if unknown:
                result.failed.append(StepFailure(f"stage {sd.name}", "apply", f"unknown variants {unknown}"))
                continue
            old = before.get(sd.name)
            old_groups = [g for g in old.replicas if g.count] if old is not None else []
            new_groups = [g for g in sd.replicas if g.count]
            if old_groups == new_groups:
                continue
            was = "; ".join(describe(g) for g in old_groups) or "nothing"
            result.applied.append(f"stage {sd.name}: {was} -> {'; '.join(describe(g) for g in new_groups)} (dry run)")
        if result.ok:
            self.deployed = decision
        self.applied.append(decision)
        return result
