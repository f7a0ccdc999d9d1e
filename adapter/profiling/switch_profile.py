"""The switch profile: how long switching a replica to a variant in place takes, per variant, measured.

`profiles/switch.csv` (beside the stage profiles; a stage reads the `switch.csv` in its profile's folder) has one
row per variant:

    variant,family,bytes,switch_s,serving_ratio,runs,machine

`switch_s` is the time from the control call to the new variant serving (weights loaded, one warm-up batch
measured), `serving_ratio` the old variant's throughput while the new one loads relative to before, `bytes` the
size of the variant's weights. Rows whose `machine` starts with `measured` were printed by
`benchmarks/transformers_runtime.py --switch-profile` (median of `runs`); rows whose `machine` starts with
`derived` are the variant's `bytes` times the seconds per byte measured on the same family. A variant with no
row switches for free in the decision (the vision families: 0.5–3 s, shorter than an interval) and after the
simulator's `switch_delay_s`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapter.decision.switching import SwitchCost
from adapter.errors import SpecError
from adapter.spec import GraphSpec

FILE_NAME = "switch.csv"
COLUMNS = ("variant", "family", "bytes", "switch_s", "serving_ratio", "runs", "machine")


class SwitchRow(BaseModel):
    """One row of the switch profile."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(min_length=1)
    family: str = ""
    bytes: int = Field(ge=0)
    switch_s: float = Field(ge=0, description="seconds from the control call to the new variant serving")
    serving_ratio: float = Field(gt=0, le=1.5, description="old variant's throughput while loading, vs before")
    runs: int = Field(ge=0)
    machine: str = ""


def read_switch_profile(path: Path) -> dict[str, SwitchRow]:
    """The rows of one switch profile by variant; a bad row raises `SpecError` naming the file, line and field."""
    rows: dict[str, SwitchRow] = {}
    with path.open(newline="") as f:
        for n, raw in enumerate(csv.DictReader(f), start=2):
            try:
                row = SwitchRow.model_validate(raw)
            except ValidationError as e:
                err = e.errors()[0]
                raise SpecError(str(path), f"line {n}.{'.'.join(map(str, err['loc']))}", err["msg"]) from None
            rows[row.variant] = row
    return rows


def load_switch_costs(spec: GraphSpec) -> dict[str, SwitchCost]:
    """Per variant of the spec's stages, its switch cost from the `switch.csv` beside its stage's profile."""
    out: dict[str, SwitchCost] = {}
    files: dict[Path, dict[str, SwitchRow]] = {}
    for stage in spec.stages:
        path = spec.profile_path(stage).parent / FILE_NAME
        if path not in files:
            files[path] = read_switch_profile(path) if path.exists() else {}
        for v in stage.variants:
            row = files[path].get(v.name)
            if row is not None:
                out[v.name] = SwitchCost(row.switch_s, min(1.0, row.serving_ratio))
    return out


def write_switch_profile(path: Path, rows: list[SwitchRow]) -> None:
    """Write (or replace the given variants' rows of) a switch profile, sorted by family and variant."""
    have = read_switch_profile(path) if path.exists() else {}
    have.update({r.variant: r for r in rows})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in sorted(have.values(), key=lambda r: (r.family, r.bytes, r.variant)):
            w.writerow(r.model_dump())
