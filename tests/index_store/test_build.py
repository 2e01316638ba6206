"""Index kinds, recall tuning and refusals on synthetic unit vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_store.build import (
    EXACT,
    HNSW,
    IVF,
    IndexConfig,
    build_index,
    recall_per_query,
    recall_queries,
    search_parameters,
)
from models.errors import BuildRefused
from tests.index_store.conftest import unit_vectors


def brute_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_exact_kind_below_threshold_matches_brute_force() -> None:
    v = unit_vectors(2000)
    built = build_index(v, IndexConfig(exact_threshold=2000))
    assert built.kind == EXACT and built.recall is None and built.search_params == {}
    q = unit_vectors(5, seed=1)
    _, rows = built.index.search(q, 10)
    assert (rows == brute_topk(v, q, 10)).all()


def test_ivf_recall_meets_floor_and_agrees_with_brute_force() -> None:
    v = unit_vectors(6000, clusters=40)
    config = IndexConfig(exact_threshold=0, recall_k=50, sample_queries=200)
    built = build_index(v, config)
    assert built.kind == IVF and built.factory.startswith("IVF")
    assert built.recall is not None and built.recall["value"] >= 0.95
    nprobe = built.search_params["nprobe"]
    assert 1 <= nprobe <= built.params["nlist"]
    # An independent brute-force recall on the very queries the build sampled.
    q = recall_queries(v, config)
    exact = brute_topk(v, q, 50)
    _, found = built.index.search(q, 50, params=search_parameters(IVF, {"nprobe": nprobe}))
    overlap = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(found, exact, strict=True)])
    assert overlap == pytest.approx(built.recall["value"], abs=1e-4)
    assert overlap == pytest.approx(built.recall["id_overlap"], abs=1e-4)

    # nprobe is the smallest whose one-sided 95% lower bound (mean less 1.645 standard errors of
    # the per-query recalls) meets the floor, so that it holds for queries the tuning never saw.
    # Per-query recall as the build counts it (a tie with the exact 50th score is a hit).
    kth = np.sort(q @ v.T, axis=1)[:, -50]

    def bound(p: int) -> float:
        _, got = built.index.search(q, 50, params=search_parameters(IVF, {"nprobe": p}))
        each = recall_per_query(v, q, got, kth)
        return float(each.mean() - 1.645 * each.std(ddof=1) / np.sqrt(len(each)))

    assert built.recall["lower_bound"] == pytest.approx(bound(nprobe), abs=1e-4)
    assert built.recall["lower_bound"] >= 0.95
    assert built.recall["value"] > built.recall["lower_bound"]
    assert nprobe == 1 or bound(nprobe - 1) < 0.95


def test_ivf_tunes_on_the_user_queries_it_is_given() -> None:
    v = unit_vectors(6000, clusters=40)
    users = unit_vectors(300, seed=7)  # far from the item clusters, like a user tower's output
    config = IndexConfig(exact_threshold=0, recall_k=50, sample_queries=200)
    proxy = build_index(v, config)
    built = build_index(v, config, queries=users)
    assert built.recall is not None and built.recall["query_source"] == "users"
    assert built.recall["queries"] == 200 and built.recall["value"] >= 0.95
    assert proxy.recall is not None and proxy.recall["query_source"] == "items+noise"
    # The floor holds on those very queries, checked by brute force.
    q = users[:200]
    exact = brute_topk(v, q, 50)
    _, found = built.index.search(q, 50, params=search_parameters(IVF, built.search_params))
    overlap = np.mean([len(np.intersect1d(a, b)) / 50 for a, b in zip(found, exact, strict=True)])
    assert overlap == pytest.approx(built.recall["id_overlap"], abs=1e-4)
    assert overlap == pytest.approx(built.recall["value"], abs=2e-3)  # ties at the k-th score count as hits


def test_ivf_trains_on_a_sample_and_keeps_the_shared_index_untouched() -> None:
    v = unit_vectors(5000, clusters=20)
    built = build_index(v, IndexConfig(exact_threshold=0, train_per_list=10, recall_k=20))
    assert built.params["train_size"] == 10 * built.params["nlist"] < 5000
    # Tuning passed nprobe per call; the index itself still has Faiss's default.
    assert faiss.extract_index_ivf(built.index).nprobe == 1


def test_hnsw_kind_tunes_ef_search() -> None:
    v = unit_vectors(3000, clusters=20)
    built = build_index(v, IndexConfig(exact_threshold=0, ann_factory="HNSW16", recall_k=20))
    assert built.kind == HNSW
    assert built.recall is not None and built.recall["value"] >= 0.95
    assert built.search_params["efSearch"] >= 20


def test_build_refused_when_floor_unreachable() -> None:
    v = unit_vectors(4000)
    config = IndexConfig(exact_threshold=0, max_search_param=1, recall_floor=0.99, recall_k=50)
    with pytest.raises(BuildRefused, match="below the floor"):
        build_index(v, config)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors_refused(bad: float) -> None:
    v = unit_vectors(100)
    v[7, 3] = bad
    with pytest.raises(BuildRefused, match="row 7"):
        build_index(v, IndexConfig())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("SQ8", "unsupported index type"),
        ("Flat", "exact index"),
        ("IVF{nlist},Bogus", "invalid Faiss factory"),
    ],
)
def test_unsupported_factory_refused(factory: str, message: str) -> None:
    with pytest.raises(BuildRefused, match=message):
        build_index(unit_vectors(500), IndexConfig(exact_threshold=0, ann_factory=factory))
