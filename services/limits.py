"""Request guards that run before FastAPI reads a body: a per-route size cap and an early bearer check.

FastAPI reads and parses a JSON body before it resolves the auth dependencies, so without these an
unauthenticated client could make the server buffer any amount of data. The middleware is pure ASGI:
it refuses a declared Content-Length over the route's limit at once, counts the bytes of a streamed
(chunked) body as they arrive, and refuses a request to an authenticated route without any
`Authorization: Bearer` header before a byte of its body is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from splitft.errors import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ADAPTER_UPLOAD = re.compile(r"^/v1/sessions/[^/]+/(complete|secagg/masked)$")  # adapter-sized
_METRICS_POST = re.compile(r"^/v1/sessions/[^/]+/metrics$")
# Routes anyone may call: no bearer to check early (enrollment carries its token in the body).
_OPEN_PATHS = {"/healthz", "/metrics", "/v1/ca.pem", "/v1/devices/enroll", "/docs", "/redoc", "/openapi.json"}


@dataclass(frozen=True)
class BodyLimits:
    """Largest request body per kind of route (bytes)."""

    json: int
    metrics: int
    adapter: int

    def for_path(self, path: str) -> tuple[int, str]:
        """The limit for `path`, and the setting that sets it (named in the 413)."""
        if _ADAPTER_UPLOAD.match(path):
            return self.adapter, "max_adapter_bytes"
        if _METRICS_POST.match(path):
            return self.metrics, "max_metrics_body_bytes"
        return self.json, "max_body_bytes"


def too_large_message(limit: int, setting: str) -> str:
    """The 413 detail: the route's limit and the setting that raises it."""
    return f"request body exceeds the {limit}-byte limit of this route (SPLITFT_{setting.upper()})"


class BodyLimitMiddleware:
    """Refuses oversized bodies (413) and bearer-less calls to authenticated routes (401) early."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limits.for_path(scope["path"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            await _answer(send, 413, too_large_message(limit, setting))
            return
        if _needs_bearer(scope) and not headers.get("authorization", "").lower().startswith("bearer "):
            await _answer(send, 401, "missing credential (Authorization: Bearer ...)", bearer=True)
            return
        guard = _StreamGuard(receive, send, limit, setting)
        try:
            await self.app(scope, guard.receive, guard.send)
        except PayloadTooLarge:
            if not guard.answered:
                raise


def _needs_bearer(scope: Scope) -> bool:
    path = scope["path"]
    return path.startswith("/v1/") and path not in _OPEN_PATHS and scope["method"] != "OPTIONS"


class _StreamGuard:
    """Counts the body as it arrives; past the limit it answers 413 itself and drops whatever the app
    sends after that (FastAPI turns an error while it reads a body into its own 400)."""

    def __init__(self, receive: Receive, send: Send, limit: int, setting: str) -> None:
        self._receive, self._send = receive, send
        self.limit, self.setting = limit, setting
        self.seen = 0
        self.started = False
        self.answered = False

    async def receive(self) -> Message:
        """The next body message, counted; past the limit a 413 goes out and PayloadTooLarge ends the app."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                detail = too_large_message(self.limit, self.setting)
                if not self.started:
                    await _answer(self._send, 413, detail)
                    self.started = self.answered = True
                raise PayloadTooLarge(detail)
        return message

    async def send(self, message: Message) -> None:
        """Pass the app's answer through, unless the guard has already answered 413."""
        if self.answered:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _answer(send: Send, status: int, detail: str, *, bearer: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),  # the unread body must not be taken for the next request
    ]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
