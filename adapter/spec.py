"""The inference-graph spec: the YAML a user writes to describe a pipeline (DESIGN.md §3).

`load_spec(path)` reads and validates it; any mistake raises `SpecError` whose one-line message names the file
and the field (`inference_graphs/x.yaml: stages[1].variants[0].accuracy: Field required`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapter.errors import SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_WEIGHT = 1e6
"""Largest objective weight: past it one term swamps the others by more than floats can still compare, and
products of weights and cores or batch sizes would overflow to infinity (which JSON cannot carry)."""
MAX_SLO_MS = 3_600_000.0
"""Longest end-to-end SLO, ms (an hour): an interactive pipeline's SLO is far below it."""


class Objective(_Strict):
    """Weights of `alpha·accuracy − beta·cores − delta·batch (− energy·joules)`."""

    alpha: float = Field(1.0, ge=0, le=MAX_WEIGHT, description="weight of pipeline accuracy (accuracy as a fraction 0..1)")
    beta: float = Field(0.01, ge=0, le=MAX_WEIGHT, description="cost of one core")
    delta: float = Field(0.0, ge=0, le=MAX_WEIGHT, description="cost of one unit of batch size (latency pressure)")
    energy: float = Field(0.0, ge=0, le=MAX_WEIGHT,
                          description="optional cost of one core-second of energy; 0 disables it")


class VariantSpec(_Strict):
    """One model variant a stage may run."""

    name: str = Field(min_length=1)
    accuracy: float = Field(gt=0, le=100, description="model-card accuracy in percent")
    model: str | None = Field(None, description="path to the variant's ONNX file or Hugging Face checkpoint folder; None for a demo family")


class StaticConfig(_Strict):
    """The fixed configuration of a stage used by the `static` policy (and as the start of the others)."""

    variant: str
    batch: int = Field(1, ge=1)
    cores: float = Field(1.0, gt=0)
    replicas: int = Field(1, ge=1)


class StageSpec(_Strict):
    """One stage of the pipeline and the choices the optimizer has for it."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    family: str | None = Field(None, description="demo family built by `ipa models build` (resnet, yolo, s2t, squad2-qa, sentiment, lang-id, opus-mt, distilbart-xsum)")
    variants: list[VariantSpec] = Field(min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    cores: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0], min_length=1)
    max_replicas: int = Field(4, ge=1)
    max_batch_time_ms: float = Field(50.0, ge=0)
    profile: str = Field(description="profile CSV, relative to the spec file")
    static: StaticConfig | None = None

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return sorted(set(v))

    @field_validator("cores")
    @classmethod
    def _positive_cores(cls, v: list[float]) -> list[float]:
        if any(c <= 0 for c in v):
            raise ValueError("core choices must be > 0")
        return sorted(set(v))

    @model_validator(mode="after")
    def _unique_variants(self) -> StageSpec:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        if self.static is not None and self.static.variant not in names:
            raise ValueError(f"static.variant {self.static.variant!r} is not one of {names}")
        return self

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def static_config(self) -> StaticConfig:
        """The configured static setting, or the most accurate variant at batch 1 on the largest core choice."""
        if self.static is not None:
            return self.static
        best = max(self.variants, key=lambda v: v.accuracy)
        return StaticConfig(variant=best.name, batch=1, cores=self.cores[-1], replicas=1)


class GraphSpec(_Strict):
    """A pipeline: stages in order, its end-to-end SLO and the objective the adapter optimises."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    slo_ms: float = Field(gt=0, le=MAX_SLO_MS, description="end-to-end p99 latency objective")
    objective: Objective = Field(default_factory=lambda: Objective.model_validate({}))
    accuracy: Literal["product", "mean"] = "product"
    budget_cores: float = Field(gt=0)
    cpu_step: float = Field(0.25, gt=0)
    interval_s: float = Field(10.0, gt=0)
    network_ms: float = Field(0.0, ge=0, description="network time added per request on the whole path")
    headroom: float = Field(0.0, ge=0, description="capacity margin over the planned load (0.1 = 10 %)")
    load_quantile: float | None = Field(
        None, gt=0, lt=1,
        description="plan for the forecast raised by this quantile of the predictor's recent relative "
        "under-predictions (conformal, adapter.forecast.conformal); None: plan for the forecast itself",
    )
    load_quantile_window: int = Field(
        30, ge=1, description="how many recent intervals the load quantile is taken over"
    )
    transport: Literal["grpc", "rest"] = Field(
        "grpc", description="how the pipeline's router calls its replicas: V2 gRPC with binary tensors, or V2 "
        "REST/JSON (locally each stage's route `protocol`; on Kubernetes the SeldonDeployment's `spec.transport`)",
    )
    stages: list[StageSpec] = Field(min_length=1)
    # Where the spec was read from; profile paths are relative to it. Not part of the YAML.
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_stages(self) -> GraphSpec:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        return self

    def check(self, file: str | Path = "<spec>") -> None:
        """Checks across fields that pydantic's per-field rules cannot name precisely; `SpecError` if one fails."""
        step = self.cpu_step
        for i, s in enumerate(self.stages):
            for j, c in enumerate(s.cores):
                if abs(c / step - round(c / step)) > 1e-6:
                    raise SpecError(
                        str(file), f"stages[{i}].cores[{j}]", f"{c:g} is not a multiple of cpu_step {step:g}"
                    )
        smallest = sum(s.cores[0] for s in self.stages)
        if smallest > self.budget_cores + 1e-9:
            raise SpecError(
                str(file), "budget_cores",
                f"{self.budget_cores:g} is less than the {smallest:g} cores one replica of every stage needs "
                "at its smallest core choice",
            )

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def profile_path(self, stage: StageSpec) -> Path:
        base = self.source.parent if self.source is not None else Path.cwd()
        return (base / stage.profile).resolve()

    def profile_command(self, stage: StageSpec, variants: list[str] | None = None) -> str:
        """The `ipa profile` command that measures a stage's profile (quoted in error messages)."""
        cmd = f"ipa profile {self.source if self.source is not None else 'GRAPH.yaml'} --stage {stage.name}"
        return cmd + (" --variants " + " ".join(variants) if variants else "")

    def require_profiles(self) -> None:
        """`SpecError` naming `stages[i].profile` for the first profile file that does not exist."""
        for i, s in enumerate(self.stages):
            path = self.profile_path(s)
            if not path.exists():
                raise SpecError(
                    str(self.source or "<spec>"), f"stages[{i}].profile",
                    f"profile missing: {s.profile} does not exist; run `{self.profile_command(s)}` to measure it",
                )


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _suggestion(name: str) -> str:
    known = {f for m in (GraphSpec, StageSpec, VariantSpec, Objective, StaticConfig) for f in m.model_fields}
    known.discard("source")
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_spec(data: object, file: str | Path = "<spec>") -> GraphSpec:
    """Validate already-parsed YAML; raise `SpecError` naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError(str(file), "(top level)", "expected a mapping of fields")
    if "source" in data:
        raise SpecError(str(file), "source", "unknown field")
    try:
        spec = GraphSpec.model_validate({**data, "source": Path(file) if str(file) != "<spec>" else None})
    except ValidationError as e:
        # An unknown field first: it is often a misspelt required one, which pydantic reports as missing.
        errors = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")
        err = errors[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field" + _suggestion(str(err["loc"][-1]))
        raise SpecError(str(file), _field_path(tuple(err["loc"])), msg) from None
    spec.check(file)
    return spec


def load_spec(path: str | Path, require_profiles: bool = False) -> GraphSpec:
    """Read and validate an inference-graph YAML file.

    With `require_profiles` (before solving), a profile file that does not exist is an error too; the message
    says which `ipa profile` command measures it. `adapter.profiling.profile.load_graph_profiles` reads and checks them.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SpecError(str(p), "(file)", e.strerror or str(e)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise SpecError(str(p), where, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    spec = parse_spec(data, p)
    if require_profiles:
        spec.require_profiles()
    return spec
