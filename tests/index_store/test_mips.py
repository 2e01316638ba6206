"""`dot` models: every index kind searches by raw inner product over vectors of different norms, and
recall-floor tuning measures against exact maximum inner product search (MIPS)."""

from __future__ import annotations

import numpy as np
import pytest

from index_store.build import (
    EXACT,
    HNSW,
    IVF,
    IndexConfig,
    build_index,
    pad_queries,
    recall_queries,
    search_parameters,
)
from tests.index_store.conftest import snapshot_of, unit_vectors


def dot_vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered directions with log-normal norms (~15x between the 5th and 95th percentile)."""
    rng = np.random.default_rng(seed + 100)
    norms = np.exp(rng.normal(0.0, 0.8, n)).astype(np.float32)
    return np.ascontiguousarray(unit_vectors(n, dim, seed, clusters=30) * norms[:, None])


def users(n: int, dim: int = 32, seed: int = 5) -> np.ndarray:
    """Un-normalised user vectors near the item clusters."""
    return np.ascontiguousarray(unit_vectors(n, dim, seed, clusters=30) * 3.0)


def mips_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_the_data_separates_dot_from_cosine() -> None:
    v, q = dot_vectors(4000), users(50)
    cosine = mips_topk(v / np.linalg.norm(v, axis=1, keepdims=True), q, 20)
    dot = mips_topk(v, q, 20)
    shared = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(dot, cosine, strict=True)])
    assert shared < 0.6  # a search that normalised would fail every check below


@pytest.mark.parametrize("factory", ["IVF{nlist},Flat", "HNSW16"])
def test_ann_kinds_meet_the_floor_against_exact_mips(factory: str) -> None:
    v, q = dot_vectors(6000), users(300)
    config = IndexConfig(exact_threshold=0, ann_factory=factory, recall_k=50, sample_queries=200)
    built = build_index(v, config, queries=q)
    assert built.kind == (IVF if factory.startswith("IVF") else HNSW)
    assert built.recall is not None and built.recall["met"]
    variants = built.recall["mips_variants"]
    assert set(variants) == {"raw", "mips_augmented"}  # both measured, the cheaper kept
    kept = "mips_augmented" if built.params.get("mips") == "augmented" else "raw"
    met = {name: cost for name, cost in variants.items() if cost is not None}
    assert variants[kept] == min(met.values())
    assert built.index.d == 32 + (kept == "mips_augmented")
    # Independent check on the tuning queries: brute-force MIPS, the scores the index returns.
    iq = pad_queries(q[:200], built.index.d)
    scores, found = built.index.search(iq, 50, params=search_parameters(built.kind, built.search_params))
    exact = mips_topk(v, q[:200], 50)
    overlap = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(found, exact, strict=True)])
    assert overlap >= 0.95 - 0.01  # ties at the k-th score count as hits in the build's measure
    true = np.einsum("qkd,qd->qk", v[found], q[:200])
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-4)  # raw inner products


@pytest.mark.parametrize("kind", [EXACT, IVF, HNSW])
def test_snapshot_scores_are_raw_inner_products(kind: str) -> None:
    v = dot_vectors(3000)
    config = {
        EXACT: IndexConfig(),
        IVF: IndexConfig(exact_threshold=0, recall_k=20),
        HNSW: IndexConfig(exact_threshold=0, ann_factory="HNSW16", recall_k=20),
    }[kind]
    snap = snapshot_of(v, config)
    assert snap.kind == kind
    q = users(20)
    results = snap.search(q, 10, [{"b1-0", "b1-1"}] * 20)
    exact = mips_topk(v, q, 12)
    hits = 0
    for i, res in enumerate(results):
        assert len(res) == 10
        for item_id, score in res:
            row = snap.row_of[item_id]
            assert score == pytest.approx(float(v[row] @ q[i]), rel=1e-4, abs=1e-4)
        hits += len({snap.row_of[x] for x, _ in res} & (set(exact[i].tolist()) - {0, 1}))
    assert hits / (10 * len(results)) >= (1.0 if kind == EXACT else 0.9)


def test_proxy_queries_do_not_depend_on_the_scale_of_the_vectors() -> None:
    """Noise relative to each vector's norm: a dot catalog 10x larger gets the same query directions."""
    v = unit_vectors(2000, clusters=10)
    config = IndexConfig(sample_queries=50)
    np.testing.assert_allclose(recall_queries(v * 10.0, config), recall_queries(v, config), atol=1e-5)


def test_unit_vectors_are_indexed_as_before() -> None:
    v = unit_vectors(3000, clusters=20)
    built = build_index(v, IndexConfig(exact_threshold=0, recall_k=20))
    assert built.index.d == 32 and "mips" not in built.params
    assert built.recall is not None and "mips_variants" not in built.recall
