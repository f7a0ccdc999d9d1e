"""Synthetic specs and profiles for the optimizer's tests: a latency model shaped like measured CNN profiles.

`SyntheticProfile` answers `point(variant, batch, cores)` like `adapter.profiling.profile.Profile` does, from
`overhead + base·batch^0.85 / cores^0.75`, so the tests need no profile files and any core size has a point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapter.spec import GraphSpec, parse_spec


@dataclass(frozen=True)
class Point:
    p99_ms: float
    throughput_rps: float


@dataclass(frozen=True)
class SyntheticProfile:
    base_ms: dict[str, float]  # per variant: compute time of one item on one core

    def point(self, variant: str, batch: int, cores: float) -> Point:
        mean = 2.0 + self.base_ms[variant] * batch**0.85 / cores**0.75
        return Point(p99_ms=round(mean * 1.2, 6), throughput_rps=round(batch / mean * 1000.0, 6))


RESNET = {
    "resnet18": (69.76, 20.0),
    "resnet34": (73.31, 36.0),
    "resnet50": (76.13, 48.0),
    "resnet101": (77.37, 90.0),
    "resnet152": (78.31, 130.0),
}
YOLO = {"yolov5n": (45.7, 15.0), "yolov5s": (56.8, 35.0), "yolov5m": (64.1, 80.0)}


def stage(name: str, family: dict[str, tuple[float, float]], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "variants": [{"name": v, "accuracy": acc} for v, (acc, _) in family.items()],
        "batch_sizes": [1, 2, 4, 8],
        "cores": [0.5, 1.0, 2.0, 4.0],
        "max_replicas": 8,
        "profile": f"{name}.csv",
        **extra,
    }


def make_spec(stages: list[dict[str, Any]] | None = None, **top: Any) -> GraphSpec:
    data = {
        "name": "test-graph",
        "slo_ms": 600.0,
        "objective": {"alpha": 1.0, "beta": 0.01, "delta": 0.0},
        "accuracy": "product",
        "budget_cores": 32.0,
        "cpu_step": 0.25,
        "stages": stages or [stage("detector", YOLO), stage("classifier", RESNET)],
        **top,
    }
    return parse_spec(data)


def profiles_for(spec: GraphSpec) -> dict[str, SyntheticProfile]:
    families = {**RESNET, **YOLO}
    return {s.name: SyntheticProfile({v.name: families[v.name][1] for v in s.variants}) for s in spec.stages}
