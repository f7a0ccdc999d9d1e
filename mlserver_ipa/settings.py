"""The formats the variant runtime reads and answers: its model settings, per-request SLO parameters, and the
control endpoint's body and state.

`RuntimeSettings` is `parameters.extra` of a `model-settings.json` whose implementation is
`mlserver_ipa.runtime.VariantRuntime`, for example::

    {"name": "resnet", "implementation": "mlserver_ipa.runtime.VariantRuntime",
     "parameters": {"extra": {
        "variants": [{"name": "resnet18", "uri": "resnet18.onnx", "accuracy": 69.76},
                     {"name": "resnet50", "uri": "resnet50.onnx", "accuracy": 76.13}],
        "active": "resnet18", "batch_size": 4, "max_batch_time_ms": 5, "threads": 1}}}

`ControlRequest` is the body of `POST /v2/models/<model>/control`; `ControlState` is what both `GET` and `POST`
on that path answer. `RequestSLO` is read from V2 request `parameters` (`deadline_ms`, `priority`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

OnLate = Literal["drop", "serve"]

THREADS_PER_CORE = 2
"""Most onnxruntime threads per core of the machine a replica runs on (more only adds switching); the runtime
checks it where it runs (`machine_threads`), the formats only bound it by `MAX_THREADS`."""
MAX_THREADS = 256


def machine_threads() -> int:
    """Most threads a replica on this machine may be given: `THREADS_PER_CORE` × its cores."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)
MAX_BATCH_SIZE = 1024
"""Largest batch a replica may be set to: far past any profiled point, small enough to allocate."""
MAX_BATCH_TIME_MS = 10_000.0
"""Longest batch window, ms: a window is a wait added to every request's latency."""
MAX_QUEUE_LIMIT = 100_000
MAX_DEADLINE_MS = 86_400_000.0
"""Longest per-request deadline, ms (a day): anything longer is "no deadline"; send none instead."""
PRIORITY_RANGE = (-(2**31), 2**31 - 1)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""Variant and model names: letters, digits, `_`, `.`, `-`; no path separators."""


class VariantSpec(BaseModel):
    """One variant the runtime may run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    """Name used in the control endpoint, response parameters and metric labels."""
    uri: str = Field(min_length=1)
    """ONNX file, or a Hugging Face checkpoint folder (`save_pretrained` layout: config.json, weights, tokenizer;
    served in PyTorch, see `tasks`); relative paths are relative to the folder of `model-settings.json`."""
    accuracy: float | None = None
    """Model-card accuracy in percent; reported, never used by the runtime itself."""


class RuntimeSettings(BaseModel):
    """`parameters.extra` of the runtime's `model-settings.json`. Unknown keys are an error, so typos show."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    variants: list[VariantSpec] = Field(min_length=1)
    """Variants this replica may switch between without restarting."""
    active: str | None = None
    """Variant served after load; the first of `variants` when left out."""
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE)
    """Most rows one onnxruntime call takes (requests with several rows count each row)."""
    max_batch_time_ms: float = Field(default=0.0, ge=0, le=MAX_BATCH_TIME_MS)
    """Longest a request waits for a batch to fill, in ms. 0 (as Triton's default): batches form only from
    what is already queued, so batching never adds latency when the server is idle."""
    threads: int = Field(default=1, ge=1, le=MAX_THREADS)
    """onnxruntime intra-op threads: set it to the cores this replica has (at most 2 per core here)."""
    queue_limit: int = Field(default=256, ge=1, le=MAX_QUEUE_LIMIT)
    """Most requests waiting; past it the least urgent one is answered "overloaded" (HTTP 503)."""
    on_late: OnLate = "drop"
    """A request that can no longer meet its deadline: `drop` answers HTTP 504 at once; `serve` serves it
    anyway and counts a deadline miss."""
    default_deadline_ms: float | None = Field(default=None, gt=0, le=MAX_DEADLINE_MS)
    """Deadline for requests that carry none; none means such requests never expire."""
    default_priority: int = 0
    """Priority class of requests that carry none. Lower is more urgent (as Triton's V2 `priority`)."""
    max_request_rows: int = Field(default=64, ge=1, le=MAX_BATCH_SIZE)
    """Most rows (first dimension) one request may carry; larger requests get HTTP 413."""
    max_request_id_chars: int = Field(default=128, ge=8, le=4096)
    """Longest V2 request `id`; longer ones get HTTP 400 (MLServer echoes the id into a response header)."""
    chain_input: str | None = "output"
    """The tensor a previous pipeline stage passes on. Seldon's executor forwards a stage's outputs to the next
    stage under their own names, so when the model's first input is absent and this one is present, it is taken
    as that input and the upstream stage's other outputs are ignored (those named like the model's other inputs
    are kept). None turns chaining off."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Text and speech stages that generate (summarisation, translation, speech recognition): most tokens
    generated per row, greedy (one beam). The model folder's generation config may ask for fewer."""
    max_input_tokens: int = Field(default=512, ge=8)
    """Text stages: rows are truncated to this many tokens (and to the model's positions)."""
    max_audio_s: float = Field(default=30.0, gt=0)
    """Speech stages: longest utterance accepted, in seconds (longer ones get HTTP 400: split them)."""
    ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    """Weight of the newest measurement in the service-time average per (variant, threads, batch)."""
    service_time_deviations: float = Field(default=2.0, ge=0)
    """Mean deviations of the measured service time added to its average when judging deadlines: 0 judges on
    the average batch, 2 (default) also on most slow ones, so fewer requests are admitted and then served late."""

    @model_validator(mode="after")
    def _check_variants(self) -> RuntimeSettings:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(duplicates)}")
        if self.active is None:
            self.active = names[0]
        elif self.active not in names:
            raise ValueError(f"active variant {self.active!r} is not one of the variants ({', '.join(names)})")
        return self

    def variant(self, name: str) -> VariantSpec | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def limits(self) -> SequenceLimits:
        return SequenceLimits(self.max_new_tokens, self.max_input_tokens, self.max_audio_s)


@dataclass(frozen=True)
class SequenceLimits:
    """The bounds of a text or speech stage's work per row (see the fields of `RuntimeSettings`)."""

    max_new_tokens: int = 64
    max_input_tokens: int = 512
    max_audio_s: float = 30.0


class ControlRequest(BaseModel):
    """Body of `POST /v2/models/<model>/control`: any subset of the fields; the rest stay as they are."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    variant: str | None = Field(default=None, pattern=NAME_PATTERN)
    batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    max_batch_time_ms: float | None = Field(default=None, ge=0, le=MAX_BATCH_TIME_MS)
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)
    """At most `THREADS_PER_CORE` × the cores of the machine the replica runs on (the runtime checks)."""
    queue_limit: int | None = Field(default=None, ge=1, le=MAX_QUEUE_LIMIT)
    on_late: OnLate | None = None


class VariantInfo(BaseModel):
    name: str
    accuracy: float | None = None


class ControlState(BaseModel):
    """What the control endpoint answers: the configuration in force and what the runtime measured."""

    model: str
    variant: str
    variants: list[VariantInfo]
    batch_size: int
    max_batch_time_ms: float
    threads: int
    queue_limit: int
    on_late: OnLate
    queue_length: int
    in_flight: int
    service_time_ms: dict[int, float]
    """Service time of the active variant and thread count by batch rows, as the batcher estimates it: at 1 row,
    at the batch size and at every size measured (averages of measurements, interpolated where needed)."""
    switches: int
    """Session swaps (variant or thread changes) since load."""
    last_switch_ms: float | None = None
    """How long the last swap took to build and warm the new session (it served meanwhile)."""


class RequestSLO(BaseModel):
    """The per-request SLO read from V2 request `parameters` (DESIGN.md §3); other parameters are ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=True)

    deadline_ms: float | None = Field(default=None, le=MAX_DEADLINE_MS)
    """Remaining budget in ms, counted from the request's arrival here (when no absolute deadline is given): a
    number (not a string, not a bool)."""
    deadline_at_ms: float | None = None
    """Absolute deadline, epoch ms (`mlserver_ipa.deadlines`); wins over `deadline_ms`."""
    priority: int | None = Field(default=None, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])
    """Priority class; lower is more urgent."""


def describe_validation_error(e: ValidationError) -> str:
    """One line naming each bad field, for error responses (the V2 `{"error": ...}` shape)."""
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def threads_for(cores: float) -> int:
    """onnxruntime intra-op threads for a CPU limit: one per (started) core. Every executor uses this rule."""
    return max(1, math.ceil(cores - 1e-9))
