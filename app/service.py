"""The serving state: model versions with their ONNX sessions, index snapshots, aliases, and the
request paths (recall, score) that use them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from app.activation import BuildLoader
from app.delta import CatalogDelta, DeltaView, build_floor, search_merged
from app.filtering import filter_rows
from app.metrics import Metrics
from app.reindex.jobs import submit
from app.replicas import ReplicaRecords
from app.settings import Settings
from app.state import FeatureStore
from app.versions import ModelVersions, ServedVersion
from index_store.registry import SnapshotRegistry
from index_store.snapshot import Snapshot
from index_store.store import IndexStore
from models.errors import (
    FeatureError,
    IndexNotReady,
    ReplicasBehind,
    StoreUnavailable,
    TwoTowerError,
    UnknownItem,
    UnknownVersion,
)
from models.runtime import TowerRunner

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class UserContext:
    row: dict[str, Any]
    cold_start: bool
    history_keys: tuple[str, ...] = ("history",)  # the schema's from_interactions sources

    def recent_history(self, n: int) -> list[str]:
        """At most `n` history entries, the most recent first taken (each history is kept oldest
        first); slicing first keeps a 150k-entry history from costing a pass over all of it."""
        out: list[str] = []
        for key in self.history_keys:
            h = self.row.get(key)
            if isinstance(h, list) and len(out) < n:
                out += [x for x in h[-(n - len(out)) :] if isinstance(x, str)]
        return out


@dataclass(frozen=True)
class Recalled:
    version: str
    build: str
    cold_start: bool
    items: list[tuple[str, float]]


@dataclass(frozen=True)
class Scored:
    version: str
    build: str
    scores: list[float | None]


class Service:
    """Owns every heavy resource of the API process; built and torn down by the lifespan."""

    def __init__(self, settings: Settings, store: FeatureStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.models = ModelVersions(settings, store)
        self.delta = CatalogDelta(metrics)  # catalog changes since each serving build (app/delta.py)
        self.builds = BuildLoader(settings, metrics, self.models, self.delta)
        self.aliases: dict[str, str] = {}
        self.draining = False
        self.replicas = ReplicaRecords(settings, store)

    # --- model versions (app/versions.py) --------------------------------------------------------

    @property
    def versions(self) -> dict[str, ServedVersion]:
        return self.models.versions

    def load_versions(self) -> None:
        self.models.load_all()

    async def discover_versions(self) -> list[str]:
        return await self.models.discover()

    async def queue_missing_builds(self, tags: list[str]) -> None:
        """A build for each of `tags` that has no index yet (coalesced with any already queued)."""
        for tag in tags:
            try:
                if self.index_store.current_build(tag) is not None:
                    continue
                job = await submit(self.store, tag)
            except (TwoTowerError, OSError) as exc:
                log.warning("no build queued for %s yet: %s", tag, exc)
                continue
            log.info("no index for %s yet: build queued (job %s)", tag, job["job_id"])

    # --- versions and aliases -------------------------------------------------------------------

    async def refresh_aliases(self) -> None:
        try:
            self.aliases = await self.store.aliases()
        except StoreUnavailable as exc:
            log.warning("aliases not refreshed, keeping the cached ones: %s", exc)
        await self._ensure_default()

    async def _ensure_default(self) -> None:
        """On first boot `default` points at the newest version that has a ready index."""
        if DEFAULT_ALIAS in self.aliases:
            return
        ready = sorted(v for v in self.versions if self.registry.get(v) is not None)
        if not ready:
            return
        # Only where no record of it exists anywhere (Redis or the mirror file): a Redis restarted
        # empty gets its record back, it is never replaced by "the newest".
        try:
            target = await self.store.init_alias(DEFAULT_ALIAS, ready[-1])
            if target == ready[-1]:
                log.info("alias %s -> %s", DEFAULT_ALIAS, target)
        except StoreUnavailable as exc:
            target = ready[-1]
            log.warning("alias %s not persisted (serving %s meanwhile): %s", DEFAULT_ALIAS, target, exc)
        self.aliases[DEFAULT_ALIAS] = target

    def resolve(self, name: str | None) -> ServedVersion:
        name = name or DEFAULT_ALIAS
        served = self.versions.get(name)
        if served is None and name in self.aliases:
            served = self.versions.get(self.aliases[name])
        if served is None:
            raise UnknownVersion(name)
        return served

    def snapshot(self, served: ServedVersion) -> Snapshot:
        snap = self.registry.get(served.tag)
        if snap is None:
            raise IndexNotReady(served.tag)
        return snap

    async def move_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version` once every live replica serves it (else those replicas would
        answer 404 or 503 for every request through the alias): ReplicasBehind names the others."""
        served = self.resolve(version)
        if self.registry.get(served.tag) is None:
            raise IndexNotReady(served.tag)
        behind = await self.replicas.behind(served.tag)
        if behind:
            raise ReplicasBehind(served.tag, behind)
        await self.store.set_alias(alias, served.tag)
        self.aliases[alias] = served.tag

    # --- replica records (app/replicas.py) -------------------------------------------------------

    @property
    def replica_id(self) -> str:
        return self.replicas.replica_id

    async def live_replicas(self) -> list[dict[str, Any]]:
        return await self.replicas.live()

    def served_record(self) -> dict[str, Any]:
        builds = {tag: snap.build_id for tag, snap in self.registry.snapshots().items()}
        return self.replicas.record(self.versions, builds)

    async def heartbeat(self) -> None:
        await self.replicas.renew(self.served_record())

    async def leave(self) -> None:
        await self.replicas.leave()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "shutting down"
        try:
            served = self.resolve(DEFAULT_ALIAS)
        except UnknownVersion:
            return False, "no default model version yet (no version has a ready index)"
        if self.registry.get(served.tag) is None:
            return False, f"model version {served.tag} has no index loaded"
        return True, served.tag

    # --- builds (app/activation.py) -------------------------------------------------------------

    @property
    def registry(self) -> SnapshotRegistry:
        return self.builds.registry

    @property
    def index_store(self) -> IndexStore:
        return self.builds.index_store

    async def sync_builds(self) -> None:
        """Load any build that became current since we last looked; then the default alias."""
        await self.builds.sync()
        await self._ensure_default()

    def activate(self, tag: str, build_id: str) -> bool:
        return self.builds.activate(tag, build_id)

    # --- catalog changes ------------------------------------------------------------------------

    def floors(self) -> dict[str, int]:
        """Per version, the last catalog change its serving build holds."""
        return {tag: build_floor(snap) for tag, snap in self.registry.snapshots().items()}

    async def sync_changes(self) -> None:
        """Apply the catalog changes other replicas took (the poll); a store down is retried next poll."""
        try:
            await self.delta.poll(self.store, self.versions, self.floors())
        except StoreUnavailable as exc:
            log.warning("catalog changes not read, retried at the next poll: %s", exc)

    def check_item(self, item_id: str, features: Mapping[str, Any], where: str) -> None:
        """An upsert must encode under every served version (FeatureError names `where`.field)."""
        limit = self.settings.limits.max_id_length
        if len(item_id) > limit:
            raise FeatureError(where.rsplit(".", 1)[0] + ".item_id", f"at most {limit} characters")
        for served in self.versions.values():
            valid = served.item.encoder.validate(features, where)
            self._check_sequence_ids(served.item, valid, where)

    async def change_items(self, changes: list[dict[str, Any]]) -> None:
        """Record checked changes durably, then apply them here before the caller answers."""
        stamped = await self.store.append_changes(changes)
        await anyio.to_thread.run_sync(self.delta.apply, stamped, self.versions, self.floors())

    # --- the request paths ----------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], snap: Snapshot | None = None) -> T:
        """Tower + search: in a worker thread or inline on the event loop (see Runtime settings).

        Inline costs no thread hop and blocks the loop no longer than the compute itself; a
        search of a large exact index goes to a thread so that two can run on two cores.
        """
        rt = self.settings.runtime
        in_thread = rt.compute_in_thread
        if in_thread is None:
            in_thread = snap is not None and snap.kind == "exact" and snap.size > rt.thread_above_exact_items
        if in_thread:
            return await anyio.to_thread.run_sync(fn)
        return fn()

    async def user_context(
        self, served: ServedVersion, user_id: str | None, features: Mapping[str, Any] | None
    ) -> UserContext:
        sent = served.user.encoder.validate(features or {}, "features")
        self._check_sequence_ids(served.user, sent, "features")
        stored: dict[str, Any] | None = None
        if user_id is not None:
            try:
                stored = await self.store.get_user(user_id)
            except StoreUnavailable:
                if not sent:
                    raise
                # The request carries its own features: serve it on them alone.
                log.warning("feature store down: a request served on its own features only")
        # The id goes under the schema's id column: an imported schema may call it anything.
        row = {**(stored or {}), **sent, served.user.encoder.tower.id_field: user_id}
        cold = stored is None and not sent
        if cold:
            self.metrics.cold_start.inc()
        return UserContext(row, cold, served.manifest.features.layout.history)

    def _check_sequence_ids(self, tower: TowerRunner, sent: Mapping[str, Any], where: str) -> None:
        """Item ids inside a sequence feature (a history) get the id length limit of every id."""
        limit = self.settings.limits.max_id_length
        for spec in tower.encoder.tower.fields:
            values = sent.get(spec.source)
            if spec.kind != "sequence" or not isinstance(values, list):
                continue
            for i, v in enumerate(values):
                if isinstance(v, str) and len(v) > limit:
                    raise FeatureError(f"{where}.{spec.source}.{i}", f"at most {limit} characters")

    async def recall(
        self,
        version: str | None,
        user_id: str | None,
        features: Mapping[str, Any] | None,
        k: int,
        exclude: Sequence[str],
        exclude_history: bool,
        filter: Mapping[str, Any] | None = None,
    ) -> Recalled:
        served = self.resolve(version)
        snap = self.snapshot(served)  # one reference for the whole request
        allowed = filter_rows(self.settings, served.manifest, snap, filter)
        user = await self.user_context(served, user_id, features)
        # One exclusion budget for the explicit ids and the history together: every excluded id
        # widens the search (measured: a 150k-id history cost 107 ms of event loop per request). The
        # route refuses an explicit list beyond it; the history fills what is left, most recent first.
        banned = set(exclude)
        if exclude_history:
            banned.update(user.recent_history(self.settings.limits.max_exclude - len(exclude)))

        view = self.delta.view(served.tag)
        delta_allowed = view.filter_rows(filter, served, self.settings.filters.max_values)

        def compute() -> list[tuple[str, float]]:
            q = served.user.embed([user.row])[0]
            exact_below = self.settings.filters.exact_below_for(snap.kind)
            return search_merged(snap, view, q, k, banned, allowed, delta_allowed, exact_below)

        items = await self.run(compute, snap)
        return Recalled(served.tag, snap.build_id, user.cold_start, items)

    async def similar(
        self,
        version: str | None,
        item_id: str,
        features: Mapping[str, Any] | None,
        k: int,
        exclude: Sequence[str],
        filter: Mapping[str, Any] | None = None,
    ) -> Recalled:
        """Neighbours of one item: its stored vector (or the item tower on `features`) as the
        query, the item itself never among them."""
        served = self.resolve(version)
        snap = self.snapshot(served)
        allowed = filter_rows(self.settings, served.manifest, snap, filter)
        view = self.delta.view(served.tag)
        delta_allowed = view.filter_rows(filter, served, self.settings.filters.max_values)
        row: dict[str, Any] | None = None
        if features is not None:
            valid = served.item.encoder.validate(features, "features")
            self._check_sequence_ids(served.item, valid, "features")
            row = {**valid, served.item.encoder.tower.id_field: item_id}
        else:
            stored, found = _vectors_for(snap, view, [item_id])
            if not found[0]:
                raise UnknownItem(item_id, served.tag)
        banned = {*exclude, item_id}

        def compute() -> list[tuple[str, float]]:
            q = served.item.embed([row])[0] if row is not None else stored[0]
            exact_below = self.settings.filters.exact_below_for(snap.kind)
            return search_merged(snap, view, q, k, banned, allowed, delta_allowed, exact_below)

        items = await self.run(compute, snap)
        return Recalled(served.tag, snap.build_id, False, items)

    async def score(
        self,
        version: str | None,
        user_id: str | None,
        features: Mapping[str, Any] | None,
        items: Sequence[tuple[str, Mapping[str, Any] | None]],
    ) -> Scored:
        served = self.resolve(version)
        snap = self.snapshot(served)
        with_features: list[int] = []
        rows: list[dict[str, Any]] = []
        for i, (item_id, feats) in enumerate(items):
            if feats is not None:
                valid = served.item.encoder.validate(feats, f"items.{i}.features")
                self._check_sequence_ids(served.item, valid, f"items.{i}.features")
                with_features.append(i)
                rows.append({**valid, served.item.encoder.tower.id_field: item_id})
        user = await self.user_context(served, user_id, features)
        view = self.delta.view(served.tag)

        def compute() -> list[float | None]:
            u = served.user.embed([user.row])[0]  # the user tower runs once per request
            vecs, found = _vectors_for(snap, view, [item_id for item_id, _ in items])
            if rows:  # one item-tower batch for everything sent with features
                vecs[with_features] = served.item.embed(rows)
                found[with_features] = True
            # One matrix-vector product = the user vector tiled across the batch, dotted row-wise.
            s = (vecs @ u).tolist()
            return [x if f else None for x, f in zip(s, found.tolist(), strict=True)]

        scores = await self.run(compute)
        return Scored(served.tag, snap.build_id, scores)


def _vectors_for(snap: Snapshot, view: DeltaView, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stored vectors, a pending upsert's taking the place of the build's, a pending delete none."""
    vecs, found = snap.vectors_for(item_ids)
    if view.shadow:
        for i, item_id in enumerate(item_ids):
            if item_id in view.shadow:
                r = view.row_of.get(item_id)
                found[i] = r is not None
                vecs[i] = view.vectors[r] if r is not None else 0.0
    return vecs, found


def feature_error_detail(exc: FeatureError) -> list[dict[str, Any]]:
    """FeatureError in the same shape as FastAPI's own validation errors."""
    return [{"loc": ["body", *exc.field.split(".")], "msg": exc.message, "type": "feature_error"}]
