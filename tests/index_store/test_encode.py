"""The streaming catalog encoder against the demo model (TowerRunner: tests/models/test_runtime.py)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index_store.encode import encode_catalog
from models.errors import DataError
from models.manifest import ModelManifest
from models.runtime import TowerRunner


class Row(dict[str, Any]):
    """A dict that can be weak-referenced, to count how many raw rows are alive at once."""


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


def test_growing_rows_hold_every_batch_in_order() -> None:
    """The encoded vectors' buffer across several doublings (it starts at 65,536 rows)."""
    from index_store.encode import _Rows

    rng = np.random.default_rng(0)
    batches = [rng.random((n, 8), dtype=np.float32) for n in (1, 4096, 70_000, 0, 3, 100_000, 17)]
    rows = _Rows(8)
    for b in batches:
        rows.append(b)
    out = rows.array()
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.flags.owndata
    assert np.array_equal(out, np.concatenate(batches))
    assert _Rows(8).array().shape == (0, 8)
