"""Sessions of the variants: built beside the active one, warmed up, then swapped in one step.

A `VariantSession` is one ONNX variant loaded in onnxruntime with a given number of intra-op threads; a variant
whose `uri` is a Hugging Face checkpoint folder opens as a `transformers_session.TransformersSession` instead
(`open_session`), with the same interface. `SessionHolder.switch`
builds the next session in a worker thread while the current one keeps serving, warms it up with one short batch
and measures it (`warm_up`: the batcher knows its service times before the first real batch), and only then
replaces the reference the batcher reads at each dispatch. A batch already running keeps the session it started with; no request waits
for a build and none fails because of a swap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from mlserver_ipa.measuring import fastest
from mlserver_ipa.ort_options import session_options
from mlserver_ipa.settings import SequenceLimits
from mlserver_ipa.tasks import is_model_folder
from mlserver_ipa.tensor_spec import ORT_TYPES, V2_DATATYPES, Signature, TensorSpec, signature_of, spec_of

__all__ = ["V2_DATATYPES", "Session", "SessionHolder", "TensorSpec", "VariantSession", "open_session", "session_options",
           "spec_of"]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type not in ORT_TYPES:
        raise ValueError(f"{arg.name}: unsupported tensor type {arg.type}")
    dtype, datatype = ORT_TYPES[arg.type]
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, dtype, datatype, shape)


class VariantSession:
    """One variant's onnxruntime session with a fixed number of intra-op threads."""

    def __init__(self, variant: str, path: Path, threads: int) -> None:
        self.variant = variant
        self.path = path
        self.threads = threads
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        for spec in self.inputs:
            if not spec.shape or spec.shape[0] is not None:
                raise ValueError(
                    f"variant {variant}: input {spec.name!r} has shape {list(spec.shape)}; the runtime batches "
                    "along the first dimension, so it must be dynamic"
                )

    @property
    def config(self) -> tuple[str, int]:
        """What its service times are measured under."""
        return (self.variant, self.threads)

    def signature(self) -> Signature:
        """Inputs and outputs as requests see them (`tensor_spec.signature_of`)."""
        return signature_of(self.inputs, self.outputs)

    def batch_key(self, feeds: Mapping[str, np.ndarray]) -> tuple:
        """Requests whose dynamic non-batch dimensions differ cannot share one call."""
        return tuple(a.shape[1:] for a in feeds.values())

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Nothing beyond the signature (`tensors` checks it)."""

    async def run_requests(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Run requests of one `batch_key` as one call; outputs are their rows in order."""
        if len(requests) == 1:
            return await self.run(requests[0])
        return await self.run({s.name: np.concatenate([r[s.name] for r in requests]) for s in self.inputs})

    def run_sync(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))

    async def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run in a worker thread: onnxruntime releases the GIL, the event loop keeps taking requests."""
        return await asyncio.to_thread(self.run_sync, feeds)

    def zeros(self, rows: int) -> dict[str, np.ndarray]:
        """Feeds of `rows` rows of zeros (dynamic non-batch dimensions take 1)."""
        return {s.name: np.zeros((rows, *(d or 1 for d in s.shape[1:])), dtype=s.dtype) for s in self.inputs}

    def measure(self, rows: int, repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
        """Fastest of `repeats` runs on zeros, in seconds (the first run also pays one-off allocations)."""
        feeds = self.zeros(rows)
        return fastest(lambda: self.run_sync(feeds), repeats, clock)


class Session(Protocol):
    """What the runtime needs of a loaded variant (`VariantSession`, `TransformersSession`)."""

    variant: str
    threads: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def config(self) -> tuple[str, int]: ...

    def signature(self) -> Signature: ...

    def batch_key(self, feeds: Mapping[str, np.ndarray]) -> tuple: ...

    def check(self, feeds: Mapping[str, np.ndarray]) -> None: ...

    async def run_requests(self, requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]: ...

    def measure(self, rows: int, repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float: ...


def open_session(variant: str, path: Path, threads: int, limits: SequenceLimits) -> Session:
    """The session for `path`: a Hugging Face checkpoint folder in PyTorch, otherwise an ONNX file."""
    if is_model_folder(path):
        from mlserver_ipa.transformers_session import TransformersSession  # torch: only where needed

        return TransformersSession(variant, path, threads, limits)
    return VariantSession(variant, path, threads)


# A warm-up run slower than this is not repeated, and larger batches are not measured before the swap: their
# times are extrapolated from it (an over-estimate, since batches are sublinear) until real batches are timed.
# A seq2seq variant's run takes seconds; measuring it 3 times at 1 and at its batch size made a switch take
# 37-84 s beside a serving old variant that the warm-up starved (benchmarks/transformers_runtime.py --switch).
QUICK_WARMUP_S = 0.25


def warm_up(
    session: Session, rows: tuple[int, ...], clock: Callable[[], float] = time.perf_counter
) -> dict[int, float]:
    """Seconds per batch of `rows` rows, measured on the sample input before the session serves.

    Fast sessions (a run under `QUICK_WARMUP_S`) are measured at every size, best of 3; slow ones run one
    batch of the smallest size once, which is the warm-up and the measurement at once."""
    sizes = sorted(set(rows))
    first = session.measure(sizes[0], repeats=1, clock=clock)
    if first > QUICK_WARMUP_S:
        return {sizes[0]: first}
    measured = {sizes[0]: min(first, session.measure(sizes[0], repeats=2, clock=clock))}
    for n in sizes[1:]:
        measured[n] = session.measure(n, clock=clock)
    return measured


class SessionHolder:
    """Holds the active `VariantSession`; `switch` builds and warms the next one beside it, then swaps."""

    def __init__(self) -> None:
        self._active: Session | None = None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> Session:
        if self._active is None:
            raise LookupError("no session loaded yet")
        return self._active

    @property
    def loaded(self) -> bool:
        return self._active is not None

    async def switch(
        self,
        variant: str,
        path: Path,
        threads: int,
        warmup_rows: tuple[int, ...] = (1,),
        check: Callable[[Session], None] | None = None,
        limits: SequenceLimits | None = None,
    ) -> tuple[Session, dict[int, float]]:
        """Build `variant` with `threads`, let `check` veto it (by raising), measure it at `warmup_rows`, make
        it active; return it and the measured seconds per rows. On any error the old session stays active."""
        async with self._lock:
            new = await asyncio.to_thread(open_session, variant, path, threads, limits or SequenceLimits())
            if check is not None:
                check(new)
            measured = await asyncio.to_thread(warm_up, new, warmup_rows)
            self._active = new  # the swap: the batcher reads this reference at each dispatch
            return new, measured

    def release(self) -> None:
        self._active = None
