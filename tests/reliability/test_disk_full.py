"""Disk full during a build: the build fails cleanly, the serving build and everything published stay.

Two ways to fill the disk, each its own case: a 1 MiB tmpfs as the index store (needs the privilege
to mount; skipped with the reason when it is missing), and RLIMIT_FSIZE set on the server process by
a preexec_fn and inherited by its build child (writes past 512 KiB fail with EFBIG). Either way a
catalog of 3000 items needs ~1.5 MB of index files, and one of 300 items fits.
"""

from __future__ import annotations

import json
import resource
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from index_store.directory import TMP_PREFIX
from index_store.store import IndexStore
from models.manifest import ModelManifest, load_version
from tests.data import write_dataset
from tests.reliability.artifacts import current
from tests.reliability.conftest import GoodIndex, mounted_tmpfs
from tests.reliability.procs import Load, Server, fmt_counts, summary

pytestmark = pytest.mark.slow

FSIZE_LIMIT = 512 * 1024


def limit_file_size() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, or a skip saying why it cannot be mounted here."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mnt:
        yield mnt


@pytest.mark.parametrize("mode", ["tmpfs", "rlimit"])
def test_disk_full_during_build(
    request: pytest.FixtureRequest,
    mode: str,
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    rel_data: Path,
    model_store: Path,
    manifest: ModelManifest,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    if mode == "tmpfs":
        root: Path = request.getfixturevalue("small_disk")
        shutil.copytree(good_index.root, root, dirs_exist_ok=True)
        preexec = None
    else:
        root = tmp_path / "index-limited"
        shutil.copytree(good_index.root, root)
        preexec = limit_file_size
    data = tmp_path / "data"
    shutil.copytree(rel_data, data)
    small_items = (data / "items.jsonl").read_bytes()
    big = tmp_path / "big"
    write_dataset(big, manifest, 30, 3000, seed=9)

    env = {**base_env, "TWOTOWER_INDEX_STORE": str(root), "TWOTOWER_DATA_DIR": str(data)}
    srv: Server = spawn("serve", env, f"api-{mode}", worker=True, preexec_fn=preexec)
    try:
        srv.wait_ready()
        good = good_index.build
        before = {p.name: p.stat().st_size for p in (root / version / good).iterdir()}
        with Load(srv.url, [("/recall", {"user_id": "1", "k": 10})]) as load:
            shutil.copy(big / "items.jsonl", data / "items.jsonl")  # the catalog grew
            failed = srv.reindex()
            assert failed["status"] == "failed", failed
            error = failed["error"] or ""
            # ENOSPC comes as such from Faiss, or as numpy's short write ("N requested and M written").
            expected = ("No space left", "written") if mode == "tmpfs" else ("File too large",)
            assert any(e in error for e in expected), error
            # Nothing lost: CURRENT, the build it names and its files are intact and still verify.
            assert current(root, version) == good
            assert IndexStore(root).builds(version) == [good]
            assert {p.name: p.stat().st_size for p in (root / version / good).iterdir()} == before
            IndexStore(root).load(version, load_version(model_store, version))
            assert not [p for p in (root / version).iterdir() if p.name.startswith(TMP_PREFIX)]
            assert srv.build() == good
            # Space again (the catalog back to its size): the next build succeeds and swaps in.
            (data / "items.jsonl").write_bytes(small_items)
            ok = srv.reindex()
            assert ok["status"] == "succeeded", ok
            srv.wait_build(ok["index_build"])
        counts = summary(load.outcomes)
        assert set(counts) == {"200"}, counts
        assert srv.alive()
    finally:
        srv.stop()  # before the tmpfs is unmounted

    how = (
        "a 1 MiB tmpfs mounted as the index store"
        if mode == "tmpfs"
        else f"RLIMIT_FSIZE {FSIZE_LIMIT // 1024} KiB on the server (preexec_fn), inherited by the build"
    )
    report(
        f"Disk full during a worker build ({how}; a 3000-item catalog needs ~1.5 MB)",
        "the build fails cleanly, nothing is lost, the next build succeeds",
        f"job failed with {json.dumps(error.rsplit(': ', 1)[-1])}; CURRENT, the serving build and its "
        "files unchanged and verified; no temporary directory left; the next build succeeded and "
        f"swapped in; load {fmt_counts(counts)}",
    )
