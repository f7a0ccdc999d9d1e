"""A replica's HTTP layer, before any body is read: stamp the arrival, and shed a request that cannot make it.

`DeadlineMiddleware` is a plain ASGI middleware around MLServer's REST app (`mlserver_ipa.server` installs it).
For every HTTP request it replaces the `ipa-arrival` header with the moment the app was called (epoch ms), so
the runtime counts a relative `deadline_ms` from there and not from when MLServer calls `predict`, after the
body was read and decoded. For `POST /v2/models/<model>[/versions/<v>]/infer` carrying an absolute deadline
(header `ipa-deadline`, see `deadlines`), it answers at once, without reading the body:

    400  the header is not a number
    504  the deadline is gone, or the model's runtime says it cannot be met (queue + its service-time estimate)

The runtime of each model in the process registers the check on `ADMISSION` when it loads (`Admission`); a
model served by another runtime is only checked for a deadline already gone. Errors are the V2 shape
`{"error": "..."}`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from mlserver_ipa.deadlines import (
    ARRIVAL_HEADER,
    DEADLINE_HEADER,
    BadDeadline,
    Clocks,
    format_epoch_ms,
    parse_epoch_ms,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AdmissionCheck = Callable[[float], str | None]
"""Given an absolute deadline (epoch ms), None to admit, else why it cannot be met (the 504's message)."""

_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")
_ARRIVAL = ARRIVAL_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()


class Admission:
    """The admission checks of the models served in this process, by model name."""

    def __init__(self) -> None:
        self._checks: dict[str, AdmissionCheck] = {}

    def register(self, model: str, check: AdmissionCheck) -> None:
        self._checks[model] = check

    def unregister(self, model: str, check: AdmissionCheck) -> None:
        if self._checks.get(model) is check:
            del self._checks[model]

    def knows(self, model: str) -> bool:
        return model in self._checks

    def check(self, model: str, deadline_epoch_ms: float) -> str | None:
        found = self._checks.get(model)
        return None if found is None else found(deadline_epoch_ms)


ADMISSION = Admission()
"""This process's admission checks (one MLServer process serves its models in one place)."""


class DeadlineMiddleware:
    """Stamps arrivals and sheds infer requests whose absolute deadline cannot be met (see module doc)."""

    def __init__(self, app: ASGIApp, admission: Admission = ADMISSION, clocks: Clocks | None = None) -> None:
        self.app = app
        self.admission = admission
        self.clocks = clocks or Clocks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        now_ms = self.clocks.now_ms()
        headers = [(k, v) for k, v in scope.get("headers", []) if k != _ARRIVAL]
        headers.append((_ARRIVAL, format_epoch_ms(now_ms).encode()))
        scope = {**scope, "headers": headers}
        match = _INFER.match(scope.get("path", "")) if scope.get("method") == "POST" else None
        if match is not None:
            raw = next((v for k, v in headers if k == _DEADLINE), None)
            problem = self._judge(match.group(1), raw, now_ms)
            if problem is not None:
                await _answer(send, *problem)
                return
        await self.app(scope, receive, send)

    def _judge(self, model: str, raw: bytes | None, now_ms: float) -> tuple[int, str] | None:
        if raw is None:
            return None
        try:
            deadline = parse_epoch_ms(raw.decode("latin-1"), f"header {DEADLINE_HEADER}")
        except BadDeadline as e:
            return 400, str(e)
        if deadline is None:
            return None
        # The runtime decides for its models (with `on_late: serve` it serves even a late request); for a model of
        # another runtime only a deadline already gone is known.
        reason = self.admission.check(model, deadline)
        if reason is None and not self.admission.knows(model) and deadline <= now_ms:
            reason = f"deadline exceeded on arrival at model {model!r} ({now_ms - deadline:.1f} ms late)"
        return None if reason is None else (504, reason)


async def _answer(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
