"""The HTTP/1.1 connection of every server of the pipeline: uvicorn's httptools (or h11) protocol with the
limits an ASGI app cannot see, and the one place where a server's ASGI app is wrapped with our middlewares.

Before a request reaches any app, per connection (`RequestLimits`):

    400  request line + headers over `max_header_bytes`, or not HTTP at all
    408  the headers did not arrive within `header_timeout_s` of the request's first byte (slowloris);
         the connection is closed
    --   a connection that sends nothing for `idle_timeout_s` is closed

All answered in the V2 error shape `{"error": ...}`. `on_request(scope)`, when given, is called for every request
as soon as its headers are parsed: before its body is read and before the task that runs the app is scheduled, so
a busy event loop cannot delay it behind other requests (the router counts and stamps arrivals there; what it
puts in `scope["state"]` the app reads as `request.state`). `uvicorn_options(limits, wrap)` gives the options that
make uvicorn use it (`uvicorn.Config(app, **options)`); `wrap` is applied once to the app uvicorn serves, so
MLServer's own app (which we do not build) gets `LimitsMiddleware` and `WriteAuth` too (`mlserver_ipa.server`).

Two parsers, the same guard: httptools (llhttp, C) is the default where it is installed, h11 (pure Python)
otherwise or when `$IPA_HTTP_PARSER=h11`. h11 bounds a head itself (`h11_max_incomplete_event_size`);
httptools has no such bound, so the guard counts the request line and header bytes as the parser hands them
over. `benchmarks/http_parser.py` measures what each costs per request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

from mlserver_ipa.auth import ASGIApp, WriteAuth
from mlserver_ipa.limits import LimitsMiddleware, RequestLimits


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class _ConnectionGuard:
    """The guard shared by both parsers: a time limit on the headers, a closed idle connection, V2-shaped 400s
    (see module doc). Mixed in before uvicorn's protocol class; made per server by `guarded_protocol`, which
    sets `limits` and `wrap`."""

    limits: RequestLimits = RequestLimits()
    wrap: Callable[[ASGIApp], ASGIApp] | None = None
    on_request: Callable[[dict[str, Any]], None] | None = None
    _wrapped: dict[int, ASGIApp]
    # uvicorn's protocol attributes the guard reads
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    app: ASGIApp

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        if self.wrap is not None:
            key = id(config.loaded_app)
            if key not in self._wrapped:
                self._wrapped[key] = self.wrap(config.loaded_app)
            self.app = self._wrapped[key]
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._idle_timer = self.loop.call_later(self.limits.idle_timeout_s, self._idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)  # type: ignore[misc]

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._head_timer is None and self._waiting_for_headers():
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timeout)
        super().data_received(data)  # type: ignore[misc]
        if self._head_timer is not None and not self._waiting_for_headers():
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self._head_timer is not None:  # a request's headers came after the previous answer: start afresh
            self._head_timer.cancel()
            self._head_timer = None

    def _accepted(self, before: Any) -> None:
        """Tell `on_request` of a request whose headers were parsed just now (a cycle other than `before`)."""
        if self.on_request is not None and self.cycle is not None and self.cycle is not before:
            self.on_request(self.cycle.scope)

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
        if self.transport.is_closing():
            return
        self.transport.write(_raw_error(400, "Bad Request", f"invalid HTTP request (malformed, or its line and "
                                        f"headers are over {self.limits.max_header_bytes} bytes)"))
        self.transport.close()


class GuardedH11Protocol(_ConnectionGuard, H11Protocol):
    """h11 with the guard; h11 itself stops buffering a head at `h11_max_incomplete_event_size`."""

    def handle_events(self) -> None:  # a request's head parsed (from new data, or one pipelined behind an answer)
        before = self.cycle
        super().handle_events()
        self._accepted(before)


class _HeadTooLarge(Exception):
    """Raised in an httptools callback: the parser turns it into an HttpParserError, answered 400."""


def _httptools_protocol() -> type[Any] | None:
    if importlib.util.find_spec("httptools") is None:
        return None
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(_ConnectionGuard, HttpToolsProtocol):
        """httptools with the guard, and the head's bytes counted as the parser hands them over."""

        _head_bytes = 0

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            super().on_message_begin()

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > self.limits.max_header_bytes:
                raise _HeadTooLarge

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            self._accepted(before)

    return GuardedHttpToolsProtocol


Parser = Literal["httptools", "h11"]
_HTTPTOOLS = _httptools_protocol()


def default_parser() -> Parser:
    """httptools where it is installed, unless `$IPA_HTTP_PARSER` says h11."""
    wanted = os.environ.get("IPA_HTTP_PARSER", "").strip().lower()
    if wanted == "h11" or _HTTPTOOLS is None:
        return "h11"
    return "httptools"


def guard(app: ASGIApp, limits: RequestLimits, token: str | None, writes: Sequence[tuple[str, str]]) -> ASGIApp:
    """`app` behind the token check for its `writes` (before any body is read), then the request limits."""
    return WriteAuth(LimitsMiddleware(app, limits), token, writes)


def guarded_protocol(limits: RequestLimits, wrap: Callable[[ASGIApp], ASGIApp] | None = None,
                     parser: Parser | None = None,
                     on_request: Callable[[dict[str, Any]], None] | None = None) -> type[Any]:
    """The protocol class for one server: `limits` at the connection, `wrap` applied once to its app,
    `on_request` told of every request as its head is parsed."""
    chosen = parser or default_parser()
    if chosen == "httptools" and _HTTPTOOLS is None:
        raise ValueError("the httptools parser is not installed (pip install httptools), use h11")
    base: type[Any] = GuardedH11Protocol if chosen == "h11" or _HTTPTOOLS is None else _HTTPTOOLS
    return type(base.__name__, (base,), {"limits": limits, "wrap": staticmethod(wrap) if wrap is not None else None,
                                         "on_request": staticmethod(on_request) if on_request is not None else None,
                                         "_wrapped": {}})


def uvicorn_options(limits: RequestLimits, wrap: Callable[[ASGIApp], ASGIApp] | None = None,
                    parser: Parser | None = None,
                    on_request: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Options for `uvicorn.Config` (or MLServer's REST server settings) that put `limits` on every connection
    (and `on_request`, see module doc)."""
    return {"http": guarded_protocol(limits, wrap, parser, on_request),
            "h11_max_incomplete_event_size": limits.max_header_bytes}
