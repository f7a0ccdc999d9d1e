"""One absolute deadline per request, end to end: how a request's budget is carried between hops and read back.

The user says `parameters.deadline_ms`: the budget left, in ms. The first hop that sees a request (the pipeline
router, or a replica called directly) turns it into an absolute deadline, `arrival + deadline_ms`, on the wall
clock in epoch milliseconds, stamped where the request's first byte is handled (the ASGI app is called once the
request line and headers are parsed, before the body is read). Every later hop is handed that absolute deadline
and computes what is left from it, so time spent in sockets, HTTP parsing, JSON or protobuf decoding and queues
counts wherever it was spent. It travels twice:

- the header (REST) or gRPC metadata key `ipa-deadline`: read before the body, so a replica sheds a request
  whose time is gone without decoding its tensors;
- the V2 parameter `deadline_at_ms`, beside `deadline_ms` (which stays the user-facing, relative form and is
  also filled in, decremented, for servers that know only it).

Clocks: the absolute form assumes the hops' wall clocks agree to well under the SLO, as they do on one machine
or in one cluster kept by NTP (typically within a millisecond). Where no absolute deadline comes with a request,
the relative `deadline_ms` is counted from the arrival stamp of the hop that reads it, so a skewed or missing
clock only loses the time spent before that hop. Inside a process, deadlines are kept on the monotonic clock;
the wall clock is read only to convert at the boundary (`Clocks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEADLINE_HEADER = "ipa-deadline"
"""Header and gRPC metadata key: the absolute deadline, epoch ms (a decimal number)."""
ARRIVAL_HEADER = "ipa-arrival"
"""Header a replica's HTTP layer adds (replacing any a client sent): when the request's headers were read, epoch
ms. The runtime counts a relative `deadline_ms` from it rather than from the moment it is called."""
DEADLINE_PARAM = "deadline_at_ms"
"""V2 request parameter: the absolute deadline, epoch ms."""
RELATIVE_PARAM = "deadline_ms"
"""V2 request parameter: the budget left, ms (the user-facing form)."""


class BadDeadline(ValueError):
    """A deadline header or parameter that is not a finite number."""


def parse_epoch_ms(value: object, where: str) -> float | None:
    """A deadline value (header text or parameter) as epoch ms; None when absent; `BadDeadline` when malformed."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadDeadline(f"{where} must be a number (epoch ms), got {value!r}")
    try:
        number = float(value) if isinstance(value, int | float | str | bytes) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BadDeadline(f"{where} must be a finite number (epoch ms), got {value!r}")
    return number


def header(headers: Mapping[str, Any] | None, name: str) -> object:
    """A header's value from MLServer's `parameters.headers` (or any mapping), whatever its case."""
    if not headers:
        return None
    if name in headers:
        return headers[name]
    lowered = name.lower()
    return next((v for k, v in headers.items() if isinstance(k, str) and k.lower() == lowered), None)


@dataclass(frozen=True)
class Clocks:
    """The two clocks a hop reads: `monotonic` for its own deadlines, `wall` (epoch seconds) at its boundary."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def now_ms(self) -> float:
        return self.wall() * 1000.0

    def to_monotonic(self, epoch_ms: float) -> float:
        """An absolute deadline (epoch ms) on the monotonic clock."""
        return self.monotonic() + (epoch_ms - self.now_ms()) / 1000.0

    def to_epoch_ms(self, monotonic: float) -> float:
        return self.now_ms() + (monotonic - self.monotonic()) * 1000.0


def absolute_deadline(
    deadline_at_ms: float | None, deadline_ms: float | None, arrival_epoch_ms: float
) -> float | None:
    """The request's absolute deadline (epoch ms): the absolute form when given, else the relative one counted
    from `arrival_epoch_ms`; None when it has neither."""
    if deadline_at_ms is not None:
        return deadline_at_ms
    if deadline_ms is not None:
        return arrival_epoch_ms + deadline_ms
    return None


def format_epoch_ms(epoch_ms: float) -> str:
    """The header form of an absolute deadline (µs precision)."""
    return f"{epoch_ms:.3f}"
