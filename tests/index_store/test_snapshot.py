"""Snapshot search: exclusions, exact counts, scores, stored vectors, immutability."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from index_store.build import IndexConfig
from tests.index_store.conftest import snapshot_of, unit_vectors

IVF_CONFIG = IndexConfig(exact_threshold=0, recall_k=20)


@pytest.mark.parametrize("config", [IndexConfig(), IVF_CONFIG], ids=["exact", "ivf"])
def test_exclusions_return_exactly_k_eligible(config: IndexConfig) -> None:
    v = unit_vectors(3000, clusters=30)
    snap = snapshot_of(v, config)
    q = unit_vectors(4, seed=7)
    first = snap.search(q, 20)
    # Exclude each query's own top 15 plus ids the index does not know.
    exclude = [{i for i, _ in res[:15]} | {"unknown-1", "unknown-2"} for res in first]
    out = snap.search(q, 20, exclude=exclude)
    for res, banned in zip(out, exclude, strict=True):
        assert len(res) == 20
        assert not {i for i, _ in res} & banned
        scores = [s for _, s in res]
        assert scores == sorted(scores, reverse=True)
    if config.exact_threshold > 0:  # exact: the eligible brute-force top-20
        for qi, (res, banned) in enumerate(zip(out, exclude, strict=True)):
            s = v @ q[qi]
            order = [snap.ids[r] for r in np.argsort(-s) if snap.ids[r] not in banned][:20]
            assert [i for i, _ in res] == order


def test_fewer_eligible_than_k_returns_all_eligible() -> None:
    v = unit_vectors(50)
    snap = snapshot_of(v)
    banned = {f"b1-{i}" for i in range(45)}
    (res,) = snap.search(v[:1], 10, exclude=[banned])
    assert sorted(i for i, _ in res) == sorted(f"b1-{i}" for i in range(45, 50))


def test_ann_short_results_fall_back_to_exactly_k() -> None:
    v = unit_vectors(2000, clusters=40)
    snap = snapshot_of(v, IVF_CONFIG)
    snap = dataclasses.replace(snap, search_params={"nprobe": 1})  # too few lists for k=1500
    q = unit_vectors(2, seed=3)
    out = snap.search(q, 1500, exclude=[{"b1-0"}, set()])
    assert [len(r) for r in out] == [1500, 1500]
    assert all(len({i for i, _ in r}) == 1500 for r in out)


def test_scores_are_inner_products_of_stored_vectors() -> None:
    v = unit_vectors(1000)
    snap = snapshot_of(v)
    q = unit_vectors(1, seed=2)
    (res,) = snap.search(q, 5)
    stored, found = snap.vectors_for([i for i, _ in res] + ["missing"])
    assert found.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(stored[:5] @ q[0], [s for _, s in res], atol=1e-5)
    assert not stored[5].any()


def test_snapshot_is_immutable() -> None:
    snap = snapshot_of(unit_vectors(100))
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.build_id = "other"  # type: ignore[misc]
    with pytest.raises(ValueError):
        snap.vectors[0, 0] = 1.0
    assert snap.size == 100 and snap.dim == 32


def test_bad_query_shape_and_zero_k() -> None:
    snap = snapshot_of(unit_vectors(100))
    with pytest.raises(ValueError, match="queries must be"):
        snap.search(np.zeros((1, 3), dtype=np.float32), 5)
    assert snap.search(unit_vectors(2), 0) == [[], []]


def test_compressed_codes_give_exact_scores_from_the_stored_vectors() -> None:
    """An SQ8 index (a candidate of the kind search) finds candidates; scores come from float32 rows.

    Without the rescoring, /recall's scores were SQ8's approximations: they disagreed with /score
    and with the exact filtered scan, and a filter test at the floor failed on ties it could not see.
    """
    import faiss

    from index_store.idmap import IdMap
    from index_store.snapshot import Snapshot

    v = unit_vectors(4000, clusters=40)
    index = faiss.index_factory(v.shape[1], "IVF32,SQ8", faiss.METRIC_INNER_PRODUCT)
    index.train(v)
    index.add(v)
    ids = np.array([f"i{n}" for n in range(len(v))], dtype=str)
    snap = Snapshot(
        model_version="v1",
        build_id="b1",
        index=index,
        ids=ids,
        row_of=IdMap.from_ids(ids),
        vectors=v,
        manifest={"build_id": "b1"},  # found from the index itself, as snapshot_of in other tests
        search_params={"nprobe": 32},
        kind="ivf",
    )
    assert snap.lossy
    q = unit_vectors(5, seed=3)
    raw, _ = index.search(q, 20)
    for qi, res in enumerate(snap.search(q, 20)):
        rows = [int(i[1:]) for i, _ in res]
        exact = v[rows] @ q[qi]
        np.testing.assert_allclose([s for _, s in res], exact, rtol=0, atol=1e-6)
        assert [s for _, s in res] == sorted((s for _, s in res), reverse=True)
        assert not np.allclose(raw[qi], exact, atol=1e-6)  # SQ8's own scores differ: the test can fail
