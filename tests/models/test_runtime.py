"""TowerRunner (models/runtime.py) against the committed demo model: embeddings, the user tower,
and a tampered tower file refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.catalog import synthetic_items
from models.errors import ArtifactError
from models.manifest import ITEM_TOWER, ModelManifest, list_versions, load_version
from models.runtime import TowerRunner
from tests.conftest import DEMO_STORE


@pytest.fixture
def model_store(tmp_path: Path) -> Path:
    """A copy of the demo model store holding its newest version."""
    versions = list_versions(DEMO_STORE)
    assert versions, f"no demo model version under {DEMO_STORE}"
    store = tmp_path / "models"
    shutil.copytree(DEMO_STORE / versions[-1], store / versions[-1])
    return store


@pytest.fixture
def manifest(model_store: Path) -> ModelManifest:
    return load_version(model_store, list_versions(model_store)[-1])


def test_embed_is_unit_norm_and_matches_embed_arrays(model_store: Path, manifest: ModelManifest) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "item").load()
    rows = list(synthetic_items(manifest, 7))
    out = runner.embed(rows)
    assert out.dtype == np.float32 and out.shape == (7, manifest.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, runner.embed_arrays(runner.encoder.encode(rows)))
    assert runner.embed([]).shape == (0, manifest.dim)


def test_user_tower_runs_too(model_store: Path, manifest: ModelManifest) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "user").load()
    out = runner.embed([{"user_id": "196", "age": 49, "gender": "M", "history": ["242"]}, {}])
    assert out.shape == (2, manifest.dim)
    assert np.isfinite(out).all()


def test_tampered_tower_refused(model_store: Path, manifest: ModelManifest) -> None:
    path = model_store / manifest.version / ITEM_TOWER
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="item_tower.onnx: sha256"):
        TowerRunner(model_store / manifest.version, manifest, "item").load()
