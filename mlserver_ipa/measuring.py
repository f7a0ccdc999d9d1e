"""How a loaded session is timed before it serves: the fastest of a few runs of one representative call.

Every session kind (`session.VariantSession`, `transformers_session.TransformersSession`) seeds the batcher's
service times with this, so a variant's first deadlines are judged on a measurement, not a guess.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def fastest(run: Callable[[], object], repeats: int = 3, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of the fastest of `repeats` (at least one) calls of `run`; the first also pays one-off allocations."""
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = clock()
        run()
        best = min(best, clock() - t0)
    return best
