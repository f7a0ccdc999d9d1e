"""Signals to a foreground command (`ipa up`, `ipa demo`) become one cancellation, so `async with` blocks
unwind and every replica the command started is stopped."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any


def cancel_on_signals(task: asyncio.Task[Any] | None = None,
                      signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """Turn SIGINT/SIGTERM into one cancellation of `task` (default: the running one), so that
    `async with LocalCluster(...)` unwinds and `shutdown()` runs; later signals while stopping are ignored."""
    loop = asyncio.get_running_loop()
    target = task or asyncio.current_task()
    assert target is not None
    fired: list[int] = []

    def handle(sig: signal.Signals) -> None:
        if not fired:
            fired.append(sig)
            print(f"ipa: {sig.name}: stopping the local cluster", file=sys.stderr)
            target.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, handle, sig)
