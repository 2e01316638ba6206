"""uvicorn's httptools protocol, answering each response in one write instead of two.

uvicorn writes the status line and headers to the socket at `http.response.start` and the body at
`http.response.body`: two send() calls and two TCP segments per response. On loopback (a sidecar,
a proxy on the same host, the bench's load generator) each send runs the receiver's TCP path in
the sender's system call; py-spy put ~20% of a /recall's CPU in those two writes at 1M items.
Here the head waits for the first body message and both go out in one write. Everything else is
uvicorn's own code: the cycle only swaps the transport it writes to around uvicorn's `send`.
Used by `app.serve` (`uvicorn.Config(http=OneWriteProtocol)`); tested in tests/app/test_http_protocol.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _Collect:
    """Stands in for the transport during `http.response.start`: keeps the head."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _Prefixed:
    """Stands in for the transport during the first body message: head + body in one write."""

    def __init__(self, real: Any, head: bytes) -> None:
        self.real = real
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        if self.head is not None:
            data, self.head = self.head + data, None
        self.real.write(data)

    def close(self) -> None:
        # A HEAD answer writes no body part; with `Connection: close` uvicorn closes right away.
        if self.head is not None:
            self.real.write(self.head)
            self.head = None
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle whose response head is written with the first body part."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "http.response.start" and not self.response_started:
            real = self.transport
            collect = _Collect(real)
            self.transport = cast(asyncio.Transport, collect)  # duck-typed: write + delegation
            try:
                await super().send(message)
            finally:
                self.transport = real
            self._head = collect.data or None
            return
        head, self._head = self._head, None
        if head is None:
            await super().send(message)
            return
        real = self.transport
        prefixed = _Prefixed(real, head)
        self.transport = cast(asyncio.Transport, prefixed)
        try:
            await super().send(message)
        finally:
            self.transport = real
            if prefixed.head is not None and not real.is_closing():
                real.write(prefixed.head)  # uvicorn wrote no body part: the head still goes

    async def run_asgi(self, app: Any) -> None:
        try:
            await super().run_asgi(app)
        finally:
            head, self._head = self._head, None
            if head is not None and not self.transport.is_closing():
                # The app started a response and never sent its body: what uvicorn would have sent.
                self.transport.write(head)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `OneWriteCycle` for every request."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The cycle's task is created but has not run yet: its `send` resolves on the new class.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = OneWriteCycle
