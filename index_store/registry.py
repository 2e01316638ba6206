"""The current snapshot of each model version, swapped atomically.

Readers call `get` once per request and use only that snapshot; a swap installs a new dict
(copy-on-write), so a reader never sees a half-swapped state and a snapshot in use is never
mutated. An old snapshot is freed by plain CPython refcounting when the last request holding it
returns: snapshots are immutable, so no further bookkeeping is needed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType

from index_store.snapshot import Snapshot

log = logging.getLogger(__name__)


class SnapshotRegistry:
    """Thread-safe map model version -> current Snapshot. Writers serialise; readers take no lock."""

    def __init__(self) -> None:
        self._current: Mapping[str, Snapshot] = MappingProxyType({})
        self._write = threading.Lock()

    def get(self, version: str) -> Snapshot | None:
        """The current snapshot of `version` (one atomic attribute read, then a dict lookup)."""
        return self._current.get(version)

    def swap(self, version: str, snapshot: Snapshot) -> Snapshot | None:
        """Make `snapshot` current for `version`; returns the one it replaces."""
        if snapshot.model_version != version:
            raise ValueError(f"snapshot of {snapshot.model_version!r} cannot serve version {version!r}")
        with self._write:
            previous = self._current.get(version)
            self._current = MappingProxyType({**self._current, version: snapshot})
        log.info(
            "swapped %s: build %s -> %s (%d items)",
            version,
            previous.build_id if previous else None,
            snapshot.build_id,
            snapshot.size,
        )
        return previous

    def advance(self, version: str, snapshot: Snapshot) -> tuple[bool, Snapshot | None]:
        """`swap`, only forward: refused (False, current) when the current build is the same or newer.

        Build ids are time-ordered, and the compare and the swap happen under the write lock, so a
        slow load of an older build that finishes after a newer one can never be swapped back in.
        """
        if snapshot.model_version != version:
            raise ValueError(f"snapshot of {snapshot.model_version!r} cannot serve version {version!r}")
        with self._write:
            previous = self._current.get(version)
            if previous is not None and previous.build_id >= snapshot.build_id:
                return False, previous
            self._current = MappingProxyType({**self._current, version: snapshot})
        return True, previous

    def remove(self, version: str) -> Snapshot | None:
        """Stop serving `version`; returns the snapshot it had."""
        with self._write:
            current = dict(self._current)
            previous = current.pop(version, None)
            self._current = MappingProxyType(current)
        return previous

    def versions(self) -> list[str]:
        return sorted(self._current)

    def snapshots(self) -> Mapping[str, Snapshot]:
        """A consistent read-only view of every current snapshot."""
        return self._current
