"""Build -> persist -> load round trips, verification refusals, retention and the fence."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.catalog import synthetic_users
from index_store.attributes import ATTRIBUTES_FILE
from index_store.build import IndexConfig
from index_store.directory import CURRENT, IDS_FILE, INDEX_FILE, MANIFEST, TMP_PREFIX, VECTORS_FILE
from index_store.idmap import ID_TABLE_FILE
from index_store.registry import SnapshotRegistry
from index_store.store import IndexStore
from models.errors import ArtifactError, BuildRefused, DataError, IndexNotReady, ManifestError
from models.manifest import ModelManifest, sha256_file
from models.runtime import TowerRunner

ANN = IndexConfig(exact_threshold=0, recall_k=50, sample_queries=100)


def test_round_trip(tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any) -> None:
    store = IndexStore(tmp_path / "index")
    version = manifest.version
    with pytest.raises(IndexNotReady):
        store.load(version, manifest)
    build_id = store.build(model_store, version, catalog(3000), IndexConfig())
    assert store.versions() == [version] and store.builds(version) == [build_id]
    assert store.current_build(version) == build_id
    snap = store.load(version, manifest)
    m = snap.manifest
    assert (m["model_version"], m["build_id"], m["item_count"], m["dim"]) == (version, build_id, 3000, 64)
    assert m["index"]["kind"] == "exact" and m["recall"] is None
    bdir = tmp_path / "index" / version / build_id
    # Every file's digest and size, taken from memory as it was written, are the file's.
    assert set(m["files"]) == {INDEX_FILE, IDS_FILE, VECTORS_FILE, ID_TABLE_FILE, ATTRIBUTES_FILE}
    for name, digest in m["files"].items():
        assert digest == sha256_file(bdir / name) and m["sizes"][name] == (bdir / name).stat().st_size
    assert {"encode_s", "encode_items_per_s", "write_s", "total_s"} <= set(m["timings"])
    # The stored vectors are the item tower's output, and search scores are their inner products.
    rows = list(catalog(3000))[:20]
    runner = TowerRunner(model_store / version, manifest, "item").load()
    stored, found = snap.vectors_for([r["item_id"] for r in rows])
    assert found.all()
    np.testing.assert_allclose(stored, runner.embed(rows), atol=1e-5)
    (res,) = snap.search(stored[:1], 10)
    assert res[0][0] == rows[0]["item_id"] and res[0][1] == pytest.approx(1.0, abs=1e-4)
    # On start, the current build loads without any re-encoding.
    assert store.load(version, manifest).build_id == build_id == store.current_build(version)


def test_ann_build_records_recall(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    store = IndexStore(tmp_path / "index")
    store.build(model_store, manifest.version, catalog(4000), ANN)
    snap = store.load(manifest.version, manifest)
    assert snap.kind == "ivf" and snap.manifest["recall"]["value"] >= 0.95
    assert snap.search_params == snap.manifest["index"]["search_params"]
    out = snap.search(snap.vectors[:3], 50, exclude=[{snap.ids[0]}, set(), set()])
    assert [len(r) for r in out] == [50, 50, 50]


def test_users_sampled_once_the_catalog_is_read(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    """A function for `users` is called after encoding (the data files are written meanwhile)."""
    events: list[str] = []

    def rows() -> Any:
        yield from catalog(4000)
        events.append("catalog read")

    def users() -> Any:
        events.append("users sampled")
        return synthetic_users(manifest, 100, seed=0)

    store = IndexStore(tmp_path / "index")
    store.build(model_store, manifest.version, rows(), ANN, users=users)
    assert events == ["catalog read", "users sampled"]
    recall = store.load(manifest.version, manifest).manifest["recall"]
    assert recall["query_source"] == "users" and recall["queries"] == 100


def test_failure_while_indexing_removes_the_written_files(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    """The data files are being written when the index phase fails: none of them is left."""
    store = IndexStore(tmp_path / "index")
    version = manifest.version
    first = store.build(model_store, version, catalog(300), IndexConfig())

    def users() -> Any:
        raise DataError("users.jsonl: not readable")

    with pytest.raises(DataError, match="not readable"):
        store.build(model_store, version, catalog(3000, seed=1), IndexConfig(), users=users)
    assert store.current_build(version) == first and store.builds(version) == [first]
    assert not [p for p in (tmp_path / "index" / version).iterdir() if p.name.startswith(TMP_PREFIX)]


def _truncate(bdir: Path, model: ModelManifest) -> ModelManifest:
    path = bdir / INDEX_FILE
    path.write_bytes(path.read_bytes()[:-100])
    return model


def _flip(name: str) -> Any:
    def corrupt(bdir: Path, model: ModelManifest) -> ModelManifest:
        path = bdir / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        return model

    return corrupt


def _wrong_dim(bdir: Path, model: ModelManifest) -> ModelManifest:
    return dataclasses.replace(model, dim=model.dim * 2)


def _wrong_version(bdir: Path, model: ModelManifest) -> ModelManifest:
    return dataclasses.replace(model, version="some-other-version")


def _wrong_tower(bdir: Path, model: ModelManifest) -> ModelManifest:
    return dataclasses.replace(model, files={**model.files, "item_tower.onnx": "0" * 64})


def _manifest_edited(bdir: Path, model: ModelManifest) -> ModelManifest:
    path = bdir / MANIFEST
    raw = json.loads(path.read_text())
    raw["item_count"] -= 1
    path.write_text(json.dumps(raw))
    return model


@pytest.mark.parametrize(
    ("corrupt", "error", "message"),
    [
        (_truncate, ArtifactError, "index.faiss: truncated"),
        (_flip(VECTORS_FILE), ArtifactError, "vectors.npy: sha256"),
        (_flip(IDS_FILE), ArtifactError, "ids.npy: sha256"),
        (_flip(INDEX_FILE), ArtifactError, "index.faiss: sha256"),
        (_wrong_dim, ManifestError, "manifest.json: dim 64 does not match"),
        (_wrong_version, ManifestError, "manifest.json: built for model version"),
        (_wrong_tower, ManifestError, "different item tower"),
        (_manifest_edited, ArtifactError, "manifest.json: sha256 does not match"),
    ],
    ids=["truncated", "flip-vectors", "flip-ids", "flip-index", "dim", "model-version", "tower", "manifest"],
)
def test_bad_build_refused_while_old_serves(
    tmp_path: Path,
    model_store: Path,
    manifest: ModelManifest,
    catalog: Any,
    caplog: pytest.LogCaptureFixture,
    corrupt: Any,
    error: type[Exception],
    message: str,
) -> None:
    store = IndexStore(tmp_path / "index")
    version = manifest.version
    registry = SnapshotRegistry()
    old = store.build(model_store, version, catalog(500), IndexConfig())
    registry.swap(version, store.load(version, manifest))
    new = store.build(model_store, version, catalog(600, seed=1), IndexConfig())
    model = corrupt(tmp_path / "index" / version / new, manifest)
    with pytest.raises(error, match=message):
        store.load(version, model)
    with caplog.at_level(logging.ERROR, logger="index_store.store"), pytest.raises(error):
        registry.swap(version, store.load(version, model, new))
    assert any(message.split(":")[0] in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    serving = registry.get(version)
    assert serving is not None and serving.build_id == old
    assert len(serving.search(serving.vectors[:1], 5)[0]) == 5


def test_retention_keeps_last_n_and_current(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    store = IndexStore(tmp_path / "index", keep=1)
    version = manifest.version
    config = IndexConfig(keep_builds=2)
    built = [store.build(model_store, version, catalog(200, seed=s), config) for s in range(4)]
    assert built == sorted(built)
    assert store.builds(version) == built[-2:]
    # A rollback points CURRENT at an old build: pruning must never delete it.
    (tmp_path / "index" / version / CURRENT).write_text(json.dumps({"build_id": built[2]}))
    assert store.prune(version) == []  # keep=1 holds the newest, and the current on top
    assert store.builds(version) == built[2:]


def test_fence_refusal_leaves_current(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    store = IndexStore(tmp_path / "index")
    version = manifest.version
    first = store.build(model_store, version, catalog(200), IndexConfig())

    def lost_lock() -> None:
        raise RuntimeError("lock lost")

    with pytest.raises(RuntimeError, match="lock lost"):
        store.build(model_store, version, catalog(200), IndexConfig(), fence=lost_lock)
    assert store.current_build(version) == first and store.builds(version) == [first]


def test_duplicate_item_ids_refused(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    rows = list(catalog(10)) + list(catalog(1))
    with pytest.raises(BuildRefused, match="appears more than once"):
        IndexStore(tmp_path / "index").build(model_store, manifest.version, rows, IndexConfig())
    assert not list((tmp_path / "index" / manifest.version).iterdir())
