"""Several replicas: everything shared lives in Redis (key layout: app/state/keys.py).

Every Redis call has a timeout; a failure surfaces as StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from app.state import locks
from app.state.base import FeatureStore, text
from app.state.keys import JOB_TTL_S, Keys
from models.errors import StoreUnavailable

T = TypeVar("T")


class RedisStore(FeatureStore):
    """Several replicas: everything shared lives in Redis under `prefix`."""

    kind = "redis"

    def __init__(
        self, url: str, timeout_s: float, prefix: str = "tt:", on_error: Callable[[str], None] | None = None
    ):
        self.url = url
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.client: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=10,
        )

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            # The client timeouts cover a socket that stalls; wait_for also covers a connect that hangs.
            return await asyncio.wait_for(fn(), self.timeout_s * 2)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            if self.on_error is not None:
                self.on_error(op)
            raise StoreUnavailable(f"feature store unavailable ({op}): {type(exc).__name__}") from exc

    async def ping(self) -> bool:
        try:
            await self._call("ping", self.client.ping)
            return True
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        raw = await self._call("get_user", lambda: self.client.get(self.keys.user(user_id)))
        return json.loads(raw) if raw else None

    async def aliases(self) -> dict[str, str]:
        raw = await self._call("aliases", lambda: self.client.hgetall(self.keys.aliases))
        return {str(text(k)): str(text(v)) for k, v in raw.items()}

    async def set_alias(self, alias: str, version: str) -> None:
        await self._call("set_alias", lambda: self.client.hset(self.keys.aliases, alias, version))

    async def put_job(self, job: dict[str, Any]) -> None:
        await self._call(
            "put_job", lambda: self.client.set(self.keys.job(job["job_id"]), json.dumps(job), ex=JOB_TTL_S)
        )

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._call("get_job", lambda: self.client.get(self.keys.job(job_id)))
        return json.loads(raw) if raw else None

    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        key = self.keys.active(version)
        ok = await self._call("claim", lambda: self.client.set(key, job_id, nx=True, px=int(ttl_s * 1000)))
        if ok:
            return None
        current = await self._call("claim", lambda: self.client.get(key))
        if current is None:  # expired between the two calls: try once more
            return await self.claim_active(version, job_id, ttl_s)
        return text(current)

    async def clear_active(self, version: str, job_id: str) -> None:
        key = self.keys.active(version)
        await self._call("clear_active", lambda: locks.release(self.client, key, job_id))

    async def enqueue(self, job_id: str) -> None:
        await self._call("enqueue", lambda: self.client.rpush(self.keys.queue, job_id))

    async def dequeue(self) -> str | None:
        raw = await self._call("dequeue", lambda: self.client.lpop(self.keys.queue))
        return text(raw)

    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.keys.lock(version)
        return await self._call("lock", lambda: locks.acquire(self.client, key, token, ttl_s))

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.keys.lock(version)
        return await self._call("lock", lambda: locks.renew(self.client, key, token, ttl_s))

    async def release_lock(self, version: str, token: str) -> None:
        await self._call("lock", lambda: locks.release(self.client, self.keys.lock(version), token))

    async def set_active_build(self, version: str, build_id: str) -> None:
        await self._call("build", lambda: self.client.hset(self.keys.builds, version, build_id))

    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        client = redis.Redis.from_url(self.url, socket_timeout=max(self.timeout_s, 5.0))
        try:
            for _, raw in client.hscan_iter(self.keys.items, count=5000):
                yield json.loads(raw)
        finally:
            client.close()

    def lock_holder(self, version: str) -> str | None:
        """Sync read of the lock's token: the build process's fence before it publishes."""
        return locks.holder(self.url, self.keys.lock(version), self.timeout_s)
