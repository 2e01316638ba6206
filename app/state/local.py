"""One node: features from the data files, aliases persisted to a JSON file, jobs in memory."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.catalog import iter_catalog_file, read_users
from app.state.base import FeatureStore
from app.state.locks import MemoryLocks

log = logging.getLogger(__name__)


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
        self._locks = MemoryLocks()

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
        return self._locks.acquire(version, token)

    async def renew_lock(self, version: str, token: str, ttl_s: float) -> bool:
        return self._locks.renew(version, token)

    async def release_lock(self, version: str, token: str) -> None:
        self._locks.release(version, token)

    async def set_active_build(self, version: str, build_id: str) -> None:
        return None  # the index store's CURRENT pointer is the record on one node

    def iter_catalog(self) -> Iterator[dict[str, Any]]:
        if self.data_dir is None:
            return iter(())
        return iter_catalog_file(self.data_dir)
