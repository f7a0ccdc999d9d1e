"""Profiles: the measured latency and throughput of each variant at each batch size and core count.

A profile is a CSV file (DESIGN.md §3), one row per measured point:

    stage,variant,batch,cores,p50_ms,p99_ms,mean_ms,throughput_rps,samples,machine

- `p50_ms`, `p99_ms`, `mean_ms`: the time one request takes when the replica serves one full batch at a time
  (batch formation, the batch's compute, codecs and HTTP), as `adapter.profiling.profiler` measures it.
- `throughput_rps`: the highest throughput the replica sustains at that point (closed loop at saturation).
- `samples`: requests behind the latency figures; `machine`: where and how it was measured
  (`python-2c:cgroup-v1`, or `infadapter-paper:tf-serving:queued-at-sla` for imported published numbers; a
  value ending in `:queued-at-sla` says the latency already includes queueing at `throughput_rps`).

A profile describes a *set of variants*, not a stage: it is matched to a stage by variant name, so one ResNet
profile serves both the single-stage ResNet graph and the classifier stage of the video pipeline. The `stage`
column records what the rows were measured as (the demo family, or the stage name) and is informational.
A (variant, batch, cores) point appears at most once.

`Profile.point` answers for any point: the measured row when there is one, else a prediction from the
variant's fitted latency model (`adapter.profiling.latency_model`), marked `samples=0, machine="model-fit"`.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapter.errors import SpecError
from adapter.profiling.latency_model import VariantFit, fit_variant
from adapter.spec import GraphSpec, StageSpec

COLUMNS: tuple[str, ...] = (
    "stage",
    "variant",
    "batch",
    "cores",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    "throughput_rps",
    "samples",
    "machine",
)
MODEL_FIT = "model-fit"
QUEUED_MARK = ":queued-at-sla"
"""The tail of a `machine` value saying that the row's latency already includes queueing at the throughput it
gives (measured as the largest load whose p99 met an SLA, as InfAdapter did): the optimizer does not charge
queueing on top of it (`adapter.decision.stage_latency`)."""


def includes_queueing(machine: str) -> bool:
    """Whether a profile row's origin says its latency already includes queueing at its throughput."""
    return machine.endswith(QUEUED_MARK)


@dataclass(frozen=True)
class ProfilePoint:
    """One (variant, batch, cores) point: latencies in ms, throughput in requests per second."""

    stage: str
    variant: str
    batch: int
    cores: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    throughput_rps: float
    samples: int
    machine: str

    @property
    def key(self) -> tuple[str, int, float]:
        return (self.variant, self.batch, _core_key(self.cores))

    @property
    def measured(self) -> bool:
        return not self.machine.startswith(MODEL_FIT)


def _core_key(cores: float) -> float:
    return round(float(cores), 6)


class _Row(BaseModel):
    """One CSV row as read from the file; validated here, then turned into a `ProfilePoint`."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    stage: str = Field(min_length=1)
    variant: str = Field(min_length=1)
    batch: int = Field(ge=1)
    cores: float = Field(gt=0, allow_inf_nan=False)
    p50_ms: float = Field(gt=0, allow_inf_nan=False)
    p99_ms: float = Field(gt=0, allow_inf_nan=False)
    mean_ms: float = Field(gt=0, allow_inf_nan=False)
    throughput_rps: float = Field(ge=0, allow_inf_nan=False)
    samples: int = Field(ge=0)
    machine: str = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> _Row:
        if self.p99_ms < self.p50_ms * (1 - 1e-6):
            raise ValueError(f"p99_ms {self.p99_ms} is below p50_ms {self.p50_ms}")
        return self


@dataclass
class Profile:
    """The points of one profile file, with a latency model per variant fitted on demand."""

    points: list[ProfilePoint] = field(default_factory=list)
    source: Path | None = None
    _fits: dict[str, VariantFit] = field(default_factory=dict, init=False, repr=False, compare=False)
    _index: dict[tuple[str, int, float], ProfilePoint] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for p in self.points:
            if p.key in self._index:
                raise ValueError(f"point repeats: variant {p.variant} batch {p.batch} cores {p.cores:g}")
            self._index[p.key] = p

    # -- files ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile CSV; `SpecError(file, "line N: column", reason)` for anything wrong with it."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(str(p), "(file)", "profile missing: no such file") from None
        except UnicodeDecodeError as e:
            raise SpecError(str(p), "(file)", f"unreadable profile: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise SpecError(str(p), "(file)", f"unreadable profile: {e.strerror or e}") from None
        return cls.parse(text, p)

    @classmethod
    def parse(cls, text: str, file: str | Path = "<profile>") -> Profile:
        try:
            reader = csv.DictReader(io.StringIO(text))
            header = reader.fieldnames
        except csv.Error as e:
            raise SpecError(str(file), "line 1", f"unreadable profile: {e}") from None
        if not header:
            raise SpecError(str(file), "line 1", f"empty profile: expected the header {','.join(COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        extra = [c for c in header if c not in COLUMNS]
        if missing or extra:
            what = (f"missing column(s) {', '.join(missing)}" if missing else "") + (
                ("; " if missing and extra else "") + (f"unknown column(s) {', '.join(extra)}" if extra else "")
            )
            raise SpecError(str(file), "line 1", f"{what}; expected {','.join(COLUMNS)}")
        reader.fieldnames = header
        points: list[ProfilePoint] = []
        seen: dict[tuple[str, int, float], int] = {}
        try:
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    raise SpecError(str(file), f"line {line}", f"expected {len(COLUMNS)} fields")
                try:
                    r = _Row.model_validate(row)
                except ValidationError as e:
                    err = e.errors()[0]
                    col = ".".join(str(x) for x in err["loc"]) or "(row)"
                    msg = err["msg"].removeprefix("Value error, ")
                    raise SpecError(str(file), f"line {line}: {col}", f"{msg} (got {row.get(col, '')!r})"
                                    if col in row else msg) from None
                pt = ProfilePoint(**r.model_dump())
                if pt.key in seen:
                    raise SpecError(
                        str(file), f"line {line}",
                        f"variant {pt.variant} batch {pt.batch} cores {pt.cores:g} repeats line {seen[pt.key]}",
                    )
                seen[pt.key] = line
                points.append(pt)
        except csv.Error as e:
            raise SpecError(str(file), f"line {reader.line_num}", f"unreadable profile: {e}") from None
        return cls(points=points, source=Path(file) if str(file) != "<profile>" else None)

    def save(self, path: str | Path) -> None:
        """Write the CSV atomically (a temporary file renamed over the old one), rows in a stable order."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        order = {v: i for i, v in enumerate(self.variants())}
        for pt in sorted(self.points, key=lambda q: (order[q.variant], q.batch, q.cores)):
            w.writerow(
                [pt.stage, pt.variant, pt.batch, f"{pt.cores:g}", f"{pt.p50_ms:.2f}", f"{pt.p99_ms:.2f}",
                 f"{pt.mean_ms:.2f}", f"{pt.throughput_rps:.2f}", pt.samples, pt.machine]
            )
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(buf.getvalue())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- queries --------------------------------------------------------------------------------------

    def variants(self) -> list[str]:
        """Variant names in the order they first appear."""
        return list(dict.fromkeys(p.variant for p in self.points))

    def rows(self, variant: str) -> list[ProfilePoint]:
        return [p for p in self.points if p.variant == variant]

    def has(self, variant: str, batch: int, cores: float) -> bool:
        return (variant, batch, _core_key(cores)) in self._index

    def add(self, point: ProfilePoint, replace: bool = False) -> None:
        """Add a measured point (replacing an existing one only when `replace`)."""
        if point.key in self._index:
            if not replace:
                raise ValueError(f"point exists: {point.key}")
            self.points.remove(self._index[point.key])
        self.points.append(point)
        self._index[point.key] = point
        self._fits.pop(point.variant, None)

    def fit(self, variant: str) -> VariantFit:
        """The latency model of one variant, fitted on its measured points (cached)."""
        if variant not in self._fits:
            rows = self.rows(variant)
            if not rows:
                raise KeyError(variant)
            self._fits[variant] = fit_variant(
                [p.batch for p in rows], [p.cores for p in rows], [p.p50_ms for p in rows],
                [p.p99_ms for p in rows], [p.mean_ms for p in rows], [p.throughput_rps for p in rows],
            )
        return self._fits[variant]

    def point(self, variant: str, batch: int, cores: float) -> ProfilePoint:
        """The measured point if there is one, else the fitted model's prediction; KeyError for an unknown variant."""
        measured = self._index.get((variant, batch, _core_key(cores)))
        if measured is not None:
            return measured
        return self.predict(variant, batch, cores)

    def predict(self, variant: str, batch: int, cores: float) -> ProfilePoint:
        """The fitted model's figures even where a point was measured: smooth and monotone where the
        measurements are noisy (a shared machine); KeyError for an unknown variant."""
        f = self.fit(variant)  # KeyError for an unknown variant
        p50 = f.p50.model(batch, cores)
        p99 = max(f.p99.model(batch, cores), p50)
        return ProfilePoint(
            stage=self.rows(variant)[0].stage,
            variant=variant,
            batch=batch,
            cores=float(cores),
            p50_ms=p50,
            p99_ms=p99,
            mean_ms=f.mean.model(batch, cores),
            throughput_rps=f.throughput(batch, cores),
            samples=0,
            # a fit through points that include queueing includes it too
            machine=MODEL_FIT + (QUEUED_MARK if all(includes_queueing(p.machine) for p in self.rows(variant)) else ""),
        )

    def machines(self) -> list[str]:
        return sorted({p.machine for p in self.points})


def merge(points: Iterable[ProfilePoint]) -> Profile:
    """A profile from points, later points replacing earlier ones at the same (variant, batch, cores)."""
    prof = Profile()
    for p in points:
        prof.add(p, replace=True)
    return prof


def load_stage_profile(spec: GraphSpec, stage: StageSpec) -> Profile:
    """The profile of one stage, checked to cover its variants.

    A missing or unreadable file raises `SpecError` naming the spec file and `stages[i].profile` and the
    `ipa profile` command that measures it; a variant without rows names `stages[i].variants[j]`.
    """
    i = spec.stages.index(stage)
    path = spec.profile_path(stage)
    where = str(spec.source) if spec.source is not None else "<spec>"
    if not path.exists():
        raise SpecError(
            where, f"stages[{i}].profile",
            f"profile missing: {stage.profile} does not exist; run `{spec.profile_command(stage)}` to measure it",
        )
    try:
        prof = Profile.load(path)
    except SpecError as e:
        if e.field == "(file)":  # the file itself cannot be read: name the spec field that points at it
            raise SpecError(where, f"stages[{i}].profile", f"{e.reason}: {path}") from None
        raise
    have = set(prof.variants())
    for j, v in enumerate(stage.variants):
        if v.name not in have:
            raise SpecError(
                where, f"stages[{i}].variants[{j}].name",
                f"variant {v.name} has no rows in profile {stage.profile}; measure it with "
                f"`{spec.profile_command(stage, [v.name])}`",
            )
    return prof


def load_graph_profiles(spec: GraphSpec) -> dict[str, Profile]:
    """Every stage's profile by stage name (what the optimizer needs before it can solve)."""
    return {s.name: load_stage_profile(spec, s) for s in spec.stages}
