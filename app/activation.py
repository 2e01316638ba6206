"""Which build each model version serves: builds that became current in the shared index store
are loaded, verified, warmed and swapped in, one at a time per version; a build that fails keeps
the previous one serving (refused for good on a verdict, retried with backoff on an I/O error)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from app.delta import CatalogDelta, build_floor
from app.metrics import Metrics
from app.settings import Settings
from app.versions import ModelVersions, ServedVersion
from index_store.registry import SnapshotRegistry
from index_store.snapshot import Snapshot
from index_store.store import IndexStore
from models.errors import BuildRefused, TwoTowerError

log = logging.getLogger(__name__)
# Backoff of a build whose read failed with an I/O error: 0.5 s, 1 s, 2 s, ... at most 30 s.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


class BuildLoader:
    """The serving snapshots (`registry`) of every version, kept at their current builds."""

    def __init__(
        self, settings: Settings, metrics: Metrics, models: ModelVersions, delta: CatalogDelta
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.delta = delta
        self.registry = SnapshotRegistry()
        self.index_store = IndexStore(Path(settings.index_store), keep=settings.index.keep_builds)
        self._refused: dict[str, str] = {}  # version -> build id already refused (not retried each poll)
        self._retry: dict[str, tuple[str, int, float]] = {}  # version -> (build, failures, next try)
        self._loading: dict[str, asyncio.Lock] = {}  # version -> its single-flight activation

    @property
    def versions(self) -> dict[str, ServedVersion]:
        return self.models.versions

    async def sync(self) -> None:
        """Load any build that became current in the shared index store since we last looked.

        Single flight per version: the poll loop and the worker's `on_built` may ask at the same
        moment; the second waits for the first's load and then finds the build already serving
        (measured before: "replacing 37b57a with 37b57a" at 1M items, twice the memory in a swap).
        """
        for tag in list(self.versions):
            try:
                current = self.index_store.current_build(tag)
            except (TwoTowerError, OSError) as exc:
                log.error("index pointer of %s unreadable, current build keeps serving: %s", tag, exc)
                continue
            if current is None:
                continue
            async with self._loading.setdefault(tag, asyncio.Lock()):
                await self._sync_one(tag, current)

    async def _sync_one(self, tag: str, current: str) -> None:
        snap = self.registry.get(tag)
        if snap is not None and snap.build_id >= current:
            return  # serving it, or a newer one: only ever forward
        if self._refused.get(tag) == current:
            return
        retry = self._retry.get(tag)
        if retry is not None and retry[0] == current and time.monotonic() < retry[2]:
            return
        ok = await anyio.to_thread.run_sync(self.activate, tag, current)
        if not ok and self.registry.get(tag) is None:
            await anyio.to_thread.run_sync(self._fall_back, tag, current)

    def _fall_back(self, tag: str, failed: str) -> None:
        """Nothing serves `tag` (at start) and its current build failed: the last good build is
        the newest older one that passes every check, so a restart is not an outage."""
        refused = self._refused.get(tag) == failed
        for build_id in reversed([b for b in self.index_store.builds(tag) if b < failed]):
            if self.activate(tag, build_id):
                log.warning("%s serves its previous build %s until a good build is published", tag, build_id)
                break
        if refused:
            self._refused[tag] = failed  # retry nothing until CURRENT changes
        # A transient failure keeps its retry schedule: the current build swaps in once it reads.

    def activate(self, tag: str, build_id: str) -> bool:
        """Verify, warm and swap in one build; on any failure the previous snapshot keeps serving.

        A real mismatch (checksum, dim, version, a failed warm-up) is a verdict: that build is not
        tried again. An I/O error (EIO, ESTALE on a shared volume, a timeout, memory) says nothing
        about the build: it is retried with backoff instead of pinning the old build until the next
        publish. Returns True only if this build is now serving.
        """
        served = self.versions[tag]
        try:
            snap = self.index_store.load(
                tag, served.manifest, build_id, threads=self.settings.runtime.faiss_threads
            )
            self.warm_up(served, snap)
        except (OSError, MemoryError) as exc:
            failures = self._retry[tag][1] + 1 if self._retry.get(tag, ("",))[0] == build_id else 1
            delay = min(RETRY_FIRST_S * 2 ** (failures - 1), RETRY_MAX_S)
            self._retry[tag] = (build_id, failures, time.monotonic() + delay)
            self.metrics.load_retries.labels(tag).inc()
            log.warning(
                "index build %s/%s not loaded (%s: %s), previous build keeps serving; retry %d in %.1fs",
                tag,
                build_id,
                type(exc).__name__,
                exc,
                failures,
                delay,
            )
            return False
        except (TwoTowerError, ValueError, RuntimeError) as exc:
            self._refused[tag] = build_id
            self._retry.pop(tag, None)
            self.metrics.refused.labels(tag).inc()
            log.error("index build %s/%s refused, previous build keeps serving: %s", tag, build_id, exc)
            return False
        if self._retry.get(tag, ("",))[0] == build_id:
            del self._retry[tag]
        swapped, old = self.registry.advance(tag, snap)
        if not swapped:
            assert old is not None
            log.info(
                "index %s/%s loaded after %s: older, discarded (never swap back)", tag, build_id, old.build_id
            )
            return False
        # After the swap, never before: a delete the old build still holds stays hidden until then.
        self.delta.apply([], {tag: served}, {tag: build_floor(snap)})
        self.metrics.swaps.labels(tag).inc()
        self.metrics.items.labels(tag).set(snap.size)
        log.info(
            "index %s/%s active (%d items)%s",
            tag,
            build_id,
            snap.size,
            f", replacing {old.build_id}" if old is not None else "",
        )
        return True

    def warm_up(self, served: ServedVersion, snap: Snapshot) -> None:
        """A few real tower runs and searches before the build takes traffic; NaN refuses it."""
        sample = [str(x) for x in snap.ids[: min(5, snap.size)]]
        history = {key: sample for key in served.manifest.features.layout.history}
        users: list[dict[str, Any]] = [{}, history]  # a cold user, and one with a history
        q = served.user.embed(users)
        results = snap.search(q, min(10, max(1, snap.size)))
        vecs, found = snap.vectors_for(sample)
        if not np.all(np.isfinite(q)) or not np.all(np.isfinite(vecs[found])):
            raise BuildRefused("warm-up produced non-finite embeddings")
        for res in results:
            if not res or not all(math.isfinite(s) for _, s in res):
                raise BuildRefused("warm-up search returned no or non-finite scores")
