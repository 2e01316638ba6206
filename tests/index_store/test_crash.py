"""A build process killed with SIGKILL mid-write or mid-publish leaves the previous build current."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from index_store.build import IndexConfig
from index_store.directory import CURRENT, TMP_PREFIX
from index_store.store import IndexStore
from models.manifest import ModelManifest
from tests.index_store.conftest import ROOT

BUILD = """
import sys, time
from pathlib import Path
from index_store import IndexConfig, IndexStore
from models.manifest import load_version
from bench.catalog import synthetic_items

root, models, version, n, marker = sys.argv[1:]
root, models = Path(root), Path(models)
model = load_version(models, version)

def fence():
    if marker:
        Path(marker).write_text("at the fence")
        time.sleep(120)

rows = synthetic_items(model, int(n), seed=3)
IndexStore(root).build(models, version, rows, IndexConfig(exact_threshold=10**9), fence)
"""


def _wait_for(proc: subprocess.Popen[bytes], ready: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the build exited ({proc.returncode}) before {what}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["mid-write", "at-fence"])
def test_sigkill_leaves_previous_build_current(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any, moment: str
) -> None:
    root = tmp_path / "index"
    store = IndexStore(root)
    version = manifest.version
    first = store.build(model_store, version, catalog(300), IndexConfig())
    pointer = (root / version / CURRENT).read_bytes()
    vdir = root / version
    marker = tmp_path / "at-fence" if moment == "at-fence" else None
    # Big enough that writing its files takes a while (~130 MB of index and vectors).
    n = 250_000 if marker is None else 2_000
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(root), str(model_store), version, str(n), str(marker or "")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        if marker is None:
            _wait_for(
                proc,
                lambda: any(p.name.startswith(TMP_PREFIX) and any(p.iterdir()) for p in vdir.iterdir()),
                "a file in the temporary directory",
            )
        else:
            _wait_for(proc, marker.exists, "the fence")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert (vdir / CURRENT).read_bytes() == pointer
    assert store.load(version, manifest).build_id == first
    leftovers = [p.name for p in vdir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert bool(leftovers) == (marker is None)

    second = store.build(model_store, version, catalog(400, seed=1), IndexConfig())
    assert store.current_build(version) == second
    assert not [p for p in vdir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert store.load(version, manifest).size == 400
