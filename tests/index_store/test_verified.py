"""Build files hashed once per host: a later load trusts an unchanged file, never a changed one."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from index_store.attributes import ATTRIBUTES_FILE
from index_store.build import IndexConfig
from index_store.directory import DATA_FILES, INDEX_FILE, VECTORS_FILE
from index_store.idmap import ID_TABLE_FILE
from index_store.store import IndexStore
from index_store.verified import recorded
from models.errors import ArtifactError
from models.manifest import ModelManifest

MARGIN_S = 0.05  # files this much older than their hash are recorded (the default is 1 s)
ALL = {*DATA_FILES, ID_TABLE_FILE, ATTRIBUTES_FILE}  # the filter columns are mapped too


def _settled(bdir: Path) -> None:
    """Wait until every file's ctime is more than the margin in the past (a condition, not a nap)."""
    newest = max(os.stat(p).st_ctime_ns for p in bdir.iterdir())
    while time.time_ns() <= newest + MARGIN_S * 1e9:
        time.sleep(MARGIN_S / 5)


def _hashed(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The files the last load hashed, from its debug line."""
    lines = [r for r in caplog.records if "hashed" in r.getMessage() and r.name == "index_store.store"]
    assert lines, "no load logged what it hashed"
    return list(lines[-1].args[2])  # type: ignore[index]


@pytest.fixture
def built(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> tuple[IndexStore, Path]:
    store = IndexStore(tmp_path / "index", verify_margin_s=MARGIN_S)
    build_id = store.build(model_store, manifest.version, catalog(800), IndexConfig())
    bdir = tmp_path / "index" / manifest.version / build_id
    _settled(bdir)
    return store, bdir


def test_a_second_load_on_this_host_hashes_nothing(
    built: tuple[IndexStore, Path], manifest: ModelManifest, caplog: pytest.LogCaptureFixture
) -> None:
    store, bdir = built
    with caplog.at_level(logging.DEBUG, logger="index_store.store"):
        first = store.load(manifest.version, manifest)
        assert set(_hashed(caplog)) == ALL
        assert set(recorded(bdir)["files"]) == ALL
        second = store.load(manifest.version, manifest)  # as a second serving process would
        assert _hashed(caplog) == []
    assert (first.ids == second.ids).all() and (first.vectors == second.vectors).all()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", [VECTORS_FILE, INDEX_FILE, ID_TABLE_FILE, ATTRIBUTES_FILE])
@pytest.mark.parametrize("how", ["in place", "in place, mtime restored", "replaced by a copy"])
def test_a_file_changed_after_it_was_verified_is_refused(
    built: tuple[IndexStore, Path], manifest: ModelManifest, name: str, how: str
) -> None:
    store, bdir = built
    store.load(manifest.version, manifest)
    assert name in recorded(bdir)["files"]  # the marker would let an unchanged file through
    path = bdir / name
    before = os.stat(path)
    if how == "replaced by a copy":  # same bytes flipped, same mtime, another inode
        copy = bdir / f".{name}.copy"
        shutil.copy2(path, copy)
        _flip(copy)
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(copy, path)
    else:
        _flip(path)
        if how == "in place, mtime restored":  # only the ctime tells: user space cannot set it
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    with pytest.raises(ArtifactError, match=rf"{name.replace('.', '[.]')}: sha256"):
        store.load(manifest.version, manifest)


def test_a_file_changed_within_the_margin_is_not_recorded(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = IndexStore(tmp_path / "index", verify_margin_s=3600.0)  # every file is "fresh"
    build_id = store.build(model_store, manifest.version, catalog(300), IndexConfig())
    with caplog.at_level(logging.DEBUG, logger="index_store.store"):
        store.load(manifest.version, manifest)
        store.load(manifest.version, manifest)
        assert set(_hashed(caplog)) == ALL  # hashed again: its timestamps could not vouch for it
    assert recorded(tmp_path / "index" / manifest.version / build_id) == {}


def test_a_marker_for_another_manifest_is_ignored(
    built: tuple[IndexStore, Path], manifest: ModelManifest, caplog: pytest.LogCaptureFixture
) -> None:
    store, bdir = built
    store.load(manifest.version, manifest)
    marker = next(bdir.glob(".verified-*.json"))
    text = marker.read_text()
    marker.write_text(text.replace(recorded(bdir)["manifest_sha256"], "0" * 64))
    with caplog.at_level(logging.DEBUG, logger="index_store.store"):
        store.load(manifest.version, manifest)
        assert set(_hashed(caplog)) == ALL
