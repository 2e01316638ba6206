"""Several replicas: everything shared lives in Redis (key layout: app/state/keys.py).

Every Redis call has a timeout; a failure surfaces as StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import redis
import redis.asyncio as aioredis

from app.state import locks, queue
from app.state.aliases import AliasFile
from app.state.base import FeatureStore, text
from app.state.batching import KeyBatcher
from app.state.changes import RedisChangeLog
from app.state.keys import JOB_TTL_S, Keys
from models.errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisStore(FeatureStore):
    """Several replicas: everything shared lives in Redis under `prefix`."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        timeout_s: float,
        prefix: str = "tt:",
        on_error: Callable[[str], None] | None = None,
        alias_file: Path | None = None,
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
        # Concurrent requests' user reads go out as one MGET per event-loop turn (no caching).
        self.users = KeyBatcher(lambda keys: self._call("get_user", lambda: self.client.mget(keys)))
        self.locks = locks.RedisLocks(self.client)
        self.changes = RedisChangeLog(self.client, self.keys, self._call)
        # The alias mirror beside the shared index store: what a Redis restarted empty is refilled from.
        self.mirror = AliasFile(alias_file) if alias_file is not None else None

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.current_task()
        asked = task.cancelling() if task is not None else 0
        try:
            # The client timeouts cover a socket that stalls; this also covers a connect that hangs.
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # lands as the call completes, and a background loop cancelled at shutdown then runs on.
            async with asyncio.timeout(self.timeout_s * 2):
                result = await fn()
        except (redis.RedisError, OSError, TimeoutError) as exc:
            _honour_cancel(task, asked)  # a cancel the client turned into a connection error
            if self.on_error is not None:
                self.on_error(op)
            raise StoreUnavailable(f"feature store unavailable ({op}): {type(exc).__name__}") from exc
        _honour_cancel(task, asked)
        return result

    async def ping(self) -> bool:
        try:
            await self._call("ping", self.client.ping)
            return True
        except StoreUnavailable:
            return False

    async def close(self) -> None:
        await self.client.aclose()

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        raw = await self.users.get(self.keys.user(user_id))
        return json.loads(raw) if raw else None

    async def _hash_aliases(self) -> dict[str, str]:
        raw = await self._call("aliases", lambda: self.client.hgetall(self.keys.aliases))
        return {str(text(k)): str(text(v)) for k, v in raw.items()}

    async def aliases(self) -> dict[str, str]:
        found = await self._hash_aliases()
        if found or self.mirror is None:
            return found
        # No alias in Redis: a first boot, or a Redis restarted empty. The mirror tells which.
        recorded = await anyio.to_thread.run_sync(self.mirror.read)
        if not recorded:
            return found
        flat = [x for pair in recorded.items() for x in pair]
        restored = await self._call(
            "aliases", lambda: self.client.eval(queue.RESTORE_ALIASES, 1, self.keys.aliases, *flat)
        )
        if restored:
            log.warning("no alias in Redis: restored %s from %s", recorded, self.mirror.path)
        return await self._hash_aliases()

    async def set_alias(self, alias: str, version: str) -> None:
        if self.mirror is None:
            await self._call("set_alias", lambda: self.client.hset(self.keys.aliases, alias, version))
            return
        mirror = self.mirror
        live = await self.aliases()  # restores a Redis restarted empty before anything is changed

        def change(d: dict[str, str]) -> dict[str, str]:
            return {**(d or live), alias: version}

        # Durable first, under the mirror's lock; then live in Redis. If Redis refuses, the mirror is
        # put back, so that the request's 503 means nothing changed.
        async with locks.file_lock_async(mirror.lock_path):
            before = await anyio.to_thread.run_sync(mirror.read)
            after = change(dict(before or {}))
            await anyio.to_thread.run_sync(mirror.write, after)
            try:
                await self._call("set_alias", lambda: self.client.hset(self.keys.aliases, alias, version))
            except StoreUnavailable:
                if before is not None:
                    await anyio.to_thread.run_sync(mirror.write, before)
                raise

    async def init_alias(self, alias: str, version: str) -> str:
        recorded = None
        if self.mirror is not None:
            recorded = await anyio.to_thread.run_sync(self.mirror.read)
        # The mirror's record wins over `version`: only where neither has one is `version` taken.
        value = recorded[alias] if recorded and alias in recorded else version
        try:
            live = await self.aliases()
            if alias not in live:
                await self._call("init_alias", lambda: self.client.hsetnx(self.keys.aliases, alias, value))
                live = await self._hash_aliases()  # another replica may have been first
        except StoreUnavailable:
            if recorded and alias in recorded:
                return recorded[alias]  # Redis down: serve the recorded target, write nothing
            raise
        target = live.get(alias, value)
        if self.mirror is not None and (recorded is None or alias not in recorded):
            mirror = self.mirror
            await anyio.to_thread.run_sync(
                mirror.update, lambda d: {**live, **d, alias: d.get(alias, target)}
            )
        return target

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
        await self._call("clear_active", lambda: self.client.eval(queue.CLEAR_IF, 1, key, job_id))

    async def submit_job(self, job: dict[str, Any], active_ttl_s: float) -> str | None:
        k = self.keys
        keys = (k.active(job["model_version"]), k.job(job["job_id"]), k.queue)
        args = (job["job_id"], json.dumps(job), int(active_ttl_s * 1000), JOB_TTL_S)
        raw = await self._call("submit", lambda: self.client.eval(queue.SUBMIT, 3, *keys, *args))
        return text(raw)

    async def job_in_flight(self, job_id: str) -> bool:
        k = self.keys
        found = await self._call(
            "job", lambda: self.client.eval(queue.IN_FLIGHT, 2, k.queue, k.leases, job_id)
        )
        return bool(found)

    async def take_job(self, owner: str, lease_s: float) -> str | None:
        k, ms = self.keys, int(lease_s * 1000)
        raw = await self._call(
            "take_job",
            lambda: self.client.eval(queue.TAKE, 4, k.queue, k.processing, k.leases, k.owners, ms, owner),
        )
        return text(raw)

    async def renew_job(self, job_id: str, owner: str, lease_s: float) -> bool:
        k, ms = self.keys, int(lease_s * 1000)
        ok = await self._call(
            "lease", lambda: self.client.eval(queue.RENEW, 2, k.leases, k.owners, job_id, owner, ms)
        )
        return bool(ok)

    async def finish_job(self, job_id: str, owner: str) -> bool:
        k = self.keys
        ok = await self._call(
            "lease",
            lambda: self.client.eval(queue.FINISH, 3, k.processing, k.leases, k.owners, job_id, owner),
        )
        return bool(ok)

    async def hand_back(self, job_id: str, owner: str) -> bool:
        k = self.keys
        keys = (k.queue, k.processing, k.leases, k.owners)
        ok = await self._call("lease", lambda: self.client.eval(queue.HAND_BACK, 4, *keys, job_id, owner))
        return bool(ok)

    async def reap_jobs(self) -> list[str]:
        k = self.keys
        keys = (k.queue, k.processing, k.leases, k.owners)
        raw = await self._call("reap", lambda: self.client.eval(queue.REAP, 4, *keys))
        return [str(text(x)) for x in raw or []]

    async def put_worker(self, status: dict[str, Any], ttl_s: float) -> None:
        key = self.keys.worker(status["worker_id"])
        await self._call("worker", lambda: self.client.set(key, json.dumps(status), px=int(ttl_s * 1000)))

    async def workers(self) -> list[dict[str, Any]]:
        async def scan() -> list[dict[str, Any]]:
            out = []
            async for key in self.client.scan_iter(self.keys.worker("*"), count=1000):
                raw = await self.client.get(key)
                if raw:
                    out.append(json.loads(raw))
            return out

        return await self._call("workers", scan)

    async def put_replica(self, record: dict[str, Any], ttl_s: float) -> None:
        key, raw = self.keys.replica(record["replica"]), json.dumps(record)
        await self._call("replica", lambda: self.client.set(key, raw, px=max(1, int(ttl_s * 1000))))

    async def replicas(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            keys = [k async for k in self.client.scan_iter(self.keys.replica("*"), count=1000)]
            raws = await self.client.mget(keys) if keys else []
            return [json.loads(r) for r in raws if r]  # a record that expired since the scan is None

        return await self._call("replicas", read)

    async def drop_replica(self, replica_id: str) -> None:
        await self._call("replica", lambda: self.client.delete(self.keys.replica(replica_id)))

    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.keys.lock(version)
        return await self._call("lock", lambda: self.locks.acquire(key, token, ttl_s))

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.keys.lock(version)
        return await self._call("lock", lambda: self.locks.renew(key, token))

    async def release_lock(self, version: str, token: str) -> None:
        await self._call("lock", lambda: self.locks.release(self.keys.lock(version), token))

    async def set_active_build(self, version: str, build_id: str) -> None:
        await self._call("build", lambda: self.client.hset(self.keys.builds, version, build_id))

    async def append_changes(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await self.changes.append(changes)

    async def changes_since(self, seq: int) -> list[dict[str, Any]]:
        return await self.changes.read_since(seq)

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


def _honour_cancel(task: asyncio.Task[Any] | None, asked: int) -> None:
    """Raise the cancellation that redis-py swallowed. It can: a cancel that lands inside a command
    comes back as the command's result or as a ConnectionError, and the task runs on. Measured with
    `socket_timeout` set: ~40% of random cancels of a loop of commands with redis-py 8.1, 25-30% with
    5.2, 6.4 and 7.4 (tests/app/state/test_cancellation.py); in CI, a reindex job's heartbeat that
    renewed its lease for ever. Where inside redis-py it is lost was not pinned down. asyncio counts
    cancel requests, so one made during the call and not withdrawn (`uncancel`, as an
    `asyncio.timeout` that fired does) shows as a higher count than on entry."""
    if task is not None and task.cancelling() > asked:
        raise asyncio.CancelledError
