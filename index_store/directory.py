"""The index store's directory: its layout, the builds it holds, the CURRENT pointer, retention.

    <root>/<version>/CURRENT                {"build_id": ..., "manifest_sha256": ...}, replaced atomically
    <root>/<version>/<build_id>/index.faiss  faiss.write_index
                                ids.npy      item ids (unicode, no pickle); row i of the index = ids[i]
                                vectors.npy  float32 [N, dim], the stored vector of every item (for /score)
                                id_table.npy int64, a hash table id -> row (the id map: index_store.idmap)
                                attributes.npz  the filterable fields' columns (index_store.attributes)
                                manifest.json
    <root>/<version>/.tmp-<build_id>.<pid>/  a build being written by process <pid>; removed by a
                                            later build once that process is gone
    <root>/<version>/.publish.lock          flock: fence + CURRENT compare-and-set, prune

Build ids sort by time (`new_build_id`), so `builds()` lists them oldest first.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from index_store.locking import file_lock
from models.errors import ManifestError
from models.manifest import check_tag

# The store's one log channel wherever its code lives (log filters and the tests name it).
log = logging.getLogger("index_store.store")

FORMAT = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
VECTORS_FILE = "vectors.npy"
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
TMP_PREFIX = ".tmp-"
PUBLISH_LOCK = ".publish.lock"
DATA_FILES = (INDEX_FILE, IDS_FILE, VECTORS_FILE)


def new_build_id() -> str:
    """Sortable UTC timestamp (milliseconds) plus a random suffix, e.g. 20261126T101500.123Z-9f3a1c."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class StoreDirectory:
    """One root directory of builds: listing, the CURRENT pointer, pruning (IndexStore's base)."""

    def __init__(self, root: Path, keep: int = 3, verify_margin_s: float = 1.0) -> None:
        """`keep` is the default of `prune()`; a build prunes with its config's `keep_builds`.
        `verify_margin_s`: a file changed less than this before a load hashed it is hashed again
        by the next load on this host (see index_store.verified)."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.verify_margin_s = verify_margin_s

    def versions(self) -> list[str]:
        """Model versions with an index directory."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def builds(self, version: str) -> list[str]:
        """Complete builds of `version`, oldest first (build ids sort by time)."""
        vdir = self.root / check_tag(version)
        if not vdir.is_dir():
            return []
        return sorted(
            p.name
            for p in vdir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        )

    def current_build(self, version: str) -> str | None:
        """The build CURRENT points to, or None before the first build."""
        pointer = self._pointer(version)
        return None if pointer is None else str(pointer["build_id"])

    def _pointer(self, version: str) -> dict[str, Any] | None:
        path = self.root / check_tag(version) / CURRENT
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("build_id"), str):
            raise ManifestError(f"{path}: no build_id")
        check_tag(raw["build_id"])
        return raw

    def prune(self, version: str, keep: int | None = None) -> list[str]:
        """Delete builds beyond the newest `keep` (default: the store's), never the current one.

        Returns the build ids removed.
        """
        n = self.keep if keep is None else keep
        if n < 1:
            raise ValueError(f"keep must be >= 1, got {n}")
        with file_lock(self.root / check_tag(version) / PUBLISH_LOCK):
            return self._prune_locked(version, n)

    def _prune_locked(self, version: str, n: int) -> list[str]:
        # List first, then read CURRENT: a build published in between is either listed (and
        # CURRENT read after names it) or not listed (and so not removed). Under the publish lock
        # nothing is published in between anyway.
        builds = self.builds(version)
        current = self.current_build(version)
        keep_ids = set(builds[-n:]) | ({current} if current else set())
        removed = [b for b in builds if b not in keep_ids]
        for b in removed:
            shutil.rmtree(self.root / version / b, ignore_errors=True)
            log.info("pruned index build %s/%s", version, b)
        return removed
