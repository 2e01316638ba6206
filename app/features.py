"""Feature store: user features and history, the item catalog, aliases, jobs and locks.

Two implementations behind one interface: Redis (several replicas) and in-process (one node, read
from the data files). Every Redis call has a timeout; a failure surfaces as StoreUnavailable so a
route can answer 503, and the service keeps serving what does not need the store.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import random
import tempfile
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from app.settings import Settings
from models.data import iter_jsonl
from models.errors import DataError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
JOB_TTL_S = 7 * 24 * 3600

# Renew or release a lock only if we still hold it (compare the token atomically).
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _text(raw: Any) -> str | None:
    """A Redis reply (bytes, as the client is not set to decode) as text."""
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file of the project's data format (errors name file and line)."""
    return (row for _, row in iter_jsonl(path))


def read_users(data_dir: Path) -> dict[str, dict[str, Any]]:
    """users.jsonl + interactions.csv -> {user_id: features with `history` in time order}."""
    users: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(data_dir / "users.jsonl"):
        uid = str(row.pop("user_id"))
        row["history"] = []
        users[uid] = row
    path = data_dir / "interactions.csv"
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not found") from exc
    events: list[tuple[float, str, str]] = []
    with f:
        for n, rec in enumerate(csv.DictReader(f), 2):
            try:
                events.append((float(rec["timestamp"]), rec["user_id"], rec["item_id"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}:{n}: bad row ({exc})") from exc
    events.sort()
    for _, uid, iid in events:
        users.setdefault(uid, {"history": []})["history"].append(iid)
    return users


def sample_users(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """A seeded sample of real users (features and history) for the build's recall check."""
    rows: list[dict[str, Any]] = []
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=max(settings.redis_timeout_s, 5.0))
        try:
            for key in client.scan_iter(f"{settings.redis_prefix}user:*", count=1000):
                raw = client.get(key)
                if raw:
                    rows.append({**json.loads(raw), "user_id": key.decode().rsplit(":", 1)[-1]})
                if len(rows) >= 20 * limit:
                    break
        finally:
            client.close()
    elif settings.data_dir is not None and (Path(settings.data_dir) / "users.jsonl").exists():
        rows = [{**f, "user_id": uid} for uid, f in read_users(Path(settings.data_dir)).items()]
    rows.sort(key=lambda r: str(r["user_id"]))
    random.Random(0).shuffle(rows)
    return rows[:limit]


def iter_catalog_file(data_dir: Path) -> Iterator[dict[str, Any]]:
    for row in read_jsonl(data_dir / "items.jsonl"):
        row["item_id"] = str(row["item_id"])
        yield row


class FeatureStore(ABC):
    """What the service keeps outside its own process memory."""

    kind: str

    @abstractmethod
    async def get_user(self, user_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    async def set_alias(self, alias: str, version: str) -> None: ...

    @abstractmethod
    async def put_job(self, job: dict[str, Any]) -> None: ...

    @abstractmethod
    async def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        """Mark `job_id` as the version's active job; returns the existing one instead if any."""

    @abstractmethod
    async def clear_active(self, version: str, job_id: str) -> None: ...

    @abstractmethod
    async def enqueue(self, job_id: str) -> None: ...

    @abstractmethod
    async def dequeue(self) -> str | None: ...

    @abstractmethod
    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool: ...

    @abstractmethod
    async def release_lock(self, version: str, token: str) -> None: ...

    @abstractmethod
    async def set_active_build(self, version: str, build_id: str) -> None: ...

    @abstractmethod
    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        """Stream the item catalog (sync: builds run in a worker process)."""

    @abstractmethod
    async def put_replica(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        """Write what a replica serves; it expires after `ttl_s` unless written again."""

    @abstractmethod
    async def replicas(self) -> list[dict[str, Any]]:
        """The records of every live replica (expired ones are gone)."""

    @abstractmethod
    async def drop_replica(self, replica_id: str) -> None: ...

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class LocalStore(FeatureStore):
    """One node: features from the data files, aliases persisted to a JSON file, jobs in memory."""

    kind = "local"

    def __init__(self, data_dir: Path | None, alias_file: Path) -> None:
        self.data_dir = data_dir
        self.alias_file = alias_file
        self.users: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._active: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._locks: dict[str, str] = {}
        self._replicas: dict[str, tuple[dict[str, Any], float]] = {}

    def load(self) -> LocalStore:
        if self.data_dir is not None and (self.data_dir / "users.jsonl").exists():
            self.users = read_users(self.data_dir)
        elif self.data_dir is not None:
            log.warning("no data files in %s: every user is served cold", self.data_dir)
        if self.alias_file.exists():
            self._aliases = json.loads(self.alias_file.read_text())
        return self

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        return self.users.get(user_id)

    async def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    async def set_alias(self, alias: str, version: str) -> None:
        self._aliases[alias] = version
        self.alias_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.alias_file.parent, prefix=".aliases.")
        with os.fdopen(fd, "w") as f:
            json.dump(self._aliases, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.alias_file)

    async def put_job(self, job: dict[str, Any]) -> None:
        self._jobs[job["job_id"]] = dict(job)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return dict(job) if job else None

    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        current = self._active.get(version)
        if current is not None:
            return current
        self._active[version] = job_id
        return None

    async def clear_active(self, version: str, job_id: str) -> None:
        if self._active.get(version) == job_id:
            del self._active[version]

    async def enqueue(self, job_id: str) -> None:
        self._queue.append(job_id)

    async def dequeue(self) -> str | None:
        return self._queue.popleft() if self._queue else None

    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool:
        if version in self._locks:
            return False
        self._locks[version] = token
        return True

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        return self._locks.get(version) == token

    async def release_lock(self, version: str, token: str) -> None:
        if self._locks.get(version) == token:
            del self._locks[version]

    async def set_active_build(self, version: str, build_id: str) -> None:
        return None  # the index store's CURRENT pointer is the record on one node

    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        if self.data_dir is None:
            return iter(())
        return iter_catalog_file(self.data_dir)

    async def put_replica(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        self._replicas[replica_id] = (dict(record), time.monotonic() + ttl_s)

    async def replicas(self) -> list[dict[str, Any]]:
        """One node: only this process's own record (the local check is the whole check)."""
        now = time.monotonic()
        return [dict(r) for r, until in self._replicas.values() if until > now]

    async def drop_replica(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)


class RedisStore(FeatureStore):
    """Several replicas: everything shared lives in Redis under `prefix`."""

    kind = "redis"

    def __init__(
        self, url: str, timeout_s: float, prefix: str = "tt:", on_error: Callable[[str], None] | None = None
    ):
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.client: aioredis.Redis = aioredis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=10,
        )

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

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
        raw = await self._call("get_user", lambda: self.client.get(self.key("user", user_id)))
        return json.loads(raw) if raw else None

    async def aliases(self) -> dict[str, str]:
        raw = await self._call("aliases", lambda: self.client.hgetall(self.key("aliases")))
        return {str(_text(k)): str(_text(v)) for k, v in raw.items()}

    async def set_alias(self, alias: str, version: str) -> None:
        await self._call("set_alias", lambda: self.client.hset(self.key("aliases"), alias, version))

    async def put_job(self, job: dict[str, Any]) -> None:
        await self._call(
            "put_job", lambda: self.client.set(self.key("job", job["job_id"]), json.dumps(job), ex=JOB_TTL_S)
        )

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        raw = await self._call("get_job", lambda: self.client.get(self.key("job", job_id)))
        return json.loads(raw) if raw else None

    async def claim_active(self, version: str, job_id: str, ttl_s: float) -> str | None:
        key = self.key("active", version)
        ok = await self._call("claim", lambda: self.client.set(key, job_id, nx=True, px=int(ttl_s * 1000)))
        if ok:
            return None
        current = await self._call("claim", lambda: self.client.get(key))
        if current is None:  # expired between the two calls: try once more
            return await self.claim_active(version, job_id, ttl_s)
        return _text(current)

    async def clear_active(self, version: str, job_id: str) -> None:
        key = self.key("active", version)
        await self._call("clear_active", lambda: self.client.eval(_RELEASE, 1, key, job_id))

    async def enqueue(self, job_id: str) -> None:
        await self._call("enqueue", lambda: self.client.rpush(self.key("queue"), job_id))

    async def dequeue(self) -> str | None:
        raw = await self._call("dequeue", lambda: self.client.lpop(self.key("queue")))
        return _text(raw)

    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.key("lock", version)
        ok = await self._call("lock", lambda: self.client.set(key, token, nx=True, px=int(ttl_s * 1000)))
        return bool(ok)

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        key = self.key("lock", version)
        res = await self._call("lock", lambda: self.client.eval(_RENEW, 1, key, token, int(ttl_s * 1000)))
        return bool(res)

    async def release_lock(self, version: str, token: str) -> None:
        await self._call("lock", lambda: self.client.eval(_RELEASE, 1, self.key("lock", version), token))

    async def set_active_build(self, version: str, build_id: str) -> None:
        await self._call("build", lambda: self.client.hset(self.key("builds"), version, build_id))

    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        client = redis.Redis.from_url(self.url, socket_timeout=max(self.timeout_s, 5.0))
        try:
            for _, raw in client.hscan_iter(self.key("items"), count=5000):
                yield json.loads(raw)
        finally:
            client.close()

    async def put_replica(self, replica_id: str, record: dict[str, Any], ttl_s: float) -> None:
        key = self.key("replica", replica_id)
        raw = json.dumps(record)
        await self._call("replica", lambda: self.client.set(key, raw, px=max(1, int(ttl_s * 1000))))

    async def replicas(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            keys = [k async for k in self.client.scan_iter(match=self.key("replica", "*"), count=500)]
            raws = await self.client.mget(keys) if keys else []
            return [json.loads(r) for r in raws if r]  # a record that expired since the scan is None

        return await self._call("replicas", read)

    async def drop_replica(self, replica_id: str) -> None:
        await self._call("replica", lambda: self.client.delete(self.key("replica", replica_id)))

    def lock_holder(self, version: str) -> str | None:
        """Sync read of the lock's token: the build process's fence before it publishes."""
        client = redis.Redis.from_url(self.url, socket_timeout=max(self.timeout_s, 2.0))
        try:
            raw = client.get(self.key("lock", version))
            return _text(raw)
        finally:
            client.close()


def load_into_redis(url: str, data_dir: Path, prefix: str = "tt:", batch: int = 5000) -> tuple[int, int]:
    """`twotower load`: users (with history) and the catalog into Redis. Returns (users, items)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    users = read_users(data_dir)
    pipe = client.pipeline(transaction=False)
    for n, (uid, feats) in enumerate(users.items(), 1):
        pipe.set(f"{prefix}user:{uid}", json.dumps(feats))
        if n % batch == 0:
            pipe.execute()
    pipe.execute()
    items = 0
    for row in iter_catalog_file(data_dir):
        pipe.hset(f"{prefix}items", row["item_id"], json.dumps(row))
        items += 1
        if items % batch == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return len(users), items


def make_store(settings: Settings, on_error: Callable[[str], None] | None = None) -> FeatureStore:
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.redis_timeout_s, settings.redis_prefix, on_error)
    return LocalStore(settings.data_dir, Path(settings.index_store) / "aliases.json").load()
