"""Concurrent reads of single keys, sent to Redis as one MGET per event-loop turn.

With several requests in flight, each /recall's user lookup was its own GET: one round trip and one
pass through redis-py's command machinery (~90 us of client CPU) per request. Here a read joins the
reads started in the same turn of the event loop, and the batch goes out as one MGET when the turn
ends, so the cost is shared by everything that was waiting. A lone request waits one extra loop
iteration; nothing is cached, so a key written in Redis is read fresh by the next request.

    users = KeyBatcher(lambda keys: call("get_user", lambda: client.mget(keys)))
    raw = await users.get("tt:user:196")     # bytes, or None for a missing key
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from models.errors import StoreUnavailable

Fetch = Callable[[list[str]], Awaitable[Sequence[bytes | str | None]]]


class KeyBatcher:
    """`get(key)` coalesced with the other `get`s of the same loop turn into one `fetch(keys)`."""

    def __init__(self, fetch: Fetch, max_batch: int = 512) -> None:
        self._fetch = fetch
        self._max = max_batch
        self._pending: list[tuple[str, asyncio.Future[bytes | str | None]]] = []
        self._running: set[asyncio.Task[None]] = set()  # strong references until each batch ends

    async def get(self, key: str) -> bytes | str | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | str | None] = loop.create_future()
        self._pending.append((key, future))
        if len(self._pending) >= self._max:
            self._flush()
        elif len(self._pending) == 1:
            loop.call_soon(self._flush)  # after the tasks already scheduled for this turn
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[bytes | str | None]]]) -> None:
        try:
            values = await self._fetch([key for key, _ in batch])
            if len(values) != len(batch):
                raise StoreUnavailable(f"feature store answered {len(values)} values for {len(batch)} keys")
        except StoreUnavailable as exc:
            for _, future in batch:  # each waiter its own exception: they raise in different tasks
                if not future.done():
                    future.set_exception(StoreUnavailable(str(exc)))
            return
        except BaseException as exc:  # a bug or a cancellation: no waiter may hang on it
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            raise
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():  # its request may have been cancelled (the client left)
                future.set_result(value)
