"""How the simulated system behaves beyond what the spec and profiles say: start, switch and resize delays,
in-place or replacing changes, and the runtime's and router's settings the simulator mirrors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapter.decision.switching import SwitchCost
from mlserver_ipa.settings import OnLate


@dataclass(frozen=True)
class SimSettings:
    """How the simulated system behaves beyond what the spec and profiles say."""

    cold_start_s: float = 4.0
    """Seconds from starting a new replica to its first request: `mlserver start` until the model is ready,
    measured 4.0–4.9 s on this machine for a demo ResNet replica (ResNet-18 active)."""
    switch_delay_s: float = 1.0
    """Seconds an in-place session change takes before it serves: a variant switch, or a core change that
    changes the thread count (⌈cores⌉). The runtime builds the new onnxruntime session beside the old one,
    which serves meanwhile, and warms it up; measured 0.5 s (ResNet-18) to 2.6–3.1 s (ResNet-152), about
    1 s typical, for the demo family on this machine. Variants in `switch_costs` take theirs instead."""
    switch_costs: Mapping[str, SwitchCost] | None = None
    """Per variant, what a switch to it costs: its `switch_s`, and the old variant serving at `serving_ratio`
    of its speed meanwhile (the loading shares its cores). None: the spec's switch profile
    (`adapter.profiling.switch_profile`, profiles/switch.csv), as the decision reads it."""
    resize_delay_s: float = 0.05
    """Seconds a core change within the same thread count takes (a cgroup quota write and a control call)."""
    in_place: bool = True
    """Change variant and cores in place; False replaces the replica (a new one cold-starts, the old drains)."""
    queue_limit: int = 256
    """Most requests waiting per replica (the runtime's `queue_limit`); past it a request is 'overloaded'."""
    on_late: OnLate = "drop"
    """The runtime's `on_late`: drop a request that can no longer meet its deadline, or serve it late."""
    ewma_alpha: float = 0.2
    """Weight of the newest batch in each replica's service-time estimate (the runtime's `ewma_alpha`)."""
    service_time_deviations: float = 2.0
    """Mean deviations added to a replica's service-time estimate when judging deadlines (the runtime's
    `service_time_deviations`)."""
    router_retries: int = 3
    """Other replicas of the stage the router tries when one is overloaded (the router's `retries`)."""
