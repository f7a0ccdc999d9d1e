"""onnxruntime sessions of the variants: built beside the active one, warmed up, then swapped in one step.

A `VariantSession` is one variant loaded with a given number of intra-op threads. `SessionHolder.switch`
builds the next session in a worker thread while the current one keeps serving, measures it on zeros (so the
batcher knows its service times before the first real batch), and only then replaces the reference the
batcher reads at each dispatch. A batch already running keeps the session it started with; no request waits
for a build and none fails because of a swap.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

# onnxruntime type strings -> numpy dtypes and V2 datatypes.
_ORT_TYPES: dict[str, tuple[np.dtype, str]] = {
    "tensor(float)": (np.dtype(np.float32), "FP32"),
    "tensor(double)": (np.dtype(np.float64), "FP64"),
    "tensor(float16)": (np.dtype(np.float16), "FP16"),
    "tensor(int8)": (np.dtype(np.int8), "INT8"),
    "tensor(int16)": (np.dtype(np.int16), "INT16"),
    "tensor(int32)": (np.dtype(np.int32), "INT32"),
    "tensor(int64)": (np.dtype(np.int64), "INT64"),
    "tensor(uint8)": (np.dtype(np.uint8), "UINT8"),
    "tensor(uint16)": (np.dtype(np.uint16), "UINT16"),
    "tensor(uint32)": (np.dtype(np.uint32), "UINT32"),
    "tensor(uint64)": (np.dtype(np.uint64), "UINT64"),
    "tensor(bool)": (np.dtype(np.bool_), "BOOL"),
}


V2_DATATYPES: dict[np.dtype, str] = {dtype: datatype for dtype, datatype in _ORT_TYPES.values()}
"""numpy dtype -> V2 datatype, for the types onnxruntime returns."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, element type and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    datatype: str
    """The V2 datatype (FP32, INT64, ...)."""
    shape: tuple[int | None, ...]

    def signature(self) -> tuple[str, str, tuple[int | None, ...]]:
        """What must match for requests queued for one variant to be served by another."""
        return (self.name, self.datatype, self.shape[1:])


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type not in _ORT_TYPES:
        raise ValueError(f"{arg.name}: unsupported tensor type {arg.type}")
    dtype, datatype = _ORT_TYPES[arg.type]
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, dtype, datatype, shape)


def session_options(threads: int) -> ort.SessionOptions:
    """Options used for every session: `threads` intra-op threads and no busy-waiting.

    Spinning worker threads would burn the replica's CPU quota while the queue is empty, and with several
    replicas on one machine they would steal cycles from each other.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


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

    def signature(self) -> tuple[tuple[tuple[str, str, tuple[int | None, ...]], ...], ...]:
        """Inputs and outputs as requests see them: variants with equal signatures can serve each other's queue."""
        return (tuple(s.signature() for s in self.inputs), tuple(s.signature() for s in self.outputs))

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
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = clock()
            self.run_sync(feeds)
            best = min(best, clock() - t0)
        return best


class SessionHolder:
    """Holds the active `VariantSession`; `switch` builds and warms the next one beside it, then swaps."""

    def __init__(self) -> None:
        self._active: VariantSession | None = None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> VariantSession:
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
        check: Callable[[VariantSession], None] | None = None,
    ) -> tuple[VariantSession, dict[int, float]]:
        """Build `variant` with `threads`, let `check` veto it (by raising), measure it at `warmup_rows`, make
        it active; return it and the measured seconds per rows. On any error the old session stays active."""
        async with self._lock:
            new = await asyncio.to_thread(VariantSession, variant, path, threads)
            if check is not None:
                check(new)
            measured = {}
            for rows in sorted(set(warmup_rows)):
                measured[rows] = await asyncio.to_thread(new.measure, rows)
            self._active = new  # the swap: the batcher reads this reference at each dispatch
            return new, measured

    def release(self) -> None:
        self._active = None
