"""The HTTP/1.1 connection of every server of the pipeline: uvicorn's h11 protocol with the limits an ASGI app
cannot see, and the one place where a server's ASGI app is wrapped with our middlewares.

Before a request reaches any app, per connection (`RequestLimits`):

    400  request line + headers over `max_header_bytes` (h11 stops buffering there), or not HTTP at all
    408  the headers did not arrive within `header_timeout_s` of the request's first byte (slowloris);
         the connection is closed
    --   a connection that sends nothing for `idle_timeout_s` is closed

All answered in the V2 error shape `{"error": ...}`. `uvicorn_options(limits, wrap)` gives the options that
make uvicorn use it (`uvicorn.Config(app, **options)`); `wrap` is applied once to the app uvicorn serves, so
MLServer's own app (which we do not build) gets `LimitsMiddleware` and `WriteAuth` too (`mlserver_ipa.server`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from mlserver_ipa.auth import ASGIApp, WriteAuth
from mlserver_ipa.limits import LimitsMiddleware, RequestLimits


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """h11 with a time limit on the headers, a closed idle connection, and V2-shaped 400s (see module doc).

    Made per server by `guarded_protocol`, which sets `limits` and `wrap`."""

    limits: RequestLimits = RequestLimits()
    wrap: Callable[[ASGIApp], ASGIApp] | None = None
    _wrapped: dict[int, ASGIApp]

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if self.wrap is not None:
            key = id(config.loaded_app)
            if key not in self._wrapped:
                self._wrapped[key] = self.wrap(config.loaded_app)
            self.app = self._wrapped[key]
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout_s, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._head_timer is None and self._waiting_for_headers():
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        super().data_received(data)
        if self._head_timer is not None and not self._waiting_for_headers():
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_timer is not None:  # a request's headers came after the previous answer: start afresh
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._waiting_for_headers():
            return
        self.transport.write(_raw_error(408, "Request Timeout", f"the request's headers did not arrive within "
                                        f"{self.limits.header_timeout_s:g} s (header_timeout_s)"))
        self.transport.close()

    def _idle_timeout(self) -> None:
        self._idle_timer = None
        if not self.transport.is_closing() and self.cycle is None:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(400, "Bad Request", f"invalid HTTP request (malformed, or its line and "
                                        f"headers are over {self.limits.max_header_bytes} bytes)"))
        self.transport.close()


def guard(app: ASGIApp, limits: RequestLimits, token: str | None, writes: Sequence[tuple[str, str]]) -> ASGIApp:
    """`app` behind the token check for its `writes` (before any body is read), then the request limits."""
    return WriteAuth(LimitsMiddleware(app, limits), token, writes)


def guarded_protocol(limits: RequestLimits, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> type[H11Protocol]:
    """The protocol class for one server: `limits` at the connection, `wrap` applied once to its app."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, "wrap": staticmethod(wrap)
                                                               if wrap is not None else None, "_wrapped": {}})


def uvicorn_options(limits: RequestLimits, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> dict[str, Any]:
    """Options for `uvicorn.Config` (or MLServer's REST server settings) that put `limits` on every connection."""
    return {"http": guarded_protocol(limits, wrap), "h11_max_incomplete_event_size": limits.max_header_bytes}
