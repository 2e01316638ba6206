"""The registry swap: readers never fail and never see a half-swapped state; old snapshots are freed."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from index_store.build import IndexConfig
from index_store.registry import SnapshotRegistry
from tests.index_store.conftest import snapshot_of, unit_vectors


def test_swap_returns_previous_and_checks_version() -> None:
    reg = SnapshotRegistry()
    a, b = snapshot_of(unit_vectors(10), tag="a"), snapshot_of(unit_vectors(10), tag="b")
    assert reg.get("v1") is None
    assert reg.swap("v1", a) is None
    assert reg.swap("v1", b) is a
    assert reg.get("v1") is b and reg.versions() == ["v1"]
    with pytest.raises(ValueError, match="cannot serve"):
        reg.swap("v2", a)
    assert reg.remove("v1") is b and reg.get("v1") is None


def test_advance_only_moves_forward() -> None:
    """Build ids are time-ordered: an older or the same build never replaces the current one."""
    reg = SnapshotRegistry()
    old, new = (
        snapshot_of(unit_vectors(10), tag="20260101T000000.000Z-a"),
        snapshot_of(unit_vectors(10), tag="20260101T000001.000Z-b"),
    )
    assert reg.advance("v1", old) == (True, None)
    assert reg.advance("v1", new) == (True, old)
    assert reg.advance("v1", old) == (False, new)  # a late load of the older build loses
    assert reg.advance("v1", new) == (False, new)  # the same build twice: one swap
    assert reg.get("v1") is new


def test_old_snapshot_freed_when_no_reader_holds_it() -> None:
    reg = SnapshotRegistry()
    reg.swap("v1", snapshot_of(unit_vectors(10), tag="a"))
    held = reg.get("v1")
    ref = weakref.ref(held)
    reg.swap("v1", snapshot_of(unit_vectors(10), tag="b"))
    assert ref() is not None  # a reader still holds it
    del held
    gc.collect()
    assert ref() is None


def test_concurrent_searches_during_swaps() -> None:
    reg = SnapshotRegistry()
    snaps = [
        snapshot_of(unit_vectors(2000, seed=s), IndexConfig(exact_threshold=1000 * s), tag=t)
        for s, t in ((1, "a"), (5, "b"))  # one IVF, one exact
    ]
    reg.swap("v1", snaps[0])
    q = unit_vectors(2, seed=9)
    stop = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                snap = reg.get("v1")  # one reference for the whole "request"
                assert snap is not None
                out = snap.search(q, 10, exclude=[{f"{snap.build_id}-0"}, set()])
                assert all(len(r) == 10 for r in out)
                # every id comes from the snapshot the reader took: never a mix of two builds
                assert all(i.startswith(snap.build_id + "-") for r in out for i, _ in r)
                assert snap.manifest["build_id"] == snap.build_id
                searches[0] += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    swaps = 0
    # Until both sides have done enough, not for a fixed time: a starved CI box did only 61 searches
    # in 1.5 s; the deadline only bounds a hang.
    deadline = time.monotonic() + 60
    while (swaps <= 100 or searches[0] <= 100) and time.monotonic() < deadline:
        reg.swap("v1", snaps[swaps % 2 == 0])
        swaps += 1
        time.sleep(0.001)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[0]
    assert swaps > 100 and searches[0] > 100
