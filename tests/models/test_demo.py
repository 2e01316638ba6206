"""The committed demo version: loads, verifies its checksums, and its towers run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.manifest import ITEM_TOWER, USER_TOWER, ModelManifest, list_versions, load_version
from models.transform import TowerEncoder

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


@pytest.fixture(scope="module")
def demo() -> tuple[str, ModelManifest]:
    versions = list_versions(DEMO)
    assert versions, f"no demo version in {DEMO}"
    return versions[-1], load_version(DEMO, versions[-1])


def test_demo_is_small_and_complete(demo: tuple[str, ModelManifest]) -> None:
    version, m = demo
    size = sum(p.stat().st_size for p in (DEMO / version).iterdir())
    assert size < 5_000_000
    assert m.similarity == "cosine" and m.dim == 64
    assert len(m.features.vocabularies["item_id"]) == 1682
    assert len(m.features.vocabularies["user_id"]) == 943
    assert m.metrics["two_tower"]["recall@50"] > m.metrics["most_popular"]["recall@50"]


def test_demo_towers_run(demo: tuple[str, ModelManifest]) -> None:
    version, m = demo
    users = TowerEncoder(m.features, "user").encode(
        [
            {
                "user_id": "196",
                "age": 49,
                "gender": "M",
                "occupation": "writer",
                "zip": "55105",
                "history": ["242"],
            },
            {"user_id": "unknown-user"},
        ]
    )
    items = TowerEncoder(m.features, "item").encode(
        [
            {"item_id": "242", "title": "Kolya (1996)", "genres": ["Comedy"], "release_year": 1996},
            {"item_id": "new-1", "genres": ["Comedy"], "release_year": 1996},
            {"item_id": "new-2"},
        ]
    )
    u = ort.InferenceSession(str(DEMO / version / USER_TOWER)).run(["embedding"], users)[0]
    v = ort.InferenceSession(str(DEMO / version / ITEM_TOWER)).run(["embedding"], items)[0]
    assert u.shape == (2, m.dim) and v.shape == (3, m.dim)
    assert u.dtype == np.float32
    assert np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
