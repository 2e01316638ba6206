"""Every lock of the service, in one place.

- The version lock with Redis (several nodes): redis-py's own `Lock` (a token under
  `<prefix>lock:<version>` with an expiry; extend and release compare the token atomically, so a
  holder whose lock expired and was taken by someone else can never extend or delete the new
  holder's lock). `RedisLocks` for the async worker, `SyncLock` for a standalone `twotower reindex`,
  `holder()` for the build child's fence right before it publishes.
- `MemoryLocks`: the in-process store's worker (one process).
- `file_lock` (from index_store.locking): flock on a file in the index store, for builds without
  Redis, the publish compare-and-set and the alias mirror. The kernel drops it when its holder dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock as AsyncLock
from redis.exceptions import LockError
from redis.lock import Lock

from app.settings import Settings
from app.state.base import text
from app.state.keys import Keys
from index_store.locking import file_lock, pid_alive
from models.errors import StoreUnavailable

__all__ = ["MemoryLocks", "RedisLocks", "SyncLock", "file_lock", "file_lock_async", "holder", "pid_alive"]

log = logging.getLogger(__name__)


_process_locks: dict[Path, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def file_lock_async(path: Path) -> AsyncIterator[None]:
    """`file_lock` from async code: one holder per process at a time (an asyncio lock: a second
    flock from this process would wait on the first while blocking the loop it runs on), and the
    flock itself taken in a thread, so waiting for another process does not block the loop."""
    mutex = _process_locks.setdefault(path, asyncio.Lock())
    async with mutex:
        cm = file_lock(path)
        try:
            await anyio.to_thread.run_sync(cm.__enter__)
        except OSError as exc:
            raise StoreUnavailable(f"{path}: cannot take the lock ({exc.strerror})") from exc
        try:
            yield
        finally:
            cm.__exit__(None, None, None)


class MemoryLocks:
    """Locks of one process (no expiry: the holder is in this process and releases in `finally`)."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}

    def acquire(self, name: str, token: str) -> bool:
        if name in self._held:
            return False
        self._held[name] = token
        return True

    def renew(self, name: str, token: str) -> bool:
        return self._held.get(name) == token

    def release(self, name: str, token: str) -> None:
        if self._held.get(name) == token:
            del self._held[name]


class RedisLocks:
    """Version locks held by this process, as redis-py `Lock`s keyed by (key, token)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._held: dict[tuple[str, str], AsyncLock] = {}

    async def acquire(self, key: str, token: str, ttl_s: float) -> bool:
        lock = AsyncLock(self.client, key, timeout=ttl_s, blocking=False, thread_local=False)
        if not await lock.acquire(token=token):
            return False
        self._held[(key, token)] = lock
        return True

    async def renew(self, key: str, token: str) -> bool:
        """Reset the lock's expiry to its full TTL; False if it is no longer ours."""
        lock = self._held.get((key, token))
        if lock is None:
            return False
        try:
            return bool(await lock.reacquire())
        except LockError:  # expired, or taken by another holder
            self._held.pop((key, token), None)
            return False

    async def release(self, key: str, token: str) -> None:
        lock = self._held.pop((key, token), None)
        if lock is not None:
            with contextlib.suppress(LockError):  # already expired: nothing of ours to delete
                await lock.release()


def holder(url: str, key: str, timeout_s: float) -> str | None:
    """Sync read of a lock's token: the build process's fence before it publishes."""
    client = redis.Redis.from_url(url, socket_timeout=max(timeout_s, 2.0))
    try:
        return text(client.get(key))
    finally:
        client.close()


class SyncLock:
    """The version lock for a standalone `twotower reindex` against Redis (the worker holds its own)."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.client = redis.Redis.from_url(
            settings.redis_url or "", socket_timeout=settings.redis_timeout_s * 4
        )
        self.key = Keys(settings.redis_prefix).lock(version)
        self.token = uuid.uuid4().hex
        self.lock = Lock(self.client, self.key, timeout=settings.lock_ttl_s, sleep=1.0, thread_local=False)
        self._stop = threading.Event()

    def __enter__(self) -> SyncLock:
        if not self.lock.acquire(blocking=False, token=self.token):
            log.info("waiting for the lock on %s (another worker is building it)", self.key)
            self.lock.acquire(blocking=True, token=self.token)
        threading.Thread(target=self._renew, daemon=True).start()
        return self

    def _renew(self) -> None:
        assert self.lock.timeout is not None
        while not self._stop.wait(self.lock.timeout / 3):
            with contextlib.suppress(Exception):  # lost or unreachable: the fence refuses the publish
                self.lock.reacquire()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.lock.release()

    def holder(self) -> str | None:
        return text(self.client.get(self.key))
