"""Request limits of every HTTP server of the pipeline (replicas and router), as an ASGI middleware that wraps
any ASGI app, and the settings they are read from.

`LimitsMiddleware(app, RequestLimits())` reads a request's body before the app sees it, and answers in the V2
error shape `{"error": ...}`:

    413  Content-Length or the body read so far is over `max_body_bytes`; a compressed body that inflates past
         `max_inflated_bytes` (inflated in bounded steps, never all at once: a 1 MB gzip bomb costs 1 MB)
    400  more than `max_headers` headers, an `x-request-id` over `max_request_id_chars`, a compressed body
         that does not inflate, an encoding other than gzip / deflate / identity
    408  the body did not arrive within `body_timeout_s` (a client sending one byte a second)

The app then gets the body inflated, with `content-encoding` removed. Answers of the app in another error shape
(FastAPI's `{"detail": ...}`, MLServer's 422 for a body that is not a V2 request) are rewritten to
`{"error": ...}`, 422s for bad bodies as 400. The connection-level limits (header bytes, the time to send the
headers, idle connections) are the protocol's: `mlserver_ipa.protocol`.

Every limit is a field of `RequestLimits`, read from `$IPA_LIMIT_<FIELD>` (e.g. `IPA_LIMIT_MAX_BODY_BYTES`),
from the `ipa_limits` object of a replica's `settings.json`, or passed in.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlserver_ipa.auth import ASGIApp, Receive, Scope, Send, header, send_error

ENV_PREFIX = "IPA_LIMIT_"
_INFLATE_STEP = 1 << 20


class RequestLimits(BaseModel):
    """Limits of one HTTP server; every field has a default that serves the demo pipelines with room."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=64 << 20, ge=1024)
    """Largest request body as sent, bytes (64 MiB: a batch of 64 ResNet images at 224 px as JSON is ~40 MB)."""
    max_inflated_bytes: int = Field(default=64 << 20, ge=1024)
    """Largest body after gzip/deflate inflation, bytes; a compressed body that inflates past it is answered 413."""
    max_header_bytes: int = Field(default=16 << 10, ge=1024)
    """Largest request line + headers, bytes (16 KiB, h11's default); past it 400 (protocol)."""
    max_headers: int = Field(default=100, ge=8)
    """Most header lines in one request."""
    max_request_id_chars: int = Field(default=128, ge=8)
    """Longest request id (`x-request-id` header here; a V2 body's `id` is checked by the runtime and router).
    MLServer echoes ids into response headers, so a long one broke the next hop's HTTP parser."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Longest time from a request's first byte to the end of its headers; past it 408 and the connection
    closes (slowloris)."""
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest time to receive a whole body once the headers are in; past it 408."""
    idle_timeout_s: float = Field(default=75.0, gt=0, le=3600)
    """A connection that never sends a request is closed after this long (kept-alive connections between
    requests follow the server's keep-alive time)."""

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, **overrides: Any) -> RequestLimits:
        """Defaults, then `$IPA_LIMIT_<FIELD>` variables, then `overrides` (e.g. a settings file's object).

        Raises `ValueError` naming the field when a value is not valid."""
        import os

        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = raw
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except Exception as e:  # pydantic's ValidationError: one line per field
            raise ValueError(f"request limits: {e}") from None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _inflater(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise _Refused(400, f"content-encoding {encoding!r} is not accepted (gzip, deflate or none)")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """`body` inflated, in steps of at most 1 MiB of output; 413 past `limit` bytes, 400 when corrupt."""
    d = _inflater(encoding)
    out = bytearray()
    data = body
    try:
        while True:
            chunk = d.decompress(data, _INFLATE_STEP)
            out += chunk
            if len(out) > limit:
                raise _Refused(413, f"the body inflates past {limit} bytes (max_inflated_bytes)")
            data = d.unconsumed_tail
            if not data and not chunk:
                break
        out += d.flush()
    except zlib.error as e:
        raise _Refused(400, f"the {encoding} body does not inflate: {e}") from None
    if len(out) > limit:
        raise _Refused(413, f"the body inflates past {limit} bytes (max_inflated_bytes)")
    if not d.eof:
        raise _Refused(400, f"the {encoding} body is truncated")
    return bytes(out)


def _detail_message(detail: Any) -> str:
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if isinstance(err, dict) and err.get("type") == "json_invalid":
                parts.append(f"body is not JSON: {err.get('msg')} (at character {err.get('loc', ['', '?'])[-1]})")
            elif isinstance(err, dict):
                loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
                parts.append(f"{loc}: {err.get('msg', err)}")
            else:
                parts.append(str(err))
        return "; ".join(parts) or "invalid request"
    return str(detail)


class LimitsMiddleware:
    """Applies `RequestLimits` to every HTTP request of `app` (see module doc)."""

    def __init__(self, app: ASGIApp, limits: RequestLimits | None = None) -> None:
        self.app = app
        self.limits = limits or RequestLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            scope, receive = await self._checked(scope, receive)
        except _Refused as e:
            await send_error(send, e.status, str(e), [(b"connection", b"close")])
            return
        await self.app(scope, receive, _error_shape(send))

    async def _checked(self, scope: Scope, receive: Receive) -> tuple[Scope, Receive]:
        lim = self.limits
        headers = list(scope.get("headers") or ())
        if len(headers) > lim.max_headers:
            raise _Refused(400, f"{len(headers)} headers; at most {lim.max_headers} (max_headers)")
        head = sum(len(k) + len(v) + 4 for k, v in headers) + len(scope.get("raw_path") or b"")
        if head > lim.max_header_bytes:  # the protocol stops a head that arrives slowly, this one that came at once
            raise _Refused(400, f"the request line and headers have {head} bytes; at most {lim.max_header_bytes} "
                                "(max_header_bytes)")
        request_id = header(scope, b"x-request-id")
        if request_id is not None and len(request_id) > lim.max_request_id_chars:
            raise _Refused(400, f"x-request-id has {len(request_id)} characters; at most "
                                f"{lim.max_request_id_chars} (max_request_id_chars)")
        length = header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise _Refused(400, "content-length is not a number") from None
            if declared > lim.max_body_bytes:
                raise _Refused(413, f"the body has {declared} bytes; at most {lim.max_body_bytes} "
                                    "(max_body_bytes)")
            if declared == 0:
                return scope, receive
        elif header(scope, b"transfer-encoding") is None:
            return scope, receive  # no body
        body = await self._read_body(receive)
        encoding = (header(scope, b"content-encoding") or b"identity").decode("latin-1").strip().lower()
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-encoding", b"content-length")]
        if encoding not in ("", "identity"):
            body = inflate(body, encoding, lim.max_inflated_bytes)
        kept.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        return {**scope, "headers": kept}, replay

    async def _read_body(self, receive: Receive) -> bytes:
        lim = self.limits
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + lim.body_timeout_s
        while True:
            left = until - loop.time()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.0))
            except TimeoutError:
                raise _Refused(408, f"the body did not arrive within {lim.body_timeout_s:g} s "
                                    "(body_timeout_s)") from None
            if message["type"] == "http.disconnect":
                raise _Refused(400, "the client went away before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > lim.max_body_bytes:
                raise _Refused(413, f"the body is over {lim.max_body_bytes} bytes (max_body_bytes)")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _error_shape(send: Send) -> Send:
    """`send` that rewrites JSON error answers without an `error` field to the V2 shape (422 for a body that
    does not validate becomes 400, as the rest of the pipeline answers bad input)."""
    start: MutableMapping[str, Any] | None = None
    chunks: list[bytes] = []

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            status = int(message["status"])
            ctype = dict((k.lower(), v) for k, v in message.get("headers") or ()).get(b"content-type", b"")
            if status >= 400 and ctype.startswith(b"application/json"):
                start = message  # held until the body is complete
                return
            await send(message)
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        raw = b"".join(chunks)
        status = int(start["status"])
        headers = list(start.get("headers") or ())
        encoding = dict((k.lower(), v) for k, v in headers).get(b"content-encoding", b"")
        try:  # the app's own answer (MLServer gzips answers over 500 bytes)
            text = zlib.decompress(raw, 16 + zlib.MAX_WBITS) if encoding == b"gzip" else raw
            payload = json.loads(text)
        except (ValueError, zlib.error):
            payload = None
        if isinstance(payload, dict) and "error" not in payload and "detail" in payload:
            if status == 422:
                status = 400
            raw = json.dumps({"error": _detail_message(payload["detail"])}).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-encoding"]
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await send({**start, "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": raw})

    return wrapped
