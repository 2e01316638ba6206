"""Fixtures for index_store: the demo model copied into tmp, synthetic catalogs and unit vectors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.catalog import synthetic_items
from index_store.build import IndexConfig, build_index
from index_store.idmap import IdMap
from index_store.snapshot import Snapshot
from models.manifest import ModelManifest, list_versions, load_version

ROOT = Path(__file__).resolve().parents[2]
DEMO_STORE = ROOT / "models" / "demo"


def unit_vectors(n: int, dim: int = 32, seed: int = 0, clusters: int = 0) -> np.ndarray:
    """Random L2-normalised float32 vectors; with `clusters`, drawn around that many centres."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if clusters:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 2.0
        x += centres[rng.integers(0, clusters, n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def snapshot_of(
    vectors: np.ndarray, config: IndexConfig | None = None, ids: list[str] | None = None, tag: str = "b1"
) -> Snapshot:
    """A Snapshot straight from `build_index`, without the store (for search tests)."""
    built = build_index(vectors, config or IndexConfig())
    names = ids or [f"{tag}-{i}" for i in range(len(vectors))]
    arr = np.array(names, dtype=str)
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    arr.setflags(write=False)
    vecs.setflags(write=False)
    return Snapshot(
        model_version="v1",
        build_id=tag,
        index=built.index,
        ids=arr,
        row_of=IdMap.from_ids(arr),
        vectors=vecs,
        manifest={"build_id": tag},
        search_params=dict(built.search_params),
        kind=built.kind,
    )


@pytest.fixture(scope="session")
def demo_version() -> str:
    versions = list_versions(DEMO_STORE)
    if not versions:
        pytest.fail(f"no demo model version under {DEMO_STORE}")
    return versions[-1]


@pytest.fixture
def model_store(tmp_path: Path, demo_version: str) -> Path:
    """A copy of the demo model store holding its newest version."""
    store = tmp_path / "models"
    store.mkdir()
    shutil.copytree(DEMO_STORE / demo_version, store / demo_version)
    return store


@pytest.fixture
def manifest(model_store: Path, demo_version: str) -> ModelManifest:
    return load_version(model_store, demo_version)


@pytest.fixture
def catalog(manifest: ModelManifest) -> Iterator[Any]:
    """A factory: catalog(n, seed) -> lazy item rows in the project's format."""

    def make(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        return synthetic_items(manifest, n, seed=seed)

    yield make
