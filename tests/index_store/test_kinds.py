"""The kind search and the recall tuning measure what the service serves (a lossy index rescored)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index_store.build import IVF, IndexConfig, build_index, exact_topk, recall_per_query, search_parameters
from tests.index_store.conftest import snapshot_of, unit_vectors

K = 100


def dense_catalog() -> tuple[np.ndarray, np.ndarray]:
    """Many items on few clusters and queries near them: scores around the k-th are close
    together, where 8-bit codes mis-rank (as at 10M items)."""
    v = unit_vectors(20_000, dim=32, clusters=8, seed=1)
    rng = np.random.default_rng(5)
    q = v[rng.choice(len(v), 200, replace=False)] + rng.standard_normal((200, 32)).astype(np.float32) * 0.05
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return v, np.ascontiguousarray(q, dtype=np.float32)


def recall_of(v: np.ndarray, q: np.ndarray, found: np.ndarray) -> float:
    """Mean recall@K of `found` rows, a tie with the exact K-th score counting (as the build counts)."""
    kth = exact_topk(v, q, K)[0][:, K - 1]
    return float(recall_per_query(v, q, found, kth).mean())


def test_sq8_recorded_recall_is_what_the_snapshot_serves() -> None:
    """The tuned nprobe's recorded recall is what Snapshot.search (over-fetch, exact rescoring)
    returns on the same queries. Tuned on SQ8's raw top-k, the recorded recall was SQ8's own
    ranking's, lower than the served one, and nprobe went far past what the service needs
    (IVF3162,SQ8 at 10M items: nprobe 487 against IVF-Flat's 59)."""
    v, users = dense_catalog()
    config = IndexConfig(exact_threshold=0, ann_factory="IVF{nlist},SQ8", recall_k=K, sample_queries=200)
    built = build_index(v, config, queries=users)
    assert built.recall is not None and built.recall["met"]
    snap = snapshot_of(v, config)  # the same deterministic build, searched by the service's code
    assert snap.lossy and dict(snap.search_params) == dict(built.search_params)
    found = np.array([[int(i.rsplit("-", 1)[1]) for i, _ in res] for res in snap.search(users, K)])
    assert built.recall["value"] == pytest.approx(recall_of(v, users, found), abs=1e-5)


def test_every_candidate_row_is_a_served_recall_and_the_returned_index_is_the_measured_one() -> None:
    """The chosen candidate's row (recall at its nprobe) is the served recall of the index the build
    returns, which is built again when it was not the last candidate measured (one candidate index
    is alive at a time): a rebuild that differed from the measured index would show here."""
    from index_store.build import is_lossy, served_search

    v, users = dense_catalog()
    config = IndexConfig(exact_threshold=0, recall_k=K, sample_queries=200)
    built = build_index(v, config, queries=users)
    nlist = round(math.sqrt(len(v)))  # the base; the wide candidate (2x) may be built and win too
    rows = {row["factory"]: row for row in built.params["candidates"] if "recall" in row}
    assert {f"IVF{nlist},Flat", f"IVF{nlist},SQ8"} <= set(rows)
    for factory in rows:  # every candidate was measured as served, and their best cost won
        assert rows[factory]["query_ms"] >= rows[built.factory]["query_ms"] or rows[factory]["recall"] < 0.95
    row = rows[built.factory]
    assert row["nprobe"] == built.search_params["nprobe"]
    params = search_parameters(IVF, built.search_params)
    _, found = served_search(built.index, v, users, K, params, is_lossy(built.index))
    assert recall_of(v, users, found) == pytest.approx(row["recall"], abs=1e-5)


@pytest.mark.parametrize("codec", ["Flat", "SQ8"])
def test_add_by_list_gives_the_index_add_core_gives(codec: str) -> None:
    """kinds._add appends each list once at its final size; the index is byte for byte Faiss's own
    add_core's (rows as ids, each list in row order), so the kind search's answer is unchanged."""
    import faiss

    from index_store.kinds import _add, _assign, _trained_ivf

    v = unit_vectors(20_000, dim=33, clusters=30)  # 33: a MIPS-augmented width
    base, _, sample = _trained_ivf(v, 64, "Flat", IndexConfig(), np.random.default_rng(0))
    lists = _assign(base, v)

    def empty() -> faiss.Index:
        if codec == "Flat":
            return faiss.clone_index(base)
        quantizer = faiss.clone_index(faiss.extract_index_ivf(base).quantizer)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, 33, 64, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.train(sample)
        return index

    theirs, ours = empty(), empty()
    faiss.extract_index_ivf(theirs).add_core(len(v), faiss.swig_ptr(v), None, faiss.swig_ptr(lists))
    _add(ours, v, lists)
    assert ours.ntotal == theirs.ntotal == len(v)
    assert np.array_equal(faiss.serialize_index(ours), faiss.serialize_index(theirs))
