"""Filters at the recall floor on a 100k-item IVF catalog, over HTTP: a broad (~50%) and a selective
(~0.1%) filter on /similar, against the exact filtered search over the build's stored vectors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.catalog import iter_catalog_file
from app.main import create_app
from app.reindex.build import index_config
from app.settings import IndexSettings
from bench.catalog import write_data_dir
from index_store.directory import IDS_FILE, MANIFEST, VECTORS_FILE
from index_store.store import IndexStore
from models.manifest import ModelManifest
from tests.app.conftest import make_settings

pytestmark = pytest.mark.slow

N_ITEMS = 100_000
K = 100
QUERIES = 30
BROAD = {"genres": {"any": ["Drama", "Comedy", "Action", "Thriller", "Romance"]}}
SELECTIVE = {"genres": {"any": ["Western", "Drama"]}, "release_year": {"eq": 1950}}


def passes(row: dict[str, Any], flt: dict[str, dict[str, Any]]) -> bool:
    if not set(row.get("genres") or []) & set(flt["genres"]["any"]):
        return False
    return "release_year" not in flt or row.get("release_year") == flt["release_year"]["eq"]


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, version: str, manifest: ModelManifest
) -> Iterator[tuple[TestClient, list[dict[str, Any]], Path]]:
    data = tmp_path_factory.mktemp("data100k")
    write_data_dir(data, manifest, N_ITEMS, 50)
    root = tmp_path_factory.mktemp("index100k")
    settings = make_settings(model_store, root, data, index=IndexSettings(exact_threshold=0))
    build = IndexStore(root).build(model_store, version, iter_catalog_file(data), index_config(settings))
    rows = list(iter_catalog_file(data))
    with TestClient(create_app(settings)) as c:
        yield c, rows, root / version / build


@pytest.mark.parametrize(("flt", "share"), [(BROAD, (0.35, 0.65)), (SELECTIVE, (0.0003, 0.003))])
def test_filters_at_the_floor_on_100k_ivf(
    client: tuple[TestClient, list[dict[str, Any]], Path], flt: dict[str, Any], share: tuple[float, float]
) -> None:
    c, rows, bdir = client
    built = json.loads((bdir / MANIFEST).read_text())
    assert built["index"]["kind"] == "ivf"
    floor = built["recall"]["floor"]
    ids = np.load(bdir / IDS_FILE)
    vectors = np.load(bdir / VECTORS_FILE)
    eligible = np.array([passes(r, flt) for r in rows])
    assert share[0] <= eligible.mean() <= share[1], eligible.mean()
    rng = np.random.default_rng(0)
    recalls = []
    for q in rng.choice(N_ITEMS, QUERIES, replace=False).tolist():
        excluded = [str(ids[r]) for r in rng.choice(N_ITEMS, 20, replace=False).tolist()]
        r = c.post(
            "/similar", json={"item_id": str(ids[q]), "k": K, "filter": flt, "exclude_item_ids": excluded}
        )
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        keep = eligible.copy()
        keep[q] = False
        keep[np.isin(ids, excluded)] = False
        assert len(got) == min(K, int(keep.sum()))
        scores = vectors @ vectors[q]
        scores[~keep] = -np.inf
        truth = np.sort(scores)[::-1][: len(got)]
        row_of = {str(i): n for n, i in enumerate(ids.tolist())}
        assert all(keep[row_of[it["item_id"]]] for it in got)  # every one passes, none excluded
        recalls.append(np.mean([it["score"] >= truth[-1] - 1e-5 for it in got]))
    assert np.mean(recalls) >= floor, (np.mean(recalls), floor)
