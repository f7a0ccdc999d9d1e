"""Importer for InfAdapter's published ResNet capacity measurements, so experiments can run on the paper's numbers.

InfAdapter (`auto_tuner/experiments/capacity_experiment.py` in its repository) measured TF-Serving on CPU for
ResNet-18…152 (`ARCH`) at 1–20 cores (`CPU`), batch 1, and four SLAs (500, 750, 1000, 1500 ms). For each SLA a
binary search over Poisson loads found the largest rate (`capacity`, rps) whose p99 (`p99_latency`, ms, over a
16-s run) stayed within the SLA; `saturation_tp` is the closed-loop peak it started from. Its own adapter used
the SLA = 750 ms rows (`train_capacity_models.py`), and so does this importer by default.

Mapping into our profile format (one row per ARCH × CPU at the chosen SLA):

- `variant` = `resnet<ARCH>` (the names of the demo ResNet family), `batch` = `BATCH` (always 1), `cores` = `CPU`.
- `throughput_rps` = `capacity`: the load the paper's adapter planned with at that SLA.
- `p99_ms` = `p99_latency` at that load. It includes queueing at that load (unlike our profiler's batch
  latency), which is how InfAdapter itself read it.
- `p50_ms` and `mean_ms` are not in the paper's data: they are set equal to `p99_ms`, a pessimistic bound
  that keeps `p50 ≤ p99` and invents no distribution.
- `samples` = 0 (the CSV does not say), `machine` = `infadapter-paper:tf-serving:queued-at-sla` (the origin,
  never our hardware; the tail says the p99 already includes queueing at `throughput_rps`, so the optimizer
  does not charge it again), `stage` = `resnet`.
- Rows whose `p99_latency` is empty (no load met that SLA) are skipped and counted.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from adapter.errors import SpecError
from adapter.profiling.profile import QUEUED_MARK, Profile, ProfilePoint

INFADAPTER_MACHINE = "infadapter-paper:tf-serving" + QUEUED_MARK
INFADAPTER_SLAS_MS = (500, 750, 1000, 1500)
DEFAULT_SLA_MS = 750
REQUIRED = ("ARCH", "CPU", "BATCH", "SLA", "p99_latency", "capacity")


@dataclass(frozen=True)
class ImportResult:
    profile: Profile
    skipped: list[str]  # one note per row left out, saying why


def _number(file: str, line: int, col: str, raw: str | None) -> float:
    try:
        return float(raw or "")
    except ValueError:
        raise SpecError(file, f"line {line}: {col}", f"not a number: {raw!r}") from None


def import_infadapter(path: str | Path, sla_ms: float = DEFAULT_SLA_MS, stage: str = "resnet") -> ImportResult:
    """Read InfAdapter's capacity CSV into a profile at one SLA; `SpecError` naming line and column if malformed."""
    p = Path(path)
    file = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SpecError(file, "(file)", f"cannot read InfAdapter capacity CSV: {reason}") from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SpecError(file, "line 1", f"missing column(s) {', '.join(missing)}; is this InfAdapter's capacity CSV?")
    profile = Profile()
    skipped: list[str] = []
    slas: set[float] = set()
    for row in reader:
        line = reader.line_num
        sla = _number(file, line, "SLA", row["SLA"])
        slas.add(sla)
        if sla != sla_ms:
            continue
        arch = int(_number(file, line, "ARCH", row["ARCH"]))
        cores = _number(file, line, "CPU", row["CPU"])
        batch = int(_number(file, line, "BATCH", row["BATCH"]))
        capacity = _number(file, line, "capacity", row["capacity"])
        variant = f"resnet{arch}"
        if not (row["p99_latency"] or "").strip():
            skipped.append(f"line {line}: {variant} at {cores:g} cores: no p99 at SLA {sla_ms:g} ms (no load met it)")
            continue
        p99 = _number(file, line, "p99_latency", row["p99_latency"])
        point = ProfilePoint(
            stage=stage, variant=variant, batch=batch, cores=cores, p50_ms=p99, p99_ms=p99, mean_ms=p99,
            throughput_rps=capacity, samples=0, machine=INFADAPTER_MACHINE,
        )
        if profile.has(variant, batch, cores):
            raise SpecError(file, f"line {line}", f"{variant} at {cores:g} cores and SLA {sla_ms:g} ms repeats")
        profile.add(point)
    if not profile.points and not skipped:
        have = ", ".join(f"{s:g}" for s in sorted(slas)) or "none"
        raise SpecError(file, "SLA", f"no rows at SLA {sla_ms:g} ms (the file has: {have})")
    return ImportResult(profile=profile, skipped=skipped)
