"""The index store under concurrent writers: the file lock, stale temporary directories, publish as a
compare-and-set, and the guard against a shrunk catalog (issue 11, cases 10 and 12)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from index_store.build import IndexConfig
from index_store.directory import TMP_PREFIX, new_build_id
from index_store.locking import file_lock
from index_store.store import IndexStore
from models.errors import BuildRefused

CONFIG = IndexConfig(sample_queries=20)


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock, marker = tmp_path / "v" / ".build.lock", tmp_path / "got-it"
    script = (
        "from pathlib import Path; from index_store.locking import file_lock\n"
        f"with file_lock(Path({str(lock)!r})): Path({str(marker)!r}).touch()"
    )
    with file_lock(lock):
        other = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(1.5)
        assert other.poll() is None and not marker.exists()  # waits while we hold it
    assert other.wait(30) == 0 and marker.exists()


def test_stale_tmp_removed_only_when_its_builder_is_gone(
    tmp_path: Path, model_store: Path, demo_version: str, catalog: Callable[..., Any]
) -> None:
    store = IndexStore(tmp_path / "index")
    vdir = tmp_path / "index" / demo_version
    vdir.mkdir(parents=True)
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        alive_tmp = vdir / f"{TMP_PREFIX}{new_build_id()}.{live.pid}"
        dead_tmp = vdir / f"{TMP_PREFIX}{new_build_id()}.{dead.pid}"
        old_style = vdir / f"{TMP_PREFIX}{new_build_id()}"  # written before the pid was recorded
        for d in (alive_tmp, dead_tmp, old_style):
            d.mkdir()
            (d / "index.faiss").write_bytes(b"partial")
        store.build(model_store, demo_version, catalog(50), CONFIG)
        assert alive_tmp.is_dir(), "a build in progress was deleted"
        assert not dead_tmp.exists() and not old_style.exists()
    finally:
        live.kill()
        live.wait()


def test_publish_is_a_compare_and_set(
    tmp_path: Path, model_store: Path, demo_version: str, catalog: Callable[..., Any]
) -> None:
    """A build that started before the current one was published never replaces it."""
    store = IndexStore(tmp_path / "index")
    older = new_build_id()
    time.sleep(0.01)
    newer = store.build(model_store, demo_version, catalog(50), CONFIG)
    with pytest.raises(BuildRefused, match="published after this one started"):
        store.build(model_store, demo_version, catalog(50), CONFIG, build_id=older)
    assert store.current_build(demo_version) == newer
    assert store.builds(demo_version) == [newer]  # the refused build was deleted


def test_shrunk_catalog_refused_unless_allowed(
    tmp_path: Path, model_store: Path, demo_version: str, catalog: Callable[..., Any]
) -> None:
    store = IndexStore(tmp_path / "index")
    first = store.build(model_store, demo_version, catalog(200), CONFIG)
    with pytest.raises(BuildRefused, match="catalog shrank from 200 items .* to 60"):
        store.build(model_store, demo_version, catalog(60), CONFIG)
    assert store.current_build(demo_version) == first and store.builds(demo_version) == [first]
    assert store.build(model_store, demo_version, catalog(120), CONFIG)  # 60%: above the 50% floor
    smaller = store.build(model_store, demo_version, catalog(10), CONFIG, allow_shrink=True)
    assert store.current_build(demo_version) == smaller
    off = IndexConfig(sample_queries=20, max_shrink=0)
    assert store.build(model_store, demo_version, catalog(200), off)
    assert store.build(model_store, demo_version, catalog(1), off)
