"""One node: features from the data files, aliases persisted to a JSON file, jobs in memory."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from app.catalog import describe, iter_catalog_file, read_users
from app.state.aliases import AliasFile
from app.state.base import FeatureStore
from app.state.changes import CHANGES_FILE, FileChangeLog
from app.state.locks import MemoryLocks
from models.data import HasTowers, has_table
from models.errors import StoreUnavailable
from models.layout import DataLayout

log = logging.getLogger(__name__)


class LocalStore(FeatureStore):
    """One node: features from the data files, aliases persisted to a JSON file, jobs in memory."""

    kind = "local"

    def __init__(self, data_dir: Path | None, alias_file: Path, schema: HasTowers | None = None) -> None:
        self.data_dir = data_dir
        # Whose names the data files use (app.catalog.data_schema); None: the default layout.
        self.schema = schema
        self.layout = schema.layout if schema is not None else DataLayout()  # what the rows hold
        self.alias_file = alias_file
        self._alias_record = AliasFile(alias_file)
        self.users: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._active: dict[str, str] = {}
        self._queue: deque[str] = deque()
        self._leases: dict[str, tuple[float, str]] = {}  # job id -> (monotonic deadline, owner)
        self._workers: dict[str, tuple[float, dict[str, Any]]] = {}
        self._replicas: dict[str, tuple[float, dict[str, Any]]] = {}
        self._locks = MemoryLocks()
        self.changes = FileChangeLog(alias_file.parent / CHANGES_FILE)  # beside the index store

    def load(self) -> LocalStore:
        layout = self.layout
        if self.data_dir is not None and has_table(self.data_dir, layout.users):
            self.users = read_users(self.data_dir, self.schema)
            log.info("%d users from %s: %s", len(self.users), self.data_dir, describe(layout))
        elif self.data_dir is not None:
            log.warning("no data files in %s: every user is served cold", self.data_dir)
        self._aliases = self._alias_record.read() or {}
        return self

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        return self.users.get(user_id)

    def version_added(self, tag: str, layout: DataLayout) -> None:
        """The same files under another history key: each user's history under that key too (the
        same list). Other tables or columns: a warning, the rows stay as read (a restart reads the
        files as app.catalog.data_schema decides)."""
        mine = self.layout
        if self.data_dir is None or not self.users:
            return
        if replace(layout, history=()) != replace(mine, history=()) or not mine.history:
            log.warning(
                "model version %s reads the data files otherwise (%s) than this store read them (%s): "
                "it is served from these rows until a restart",
                tag,
                describe(layout),
                describe(mine),
            )
            return
        new = [k for k in layout.history if k not in mine.history]
        if not new:
            return
        for row in self.users.values():
            history = row.get(mine.history[0], [])
            for key in new:
                row[key] = history
        self.layout = replace(mine, history=(*mine.history, *new))
        log.info("model version %s: histories under %s too", tag, ", ".join(repr(k) for k in new))

    async def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    async def set_alias(self, alias: str, version: str) -> None:
        # Durable first; the live copy changes only once the file is replaced.
        _, after = await anyio.to_thread.run_sync(self._alias_record.update, lambda d: {**d, alias: version})
        self._aliases = after

    async def init_alias(self, alias: str, version: str) -> str:
        def first(d: dict[str, str]) -> dict[str, str]:
            return d if alias in d else {**d, alias: version}

        _, after = await anyio.to_thread.run_sync(self._alias_record.update, first)
        self._aliases = after
        return after[alias]

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

    async def submit_job(self, job: dict[str, Any], active_ttl_s: float) -> str | None:
        version = job["model_version"]
        if version in self._active:
            return self._active[version]
        self._active[version] = job["job_id"]
        self._jobs[job["job_id"]] = dict(job)
        self._queue.append(job["job_id"])
        return None

    async def job_in_flight(self, job_id: str) -> bool:
        return job_id in self._leases or job_id in self._queue

    async def take_job(self, owner: str, lease_s: float) -> str | None:
        if not self._queue:
            return None
        job_id = self._queue.popleft()
        self._leases[job_id] = (time.monotonic() + lease_s, owner)
        return job_id

    def _owns(self, job_id: str, owner: str) -> bool:
        return job_id in self._leases and self._leases[job_id][1] == owner

    async def renew_job(self, job_id: str, owner: str, lease_s: float) -> bool:
        if not self._owns(job_id, owner):
            return False
        self._leases[job_id] = (time.monotonic() + lease_s, owner)
        return True

    async def finish_job(self, job_id: str, owner: str) -> bool:
        if not self._owns(job_id, owner):
            return False
        del self._leases[job_id]
        return True

    async def hand_back(self, job_id: str, owner: str) -> bool:
        if not self._owns(job_id, owner):
            return False
        del self._leases[job_id]
        self._queue.append(job_id)
        return True

    async def reap_jobs(self) -> list[str]:
        now = time.monotonic()
        expired = [j for j, (deadline, _) in self._leases.items() if deadline <= now]
        for job_id in expired:
            del self._leases[job_id]
            self._queue.append(job_id)
        return expired

    async def put_worker(self, status: dict[str, Any], ttl_s: float) -> None:
        self._workers[status["worker_id"]] = (time.monotonic() + ttl_s, dict(status))

    async def workers(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [dict(s) for deadline, s in self._workers.values() if deadline > now]

    async def put_replica(self, record: dict[str, Any], ttl_s: float) -> None:
        self._replicas[record["replica"]] = (time.monotonic() + ttl_s, dict(record))

    async def replicas(self) -> list[dict[str, Any]]:
        """One node: only this process's own record (the local check is the whole check)."""
        now = time.monotonic()
        return [dict(r) for deadline, r in self._replicas.values() if deadline > now]

    async def drop_replica(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    async def acquire_lock(self, version: str, token: str, ttl_s: float) -> bool:
        return self._locks.acquire(version, token)

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        return self._locks.renew(version, token)

    async def release_lock(self, version: str, token: str) -> None:
        self._locks.release(version, token)

    async def set_active_build(self, version: str, build_id: str) -> None:
        return None  # the index store's CURRENT pointer is the record on one node

    async def append_changes(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return await anyio.to_thread.run_sync(self.changes.append, changes)
        except OSError as exc:
            raise StoreUnavailable(f"{self.changes.path}: change not recorded ({exc.strerror})") from exc

    async def changes_since(self, seq: int) -> list[dict[str, Any]]:
        try:
            return await anyio.to_thread.run_sync(self.changes.read_since, seq)
        except OSError as exc:
            raise StoreUnavailable(f"{self.changes.path}: unreadable ({exc.strerror})") from exc

    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        if self.data_dir is None:
            return iter(())
        return iter_catalog_file(self.data_dir, self.schema)
