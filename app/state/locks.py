"""Every build lock of the service, in one place.

A lock is a token under a key: whoever wrote the token holds it until it expires or is released.
Renewing or releasing compares the token atomically (a Lua script), so a holder whose lock expired
and was taken by someone else can never extend or delete the new holder's lock.

- MemoryLocks: one process (the in-process store's worker).
- acquire / renew / release: the async Redis calls behind RedisStore's lock methods.
- SyncLock: a standalone `twotower reindex` against Redis (the worker holds its own).
- holder(): a sync read of the token, the build child's fence right before it publishes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

import redis
import redis.asyncio as aioredis

from app.settings import Settings
from app.state.base import text
from app.state.keys import Keys

log = logging.getLogger(__name__)

# Renew or release a lock only if we still hold it (compare the token atomically).
RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


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


async def acquire(client: aioredis.Redis, key: str, token: str, ttl_s: float) -> bool:
    return bool(await client.set(key, token, nx=True, px=int(ttl_s * 1000)))


async def renew(client: aioredis.Redis, key: str, token: str, ttl_s: float) -> bool:
    return bool(await client.eval(RENEW, 1, key, token, int(ttl_s * 1000)))  # type: ignore[misc]


async def release(client: aioredis.Redis, key: str, token: str) -> None:
    await client.eval(RELEASE, 1, key, token)  # type: ignore[misc]


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
        self.ttl_ms = int(settings.lock_ttl_s * 1000)
        self._stop = threading.Event()

    def __enter__(self) -> SyncLock:
        while not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            log.info("waiting for the lock on %s (another worker is building it)", self.key)
            time.sleep(1.0)
        threading.Thread(target=self._renew, daemon=True).start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            with contextlib.suppress(Exception):
                self.client.eval(RENEW, 1, self.key, self.token, self.ttl_ms)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self.client.eval(RELEASE, 1, self.key, self.token)

    def holder(self) -> str | None:
        return text(self.client.get(self.key))
