"""Builds are mapped, not copied: every index kind reads zero-copy, the id map is two arrays."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from index_store.attributes import ATTRIBUTES_FILE
from index_store.build import EXACT, HNSW, IVF, IndexConfig, build_index, pad_queries, search_parameters
from index_store.directory import CURRENT, IDS_FILE, INDEX_FILE, MANIFEST, VECTORS_FILE
from index_store.idmap import ID_TABLE_FILE, IdMap
from index_store.loading import MMAP_FLAGS
from index_store.store import IndexStore
from models.errors import ArtifactError
from models.manifest import ModelManifest
from tests.index_store.test_mips import dot_vectors, users


def mapped_files() -> set[str]:
    """Paths of the files this process has memory-mapped (the kernel's view, /proc/self/maps)."""
    out = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5])
    return out


CONFIGS = {
    EXACT: IndexConfig(),
    IVF: IndexConfig(exact_threshold=0, recall_k=20, sample_queries=100),
    HNSW: IndexConfig(exact_threshold=0, ann_factory="HNSW16", recall_k=20, sample_queries=100),
}


@pytest.mark.parametrize("kind", [EXACT, IVF, HNSW])
def test_each_kind_loads_as_memory_maps(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any, kind: str
) -> None:
    store = IndexStore(tmp_path / "index")
    build_id = store.build(model_store, manifest.version, catalog(3000), CONFIGS[kind])
    bdir = tmp_path / "index" / manifest.version / build_id
    snap = store.load(manifest.version, manifest)
    assert snap.kind == kind
    maps = mapped_files()
    assert manifest.features.item.filterable and snap.attributes is not None  # the filter columns too
    for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE, ID_TABLE_FILE, ATTRIBUTES_FILE):
        assert str(bdir / name) in maps, f"{name} is not memory-mapped"
    assert not snap.vectors.flags.writeable and not snap.ids.flags.writeable
    # The mapped build answers as the one the build held in memory: the stored vectors find themselves.
    rows = [0, 1, 2999]
    ids = [str(snap.ids[r]) for r in rows]
    vecs, found = snap.vectors_for(ids)
    assert found.all()
    for r, res in zip(rows, snap.search(vecs, 5), strict=True):
        assert res[0][0] == str(snap.ids[r])


@pytest.mark.parametrize("factory", [None, "IVF{nlist},Flat", "HNSW16"])
def test_mips_variants_read_zero_copy(tmp_path: Path, factory: str | None) -> None:
    """A dot model's index (raw or with the MIPS coordinate) reads mapped and answers identically."""
    v, q = dot_vectors(4000), users(50)
    config = IndexConfig(exact_threshold=0 if factory else 10**9, recall_k=20, sample_queries=100)
    if factory:
        config = IndexConfig(exact_threshold=0, ann_factory=factory, recall_k=20, sample_queries=100)
    built = build_index(v, config, queries=q)
    path = tmp_path / "index.faiss"
    faiss.write_index(built.index, str(path))
    mapped = faiss.read_index(str(path), MMAP_FLAGS)
    assert str(path) in mapped_files()
    iq = pad_queries(q, built.index.d)
    params = search_parameters(built.kind, built.search_params)
    want = built.index.search(iq, 10, params=params)
    got = mapped.search(iq, 10, params=params)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0])


def test_id_map_lookups() -> None:
    ids = np.array(["b", "a", "ccc", "é", "a1"], dtype=str)
    m = IdMap.from_ids(ids)
    asked = ["a", "ccc", "zz", "", "é", "a1", "cccc-much-longer-than-any", "b"]
    np.testing.assert_array_equal(m.rows(asked), [1, 2, -1, -1, 3, 4, -1, 0])
    # An id longer than every stored one is not found, even when its prefix is one.
    assert m.rows(["ccc" + "x" * 50])[0] == -1
    assert m.rows([]).shape == (0,)
    assert m["a1"] == 4 and "zz" not in m and m.get("zz") is None and len(m) == 5
    with pytest.raises(KeyError):
        m["nope"]
    assert not m.has_duplicates() and IdMap.from_ids(["x", "y", "x"]).has_duplicates()
    empty = IdMap.from_ids([])
    assert empty.rows(["a"])[0] == -1


def test_id_map_agrees_with_a_dict() -> None:
    """Many ids of mixed lengths (probe runs, collisions): every lookup as a dict would answer,
    asked as a list, a tuple or a generator, with misses, longer ids and a lone surrogate."""
    rng = np.random.default_rng(3)
    stored = list(
        dict.fromkeys(f"{rng.integers(0, 10 ** int(rng.integers(1, 9)))}-{i % 7}" for i in range(30_000))
    )
    stored.append("\ud800lone")
    m = IdMap.from_ids(stored)
    row = {x: i for i, x in enumerate(stored)}
    asked = [*rng.choice(stored, 2_000).tolist(), "\ud800lone", "", "missing", stored[5] + "x" * 40]
    want = [row.get(x, -1) for x in asked]
    np.testing.assert_array_equal(m.rows(asked), want)
    np.testing.assert_array_equal(m.rows(tuple(asked)), want)
    np.testing.assert_array_equal(m.rows(x for x in asked), want)


def test_build_from_before_the_id_order_file_still_loads(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    """A build written before `id_table.npy` existed: the table is built at load, same answers."""
    store = IndexStore(tmp_path / "index")
    build_id = store.build(model_store, manifest.version, catalog(500), IndexConfig())
    vdir = tmp_path / "index" / manifest.version
    new = store.load(manifest.version, manifest)
    (vdir / build_id / ID_TABLE_FILE).unlink()
    raw = json.loads((vdir / build_id / MANIFEST).read_text())
    del raw["files"][ID_TABLE_FILE], raw["sizes"][ID_TABLE_FILE]
    data = (json.dumps(raw, indent=2) + "\n").encode()
    (vdir / build_id / MANIFEST).write_bytes(data)
    pointer = {"build_id": build_id, "manifest_sha256": hashlib.sha256(data).hexdigest()}
    (vdir / CURRENT).write_text(json.dumps(pointer))
    old = store.load(manifest.version, manifest)
    ids = [str(x) for x in new.ids[::7]] + ["missing"]
    np.testing.assert_array_equal(old.row_of.rows(ids), new.row_of.rows(ids))
    assert old.row_of.rows(["missing"])[0] == -1


def test_corrupt_id_order_is_refused(
    tmp_path: Path, model_store: Path, manifest: ModelManifest, catalog: Any
) -> None:
    store = IndexStore(tmp_path / "index")
    build_id = store.build(model_store, manifest.version, catalog(500), IndexConfig())
    path = tmp_path / "index" / manifest.version / build_id / ID_TABLE_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="id_table.npy: sha256"):
        store.load(manifest.version, manifest)
