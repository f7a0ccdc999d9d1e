"""The serving processes' heap: what is built at start-up kept out of the garbage collector's passes, its pauses
measured, and memory a burst freed given back to the system.

CPython's collector stops the whole process while it walks the objects it tracks. A full pass over what a router
or a replica imports (FastAPI, pydantic, grpc, MLServer, onnxruntime, transformers: 120-280 thousand objects)
took 110-280 ms on this 2-core machine under load, and the router made one every 20-40 s of a 3x burst
(`benchmarks/overload.py`): every request in flight then waited that long, past its deadline when it had less
left. None of those objects is ever garbage, so `freeze_startup_heap` moves them to the permanent generation
(`gc.freeze`) once a process has imported what it serves: full passes then walk only what was made since. The
router does; replicas do not yet: frozen before their model loaded (after would keep a PyTorch model switched out
in place, which holds reference cycles — 7480 objects for distilbert-sentiment), a replica broke the timing a
failover test relies on (`test_router_failures`: its queue had emptied when the retry was to find it full), not
understood in the time there was.

`GcPauses` exports the pauses as the Prometheus histogram `ipa_gc_pause_seconds{generation}`, so a pause is seen
where it happens, not guessed from a latency tail.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
TRIM_EVERY_S = 5.0


YOUNG_EVERY = 10_000
"""Allocations between young collections (CPython's default is 700). A young collection walks the young objects
still alive, in a server the requests in flight: their number hardly depends on how often it runs, so running
it 14 times less often does 14 times less walking. Under a 3x burst the router's young collections (700) had
taken 2.0-2.5 s of a 95-s run (`benchmarks/overload.py`)."""


def freeze_startup_heap() -> int:
    """Collect what is garbage now, keep every object left out of later passes, and collect the young every
    `YOUNG_EVERY` allocations from now on; how many objects were frozen."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_EVERY, older, oldest)
    return gc.get_freeze_count()


class GcPauses:
    """The collector's pauses in this process, by generation, as `ipa_gc_pause_seconds` in `registry`.

    One per registry and process: the callback stays installed for the process's life (`close` removes it)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.histogram = Histogram("ipa_gc_pause_seconds", "Garbage collector pauses (the whole process stops)",
                                   ["generation"], buckets=PAUSE_BUCKETS, registry=registry)
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.histogram.labels(str(info.get("generation", "?"))).observe(time.perf_counter() - self._started)

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


async def return_freed_memory(every_s: float = TRIM_EVERY_S) -> None:
    """Give the heap a burst's bodies freed back to the system (glibc's `malloc_trim`) every `every_s`: glibc
    keeps freed arenas mapped, memory no request holds. Elsewhere than glibc it returns at once."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await asyncio.sleep(every_s)
        trim(0)
