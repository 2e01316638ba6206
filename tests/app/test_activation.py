"""How a replica takes a new build: one load per build however many ask for it, never backwards, and a
transient read error retried instead of pinning the old build (issue 11, cases 6 and 7)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import Service
from index_store.directory import INDEX_FILE
from index_store.store import IndexStore
from tests.app.conftest import make_settings
from tests.data import build_index


@pytest.fixture
def held(model_store: Path, index_root: Path, data_dir: Path) -> Iterator[TestClient]:
    """A service whose poll loop never runs on its own (a day apart): the test drives sync_builds."""
    s = make_settings(model_store, index_root, data_dir, poll_interval_s=86_400)
    with TestClient(create_app(s)) as client:
        yield client


def _service(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def _serving(client: TestClient, version: str) -> str:
    snap = _service(client).registry.get(version)
    assert snap is not None
    return snap.build_id


def _swaps(service: Service, version: str) -> float:
    return float(service.metrics.swaps.labels(version)._value.get())


def test_two_callers_load_a_build_once(
    held: TestClient, model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    """The poll loop and the worker's on_built asking at the same moment: one load, one swap."""
    service = _service(held)
    before = _swaps(service, version)
    new = build_index(index_root, model_store, version, data_dir)

    async def both() -> None:
        await asyncio.gather(service.sync_builds(), service.sync_builds(), service.sync_builds())

    held.portal.call(both)  # type: ignore[union-attr]
    assert _serving(held, version) == new
    assert _swaps(service, version) - before == 1


def test_an_older_build_is_never_swapped_back_in(
    held: TestClient, model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    """A slow load of an older build that finishes after a newer one is discarded, not served."""
    service = _service(held)
    old = _serving(held, version)
    new = build_index(index_root, model_store, version, data_dir)
    held.portal.call(service.sync_builds)  # type: ignore[union-attr]
    assert _serving(held, version) == new
    # The older build's load lands late (as it would from a slow thread): it must not win.
    service.activate(version, old)
    assert _serving(held, version) == new
    assert old < new  # build ids are time-ordered: that is what "older" means here


def test_a_transient_read_error_is_retried(
    held: TestClient, model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    """An I/O error while reading a published build is not a verdict on the build: retried with
    backoff, it swaps in once the read succeeds, without a new publish."""
    service = _service(held)
    old = _serving(held, version)
    new = build_index(index_root, model_store, version, data_dir)
    path = index_root / version / new / INDEX_FILE
    aside = path.with_name("aside")
    os.rename(path, aside)
    path.mkdir()  # reading it raises IsADirectoryError: an OSError, as EIO or ESTALE would be
    try:
        held.portal.call(service.sync_builds)  # type: ignore[union-attr]
        assert _serving(held, version) == old
    finally:
        path.rmdir()
        os.rename(aside, path)
    for _ in range(200):  # backoff: the first retry comes within a second or so
        held.portal.call(service.sync_builds)  # type: ignore[union-attr]
        if _serving(held, version) == new:
            break
        held.portal.call(asyncio.sleep, 0.05)  # type: ignore[union-attr]
    assert _serving(held, version) == new
    assert IndexStore(index_root).current_build(version) == new


def test_a_real_mismatch_is_still_refused(
    held: TestClient, model_store: Path, index_root: Path, data_dir: Path, version: str
) -> None:
    """A checksum mismatch is a verdict: refused once and not retried on every poll."""
    service = _service(held)
    old = _serving(held, version)
    new = build_index(index_root, model_store, version, data_dir)
    path = index_root / version / new / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused = service.metrics.refused.labels(version)
    for _ in range(5):
        held.portal.call(service.sync_builds)  # type: ignore[union-attr]
    assert _serving(held, version) == old
    assert refused._value.get() == 1
    shutil.rmtree(index_root / version / new)
