"""Replica records: what each serving process serves, kept in the shared store with an expiry, so
that an alias moves only once every live replica (every process of every host) can serve it."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from app.settings import Settings
from app.state import FeatureStore
from models.errors import StoreUnavailable

log = logging.getLogger("app.service")


def new_replica_id() -> str:
    """Unique per process: two replicas on one host, or a restart, never share a record."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ReplicaRecords:
    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        self.settings = settings
        self.store = store
        self.replica_id = new_replica_id()

    def record(self, versions: Iterable[str], builds: Mapping[str, str]) -> dict[str, Any]:
        """What this replica serves: every loaded version with its build (None: no index yet)."""
        return {
            "replica": self.replica_id,
            "versions": {tag: builds.get(tag) for tag in sorted(versions)},
            "at": time.time(),
        }

    async def behind(self, tag: str) -> dict[str, str]:
        """Other live replicas that cannot serve `tag` yet, with why."""
        behind: dict[str, str] = {}
        for record in await self.store.replicas():
            rid = str(record.get("replica"))
            versions = record.get("versions")
            if rid == self.replica_id or not isinstance(versions, dict):
                continue
            if tag not in versions:
                behind[rid] = "version not loaded"
            elif not versions[tag]:
                behind[rid] = "no index loaded"
        return behind

    async def live(self) -> list[dict[str, Any]]:
        """Every live replica's record, sorted by id; [] when the store cannot be read."""
        try:
            records = await self.store.replicas()
        except StoreUnavailable as exc:
            log.warning("replica records unreadable: %s", exc)
            return []
        return sorted(records, key=lambda r: str(r.get("replica")))

    async def renew(self, record: dict[str, Any]) -> None:
        """Renew this replica's record (on every poll), so alias moves can check it."""
        ttl = max(self.settings.replica_ttl_s, 3 * self.settings.poll_interval_s)
        try:
            await self.store.put_replica(record, ttl)
        except StoreUnavailable as exc:
            log.warning("replica record not renewed: %s", exc)

    async def leave(self) -> None:
        """Drop this replica's record on shutdown: it no longer holds alias moves back."""
        try:
            await self.store.drop_replica(self.replica_id)
        except StoreUnavailable as exc:
            log.warning("replica record not dropped (it expires by itself): %s", exc)
