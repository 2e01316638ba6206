"""Catalog changes between rebuilds, as each replica serves them: a small in-memory delta per
model version that the request paths search beside the snapshot.

Every change of the log (app/state/changes.py) newer than the serving build's `changes_seq` (the
last change the build folded in) is held here: an upsert as its item-tower vector and its filter
attributes, a delete as a tombstone. Any id with a pending change is hidden in the snapshot (an
upsert shadows the build's copy, a delete removes it); upserted rows are searched exactly (the delta
is small) and merged with the snapshot's answer. When a build swaps in, entries up to its
`changes_seq` are dropped; later ones stay, so a change made during a rebuild is never lost.

Applying is idempotent by sequence number: the replica that takes a change applies it before
answering, and its poll applies the same change again without effect.

Memory stays bounded by what is pending: each version holds only the changes after its build's
`changes_seq`, and the newest change per id kept for versions seen later (`_latest`) is pruned up
to the lowest `changes_seq` among the versions served. A version that shows up later with an older
build (below that mark) reads what it lacks from the log at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from index_store.attributes import AttributeCollector, Attributes, concat
from index_store.filters import filter_mask
from index_store.snapshot import Snapshot
from models.errors import FeatureError

if TYPE_CHECKING:
    from app.metrics import Metrics
    from app.state import FeatureStore
    from app.versions import ServedVersion

log = logging.getLogger(__name__)
MANIFEST_KEY = "changes_seq"  # in a build manifest: the last change folded into it


def build_floor(snap: Snapshot | None) -> int:
    """The last change a build folded in (0: none, or a build from before the change log)."""
    raw = snap.manifest.get(MANIFEST_KEY) if snap is not None else None
    return raw if isinstance(raw, int) else 0


@dataclass(frozen=True, eq=False)
class DeltaView:
    """One version's pending changes, immutable: a request holds one for its whole search."""

    shadow: frozenset[str] = frozenset()  # every id with a pending change: hidden in the snapshot
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))  # upserted ids
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    attributes: Attributes = field(default_factory=lambda: Attributes(0))
    row_of: Mapping[str, int] = field(default_factory=dict)
    _in_build: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def hidden_in(self, snap: Snapshot) -> frozenset[str]:
        """The pending ids that `snap` holds: only those need hiding (each one hidden widens the
        search by one). New items, most upserts, are not among them. Once per view and build."""
        found = self._in_build.get(snap.build_id)
        if found is None:
            pending = sorted(self.shadow)
            rows = snap.row_of.rows(pending)  # one vectorised lookup for all of them
            found = frozenset(i for i, r in zip(pending, rows.tolist(), strict=True) if r >= 0)
            self._in_build[snap.build_id] = found
        return found

    def deleted(self, item_id: str) -> bool:
        return item_id in self.shadow and item_id not in self.row_of

    def search(
        self, query: np.ndarray, k: int, banned: Collection[str], allowed: np.ndarray | None
    ) -> list[tuple[str, float]]:
        """Exact top-k over the upserted rows (in `allowed`, not in `banned`)."""
        if self.size == 0 or k < 1:
            return []
        scores = (self.vectors @ query).astype(np.float64)
        if allowed is not None:
            scores[~allowed] = -np.inf
        rows = [r for r in map(self.row_of.get, banned) if r is not None]
        if rows:
            scores[rows] = -np.inf
        # Every request searches the pending rows (up to thousands during an upsert stream): a
        # partial sort and one conversion of the winners, not a full sort and a loop over k rows.
        n = len(scores)
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]  # score descending, ties by row
        top = top[np.isfinite(scores[top])]
        return list(zip(self.ids[top].tolist(), scores[top].tolist(), strict=True))

    def filter_rows(
        self, raw: Mapping[str, Any] | None, served: ServedVersion, max_values: int
    ) -> np.ndarray | None:
        if raw is None or self.size == 0:
            return None
        return filter_mask(raw, served.manifest.features.item, self.attributes, max_values=max_values)


EMPTY = DeltaView()


def search_merged(
    snap: Snapshot,
    view: DeltaView,
    query: np.ndarray,
    k: int,
    banned: Collection[str],
    allowed: np.ndarray | None,
    delta_allowed: np.ndarray | None,
    exact_below: float,
) -> list[tuple[str, float]]:
    """Top-k over the snapshot (minus every id the delta holds) and the delta's upserted rows."""
    in_build = view.hidden_in(snap) if view.shadow else frozenset()
    hidden = set(banned) | in_build if in_build else banned
    found = snap.search(query, k, [hidden], allowed, exact_below)[0]
    if view.size == 0:
        return found
    merged = found + view.search(query, k, banned, delta_allowed)
    merged.sort(key=lambda x: -x[1])
    return merged[:k]


@dataclass
class _Entry:
    seq: int
    vector: np.ndarray | None  # None: a delete
    row: dict[str, Any] | None


@dataclass
class _Version:
    floor: int
    entries: dict[str, _Entry] = field(default_factory=dict)
    view: DeltaView = EMPTY
    gap: int = 0  # changes in (floor, gap] were pruned from `_latest` before this version came: re-read


class CatalogDelta:
    """The pending changes of every served version on this replica."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.cursor = 0  # the last sequence number read from the log by the poll
        self._latest: dict[str, dict[str, Any]] = {}  # item id -> its newest change (for new versions)
        self._pruned = 0  # `_latest` holds no change at or below this seq
        self._versions: dict[str, _Version] = {}
        self._lock = threading.Lock()

    def view(self, tag: str) -> DeltaView:
        state = self._versions.get(tag)
        return state.view if state is not None else EMPTY

    @property
    def held(self) -> int:
        """Newest-change copies kept for versions seen later (pruned as builds fold them in)."""
        return len(self._latest)

    def pending(self, tag: str) -> int:
        state = self._versions.get(tag)
        return len(state.entries) if state is not None else 0

    async def poll(
        self, store: FeatureStore, versions: Mapping[str, ServedVersion], floors: Mapping[str, int]
    ) -> None:
        """Read the log from the cursor and apply what is new (in a thread: it runs item towers)."""
        import anyio

        for tag, state in list(self._versions.items()):
            if tag in versions and state.gap > state.floor:  # a version that came after a prune
                gap = state.gap
                missed = await store.changes_since(state.floor)
                await anyio.to_thread.run_sync(self.apply, missed, {tag: versions[tag]}, floors)
                state.gap = 0 if state.gap == gap else state.gap
        changes = await store.changes_since(self.cursor)
        await anyio.to_thread.run_sync(self.apply, changes, versions, floors)
        if changes:
            self.cursor = max(self.cursor, max(int(c["seq"]) for c in changes))
        self.prune(versions)

    def prune(self, versions: Collection[str]) -> None:
        """Forget the newest-change copies every served version's build already holds."""
        with self._lock:
            states = [self._versions[t] for t in versions if t in self._versions]
            if not states or len(states) < len(versions):
                return
            low = min(state.floor for state in states)
            if low > self._pruned:
                self._latest = {i: c for i, c in self._latest.items() if int(c["seq"]) > low}
                self._pruned = low

    def apply(
        self, changes: list[dict[str, Any]], versions: Mapping[str, ServedVersion], floors: Mapping[str, int]
    ) -> None:
        """Apply `changes` (any order, repeats ignored) to every version, after dropping what each
        version's serving build already holds (`floors`: tag -> its build's `changes_seq`)."""
        with self._lock:
            for c in sorted(changes, key=lambda c: int(c["seq"])):
                old = self._latest.get(c["item_id"])
                if old is None or int(old["seq"]) < int(c["seq"]):
                    self._latest[c["item_id"]] = c
            for tag, served in versions.items():
                state = self._versions.get(tag)
                todo = changes
                if state is None:  # a version seen for the first time: every change it lacks
                    state = self._versions[tag] = _Version(floors.get(tag, 0))
                    todo = list(self._latest.values())
                    if state.floor < self._pruned:  # some of them are no longer here: the poll reads them
                        state.gap = self._pruned
                dropped = self._drop_through(state, floors.get(tag, 0))
                before = dict(state.entries)
                changed = self._apply_one(tag, served, state, todo)
                if dropped or changed:
                    # The common case, new items only: the view grows by their rows (O(batch));
                    # anything else (a replaced or deleted id, a build folding entries in): rebuilt.
                    grown = None if dropped else _grown(state.view, before, state, served)
                    state.view = grown if grown is not None else _view(state, served)
                self.metrics.delta_items.labels(tag).set(len(state.entries))

    def _drop_through(self, state: _Version, floor: int) -> bool:
        if floor <= state.floor:
            return False
        state.floor = floor
        before = len(state.entries)
        state.entries = {i: e for i, e in state.entries.items() if e.seq > floor}
        return len(state.entries) != before

    def _apply_one(
        self, tag: str, served: ServedVersion, state: _Version, changes: list[dict[str, Any]]
    ) -> bool:
        fresh = []
        for c in changes:
            seq = int(c["seq"])
            entry = state.entries.get(c["item_id"])
            if seq > state.floor and (entry is None or entry.seq < seq):
                fresh.append(c)
        latest: dict[str, dict[str, Any]] = {}
        for c in fresh:  # only the newest change of an id in this batch counts
            if c["item_id"] not in latest or int(latest[c["item_id"]]["seq"]) < int(c["seq"]):
                latest[c["item_id"]] = c
        rows: list[dict[str, Any]] = []
        upserts: list[dict[str, Any]] = []
        for c in latest.values():
            if c["op"] == "delete":
                state.entries[c["item_id"]] = _Entry(int(c["seq"]), None, None)
                continue
            try:
                valid = served.item.encoder.validate(c.get("features") or {}, "features")
            except FeatureError as exc:  # checked against every version served when it was taken
                log.warning("upsert of %s not applied to %s: %s", c["item_id"], tag, exc)
                continue
            rows.append({**valid, served.item.encoder.tower.id_field: c["item_id"]})
            upserts.append(c)
        if rows:
            vectors = served.item.embed(rows)
            for c, row, vec in zip(upserts, rows, vectors, strict=True):
                state.entries[c["item_id"]] = _Entry(int(c["seq"]), np.asarray(vec, dtype=np.float32), row)
        return bool(latest)


def _grown(
    view: DeltaView, before: Mapping[str, _Entry], state: _Version, served: ServedVersion
) -> DeltaView | None:
    """`view` with the upserts of ids it had no entry for appended, or None if anything else changed."""
    new = [(i, e) for i, e in state.entries.items() if before.get(i) is not e]
    if not new or any(i in before or e.vector is None or e.row is None for i, e in new):
        return None
    if len(view.shadow) != len(before):  # not the view of `before` (cannot happen; be sure)
        return None
    collector = AttributeCollector(served.manifest.features.item)
    for _ in collector.watch([e.row for _, e in new if e.row is not None]):
        pass
    attributes = concat(view.attributes, collector.finish())
    if attributes is None:
        return None
    vectors = np.stack([e.vector for _, e in new if e.vector is not None]).astype(np.float32)
    return DeltaView(
        shadow=view.shadow | {i for i, _ in new},
        ids=np.concatenate([view.ids, np.array([i for i, _ in new], dtype=str)]),
        vectors=vectors if view.size == 0 else np.concatenate([view.vectors, vectors]),
        attributes=attributes,
        row_of={**view.row_of, **{i: view.size + r for r, (i, _) in enumerate(new)}},
    )


def _view(state: _Version, served: ServedVersion) -> DeltaView:
    kept = [(i, e) for i, e in state.entries.items() if e.vector is not None and e.row is not None]
    if not kept:
        return DeltaView(shadow=frozenset(state.entries))
    collector = AttributeCollector(served.manifest.features.item)  # the build's own column code
    for _ in collector.watch([e.row for _, e in kept if e.row is not None]):
        pass
    return DeltaView(
        shadow=frozenset(state.entries),
        ids=np.array([i for i, _ in kept], dtype=str),
        vectors=np.stack([e.vector for _, e in kept if e.vector is not None]).astype(np.float32),
        attributes=collector.finish(),
        row_of={i: r for r, (i, _) in enumerate(kept)},
    )
