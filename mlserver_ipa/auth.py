"""The pipeline's token: one secret shared by the components of one pipeline (router, replicas, adapter), that
every request changing their behaviour must carry as `Authorization: Bearer <token>`.

Where a component finds it (never on a command line, where `ps` shows it to every user):

    IPA_TOKEN_FILE   a file holding the token (what `ipa up` writes, mode 0600, and passes to its replicas)
    IPA_TOKEN        the token itself (for containers whose secret arrives as a variable)

`load_token()` reads them; `check(header, token)` is the one comparison every transport calls (the REST
middleware below, the runtime's control endpoint, a gRPC interceptor passing its `authorization` metadata). A
server without a token refuses every write (403) rather than accepting them from anyone: reads stay open.

    WriteAuth(app, token, writes=[("PUT", r"/router/stages/[^/]+")])   # an ASGI app, any framework
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

TOKEN_ENV = "IPA_TOKEN"
TOKEN_FILE_ENV = "IPA_TOKEN_FILE"
SCHEME = "bearer"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenError(Exception):
    """A write without the right credential; `status` is 401 (none or another token) or 403 (writes are off)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """A fresh random token (192 bits)."""
    return secrets.token_urlsafe(24)


def write_token_file(path: Path, token: str | None = None) -> str:
    """Write `token` (a new one when None) to `path`, readable by this user only; returns the token."""
    token = token or new_token()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return token


def load_token(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The token from `$IPA_TOKEN_FILE` or `$IPA_TOKEN` (file first); None when neither is set.

    Raises `ValueError` when the file is named but cannot be read or is empty: a server must not start open
    because its secret went missing."""
    env = os.environ if environ is None else environ
    path = env.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as e:
            raise ValueError(f"${TOKEN_FILE_ENV}: cannot read {path}: {e.strerror}") from None
        if not token:
            raise ValueError(f"${TOKEN_FILE_ENV}: {path} is empty")
        return token
    return env.get(TOKEN_ENV) or None


def bearer(token: str | None) -> dict[str, str]:
    """The request header carrying `token` (none when there is no token)."""
    return {"authorization": f"Bearer {token}"} if token else {}


def check(authorization: str | bytes | None, token: str | None) -> None:
    """Raise `TokenError` unless `authorization` (the header's value) is `Bearer <token>`.

    The comparison takes the same time wherever the strings differ."""
    if token is None:
        raise TokenError(403, f"writes are disabled: this server has no token (start it with ${TOKEN_FILE_ENV} "
                              f"or ${TOKEN_ENV} set)")
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != SCHEME or not given:
        raise TokenError(401, "this change needs `Authorization: Bearer <token>` (the pipeline's token)")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode()):
        raise TokenError(401, "wrong bearer token")


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case) of an ASGI HTTP scope."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


async def send_error(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with the V2 error shape `{"error": message}` (shared by the ASGI middlewares here)."""
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class WriteAuth:
    """ASGI middleware: requests matching one of `writes` (method, path regex, matched in full) need the token."""

    def __init__(self, app: ASGIApp, token: str | None, writes: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.token = token
        self.writes = [(m.upper(), re.compile(p)) for m, p in writes]

    def protects(self, method: str, path: str) -> bool:
        return any(m == method.upper() and p.fullmatch(path) for m, p in self.writes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.protects(scope.get("method", ""), scope.get("path", "")):
            try:
                check(header(scope, b"authorization"), self.token)
            except TokenError as e:
                extra = [(b"www-authenticate", b"Bearer")] if e.status == 401 else []
                await send_error(send, e.status, str(e), extra)
                return
        await self.app(scope, receive, send)
