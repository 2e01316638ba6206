"""TowerRunner and the streaming catalog encoder against the committed demo model."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store.encode import encode_catalog
from models.errors import ArtifactError, DataError
from models.manifest import ITEM_TOWER, ModelManifest
from models.runtime import TowerRunner


class Row(dict[str, Any]):
    """A dict that can be weak-referenced, to count how many raw rows are alive at once."""


def test_embed_is_unit_norm_and_matches_embed_arrays(
    model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "item").load()
    rows = list(catalog(7))
    out = runner.embed(rows)
    assert out.dtype == np.float32 and out.shape == (7, manifest.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, runner.embed_arrays(runner.encoder.encode(rows)))
    assert runner.embed([]).shape == (0, manifest.dim)


def test_user_tower_runs_too(model_store: Path, manifest: ModelManifest) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "user").load()
    out = runner.embed([{"user_id": "196", "age": 49, "gender": "M", "history": ["242"]}, {}])
    assert out.shape == (2, manifest.dim)


def test_tampered_tower_refused(model_store: Path, manifest: ModelManifest) -> None:
    path = model_store / manifest.version / ITEM_TOWER
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="item_tower.onnx: sha256"):
        TowerRunner(model_store / manifest.version, manifest, "item").load()


def test_encode_catalog_streams_in_batches(model_store: Path, manifest: ModelManifest, catalog: Any) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "item", intra_threads=2).load()
    alive = most = 0

    def freed() -> None:
        nonlocal alive
        alive -= 1

    def rows() -> Iterator[Row]:
        nonlocal alive, most
        for raw in catalog(2500):
            row = Row(raw)
            weakref.finalize(row, freed)
            alive += 1
            most = max(most, alive)
            yield row

    seen: list[int] = []
    ids, vectors = encode_catalog(runner, rows(), batch_size=256, progress=seen.append)
    assert len(ids) == 2500 and vectors.shape == (2500, manifest.dim)
    assert most <= 2 * 256 + 1  # never the whole catalog: one batch plus the one being filled
    assert seen == sorted(seen) and seen[-1] == 2500
    expected = runner.embed(list(catalog(2500))[1000:1010])
    np.testing.assert_allclose(vectors[1000:1010], expected, atol=1e-6)


def test_encode_catalog_rejects_missing_id(model_store: Path, manifest: ModelManifest) -> None:
    runner = TowerRunner(model_store / manifest.version, manifest, "item").load()
    with pytest.raises(DataError, match="catalog row 1: item_id"):
        encode_catalog(runner, [{"item_id": "1"}, {"title": "x"}])
