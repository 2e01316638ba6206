"""Pure-ASGI middleware: the request-body limit and per-route metrics (cheaper than BaseHTTPMiddleware)."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

_BODY_METHODS = {"POST", "PUT", "PATCH"}


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    # The rest of the body is never read: close, or the server keeps draining whatever the client sends.
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: Scope, receive: Receive, send: Send, max_bytes: int) -> bytes | int:
    """The whole request body, or the status already answered instead: 413 (too large), 400 (a bad
    Content-Length), 0 (the client left).

    With a Content-Length the request is refused from its headers alone; a chunked body is read
    up to the limit and refused as soon as it passes it, so memory stays bounded either way.
    """
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            await _send_json(send, 400, "invalid Content-Length header")
            return 400
        if declared > max_bytes:
            await _send_json(send, 413, f"request body over the limit of {max_bytes} bytes")
            return 413
    message = await receive()
    if message["type"] == "http.disconnect":
        return 0
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message
        if len(body) > max_bytes:
            await _send_json(send, 413, f"request body over the limit of {max_bytes} bytes")
            return 413
        return body
    chunks = [body]
    size = len(body)
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return 0
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            await _send_json(send, 413, f"request body over the limit of {max_bytes} bytes")
            return 413
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class BodyLimit:
    """413 for a body over `max_bytes`, before any of it is parsed (see `read_body`); the body
    read is then replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        body = await read_body(scope, receive, send, self.max_bytes)
        if isinstance(body, bytes):
            await self.app(scope, replaying(body, receive), send)


class RequestMetrics:
    """Counts and times every request under its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
