"""Executors apply a `Decision` to the world: the local cluster on this machine, or Kubernetes.

An executor never raises for a step that failed: partial success is a return value (`ApplyResult`), so the
adaptation loop always knows what is in force. Executors do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from adapter.decision.model import Decision
from adapter.spec import GraphSpec


@dataclass
class StepFailure:
    """One step of applying a decision that did not take effect, and why."""

    target: str  # the object the step was for, e.g. "pod/video-detector-0" or "stage detector"
    action: str  # what was attempted, e.g. "resize cpu to 1.5"
    reason: str
    retryable: bool = False


@dataclass
class ApplyResult:
    """What applying a decision did: the steps that took effect and those that did not."""

    applied: list[str] = field(default_factory=list)
    failed: list[StepFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


class Executor(Protocol):
    async def apply(self, spec: GraphSpec, decision: Decision) -> ApplyResult:
        """Bring the running system to `decision`; report what did and did not take effect."""
        ...
