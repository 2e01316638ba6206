"""Faiss index kinds behind one interface: exact inner product, or an ANN kind tuned to a recall floor.

Row i of every index is position i in the build's id list: plain indexes, no IDMap.

For vectors of different norms (a `dot` model) an ANN build makes the raw and the MIPS-augmented
variant and keeps the cheaper one at the recall floor (index_store.mips says why); the exact kind
needs no transform. Recall is measured as index_store.recall_measure says. Scores are the raw
inner products either way.

The MIPS transform and the recall measure lived here; their names are still importable from this
module, so callers need not change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import faiss
import numpy as np

from index_store.mips import mips_augment, mips_max_norm, pad_queries
from index_store.recall_measure import (
    exact_topk,
    recall_at_k,
    recall_per_query,
    recall_queries,
    sample_queries,
    tie_tolerance,
)
from index_store.threads import using_faiss_threads
from models.errors import BuildRefused

__all__ = [
    "EXACT",
    "HNSW",
    "IVF",
    "KINDS",
    "LOSSY_FETCH",
    "BuiltIndex",
    "IndexConfig",
    "build_index",
    "check_vectors",
    "exact_topk",
    "is_lossy",
    "kind_of",
    "mips_augment",
    "mips_max_norm",
    "pad_queries",
    "recall_at_k",
    "recall_per_query",
    "recall_queries",
    "rescore",
    "sample_queries",
    "search_parameters",
    "served_search",
    "tie_tolerance",
    "tune",
]

log = logging.getLogger(__name__)

EXACT = "exact"
IVF = "ivf"
HNSW = "hnsw"
KINDS = (EXACT, IVF, HNSW)
# Compressed codes (SQ8) mis-rank near the k-th item: the service fetches this many times k from a
# lossy index, rescores them exactly from the stored vectors and keeps the best k (served_search).
# Measured at 10M items (IVF3162,SQ8, the build's 200 user queries, recall@100 tuned as served):
# 2x needed nprobe 91 (1.75 ms a query), 3x and 4x nprobe 59, Flat's (1.18 and 1.24 ms, within
# the noise of a loaded box): one query of the 200 had 0.48 at 2x, 1.0 at 4x. 4x keeps a margin
# for denser catalogs; the extra rows cost a few microseconds of rescoring.
LOSSY_FETCH = 4
_ROWS_AT_ONCE = 1 << 18  # rows per chunk of a whole-catalog array pass (64 MB of float32 at dim 64)


@dataclass(frozen=True)
class IndexConfig:
    """How a build encodes, indexes and checks a catalog.

    IndexConfig()                                  # exact up to 200k items, IVF above
    IndexConfig(exact_threshold=0)                 # always the ANN kind
    IndexConfig(ann_factory="HNSW32")              # HNSW instead of IVF, efSearch tuned
    """

    exact_threshold: int = 200_000  # item count up to which the index is exact (flat inner product)
    # A Faiss factory string (IVF or HNSW at the top level), or None: the kind chosen by measured
    # query cost at the floor among IVF-Flat at two nlist values and IVF-SQ8 (see choose_kind).
    ann_factory: str | None = None
    nlist_per_sqrt: float = 1.0  # nlist = this * sqrt(N): IVF adds cost N * nlist, 4*sqrt(N) is 4x dearer
    train_per_list: int = 64  # IVF trains k-means on this * nlist sampled vectors, not on all N
    hnsw_ef_construction: int = 80
    # Seconds the kind search may spend on candidates that need their own coarse quantizer (a
    # second nlist): each is built only if its predicted train + add time fits what is left.
    kind_budget_s: float = 3.0
    cost_queries: int = 100  # tuning queries timed one per call (1 thread) for a candidate's cost
    max_search_param: int = 4096  # the largest nprobe / efSearch tuning may choose
    recall_floor: float = 0.95
    recall_k: int = 100
    sample_queries: int = 200
    # The floor must hold for users the tuning did not see: the mean over the sampled queries has
    # to clear it by this many standard errors (a one-sided 95% bound). Tuned to the bare mean on
    # 200 users, a 1M build met 0.950 there and gave 0.940 on 500 other users (the last bench).
    recall_margin_se: float = 1.645
    query_noise: float = 0.3  # norm of the noise added to sampled item vectors to make queries
    batch_size: int = 4096  # catalog rows per item-tower call
    threads: int = 2  # ONNX Runtime intra-op and Faiss threads for the build
    keep_builds: int = 3
    max_shrink: float = 0.5  # refuse a catalog smaller than this share of the current build's (0: off)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.recall_floor <= 1.0:
            raise ValueError(f"recall_floor must be in (0, 1], got {self.recall_floor}")
        for name in ("recall_k", "sample_queries", "batch_size", "threads", "keep_builds", "train_per_list"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BuiltIndex:
    """A trained and filled Faiss index with what the manifest records about it."""

    index: faiss.Index
    kind: str
    factory: str
    params: Mapping[str, Any]  # build-time parameters (nlist, train size, M, efConstruction)
    search_params: Mapping[str, int]  # per-call search parameters ({"nprobe": 12} / {"efSearch": 96})
    recall: Mapping[str, Any] | None  # None for the exact kind
    timings: Mapping[str, float] = field(default_factory=dict)


def is_lossy(index: faiss.Index) -> bool:
    """True when the index holds compressed codes (SQ, PQ): its scores and ranking are approximate."""
    if not isinstance(index, faiss.IndexIVF):
        try:
            index = faiss.extract_index_ivf(index)
        except RuntimeError:
            return False
    ivf = faiss.downcast_index(index)
    return isinstance(ivf, faiss.IndexIVFScalarQuantizer | faiss.IndexIVFPQ)


def rescore(
    vectors: np.ndarray, queries: np.ndarray, scores: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of a lossy index's candidates, rescored from the stored float32 `vectors`
    and sorted descending per query; missing rows (-1) stay last. About 10 us for 200 rows at dim 64."""
    q = np.asarray(queries, dtype=np.float32).reshape(len(rows), -1)
    safe = np.where(rows >= 0, rows, 0)
    exact = np.einsum("bnd,bd->bn", vectors[safe.ravel()].reshape(*rows.shape, -1), q)
    exact[rows < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, axis=1).astype(np.float32), np.take_along_axis(
        rows, order, axis=1
    )


def served_search(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    params: faiss.SearchParameters | None,
    lossy: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) as the service finds them (Snapshot._candidates with nothing excluded):
    a lossy index is asked for `LOSSY_FETCH` x k and its candidates rescored from `vectors`. The
    recall tuning and the kind search's cost measure this, so the recall and the cost at the floor
    are the served ones."""
    fetch = min(index.ntotal, k * LOSSY_FETCH) if lossy else k
    scores, rows = index.search(pad_queries(queries, index.d), fetch, params=params)
    if not lossy:
        return scores, rows
    scores, rows = rescore(vectors, queries, scores, rows)
    return scores[:, :k], rows[:, :k]


def search_parameters(kind: str, params: Mapping[str, int]) -> faiss.SearchParameters | None:
    """The per-call Faiss parameters object for a kind: never mutate a shared index to tune a search."""
    out: Any = None
    if kind == IVF and "nprobe" in params:
        out = faiss.SearchParametersIVF()
        out.nprobe = int(params["nprobe"])
    elif kind == HNSW and "efSearch" in params:
        out = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
        out.efSearch = int(params["efSearch"])
    return cast("faiss.SearchParameters | None", out)


def kind_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVF):
        return IVF
    if isinstance(index, faiss.IndexHNSW):
        return HNSW
    if isinstance(index, faiss.IndexFlat):
        return EXACT
    raise BuildRefused(f"unsupported index type {type(index).__name__}: expected Flat, IVF or HNSW")


def check_vectors(vectors: np.ndarray) -> np.ndarray:
    """float32 C-contiguous [N, dim] with finite values, else BuildRefused naming the first bad row."""
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise BuildRefused(f"vectors must be [N, dim], got shape {vectors.shape}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    for start in range(0, vectors.shape[0], _ROWS_AT_ONCE):  # a whole-matrix mask: 0.6 GB at 10M
        bad = ~np.isfinite(vectors[start : start + _ROWS_AT_ONCE]).all(axis=1)
        if bad.any():
            raise BuildRefused(f"vector row {start + int(np.flatnonzero(bad)[0])} has NaN or infinity")
    return vectors


def build_index(vectors: np.ndarray, config: IndexConfig, queries: np.ndarray | None = None) -> BuiltIndex:
    """Index `vectors` (row i = item i) with the kind the config picks for their count.

    `queries`: user-tower vectors to measure an ANN kind's recall with. They are what the index
    will be searched with; without them, item vectors plus noise stand in, and on a 1M synthetic
    catalog that proxy overstates user-query recall (0.95 on the proxy, 0.79 on user vectors at
    the same nprobe, measured by the benchmark).
    """
    vectors = check_vectors(vectors)
    n, dim = vectors.shape
    if n == 0:
        raise BuildRefused("the catalog is empty")
    with using_faiss_threads(config.threads):
        if n <= config.exact_threshold:
            started = time.monotonic()
            index = faiss.IndexFlatIP(dim)
            index.add(vectors)
            return BuiltIndex(index, EXACT, "Flat", {}, {}, None, {"index_s": time.monotonic() - started})
        return _build_ann(vectors, config, queries)


def _build_ann(vectors: np.ndarray, config: IndexConfig, queries: np.ndarray | None) -> BuiltIndex:
    """One ANN index; for vectors of different norms, the raw and the MIPS-augmented variant are
    both built and tuned, and the one reaching the floor at the smaller search parameter is kept."""
    max_norm = mips_max_norm(vectors)
    if max_norm is None:
        return _check_met(_build_variant(vectors, config, queries, None), config)
    raw = _build_variant(vectors, config, queries, None)
    augmented = _build_variant(vectors, config, queries, max_norm)
    tried = {"raw": _cost(raw), "mips_augmented": _cost(augmented)}
    met = [b for b in (raw, augmented) if b.recall is not None and b.recall["met"]]
    if met:
        best = min(met, key=lambda b: _cost(b) or 0)
    else:
        best = max((raw, augmented), key=lambda b: float((b.recall or {})["value"]))
    log.info(
        "un-normalised vectors: search cost at the floor %s; kept %s", tried, best.params.get("mips", "raw")
    )
    recall = {**(best.recall or {}), "mips_variants": tried}
    return _check_met(dataclasses.replace(best, recall=recall), config)


def _cost(built: BuiltIndex) -> float | None:
    """Measured ms per query at the tuned parameter (else the parameter itself), None below the floor."""
    if built.recall is None or not built.recall["met"]:
        return None
    if "query_ms" in built.recall:
        return float(built.recall["query_ms"])
    return float(next(iter(built.search_params.values())))


def _check_met(built: BuiltIndex, config: IndexConfig) -> BuiltIndex:
    recall = built.recall or {}
    if not recall.get("met"):
        name, value = next(iter(built.search_params.items()))
        raise BuildRefused(
            f"{built.factory}: recall@{recall['k']} {recall['value']:.4f} at {name}={value} "
            f"is below the floor {config.recall_floor}"
        )
    return built


def _build_variant(
    vectors: np.ndarray, config: IndexConfig, queries: np.ndarray | None, max_norm: float | None
) -> BuiltIndex:
    """Build and tune one ANN index over `vectors`, MIPS-augmented when `max_norm` is given."""
    n, dim = vectors.shape
    rng = np.random.default_rng(config.seed)
    nlist = max(1, min(n, round(config.nlist_per_sqrt * math.sqrt(n))))
    params: dict[str, Any] = {}
    indexed = vectors
    if max_norm is not None:
        indexed = mips_augment(vectors, max_norm)
        params.update(mips="augmented", mips_max_norm=max_norm)
    if config.ann_factory is None:
        from index_store.kinds import choose_kind

        return choose_kind(vectors, indexed, nlist, config, queries, max_norm, params)
    factory = config.ann_factory.format(nlist=nlist)
    try:
        index = faiss.index_factory(indexed.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BuildRefused(f"invalid Faiss factory string {factory!r}: {exc}") from exc
    kind = kind_of(index)
    if kind == EXACT:
        raise BuildRefused(f"ann_factory {factory!r} gives an exact index; use exact_threshold instead")
    timings: dict[str, float] = {}
    started = time.monotonic()
    if kind == IVF:
        ivf = faiss.extract_index_ivf(index)
        train_n = min(n, config.train_per_list * ivf.nlist)
        sample = indexed[np.sort(rng.choice(n, size=train_n, replace=False))] if train_n < n else indexed
        params.update(nlist=int(ivf.nlist), train_size=int(train_n))
        index.train(sample)
        timings["train_s"] = time.monotonic() - started
    else:
        hnsw = cast(Any, index).hnsw
        hnsw.efConstruction = config.hnsw_ef_construction
        params.update(M=int(hnsw.nb_neighbors(1)), efConstruction=config.hnsw_ef_construction)
    added = time.monotonic()
    index.add(indexed)
    timings["add_s"] = time.monotonic() - added
    log.info("%s index %r over %d x %d built in %.1fs", kind, factory, n, dim, time.monotonic() - started)

    tuned = time.monotonic()
    name, value, recall = tune(index, kind, vectors, config, queries, max_norm)
    timings["tune_s"] = time.monotonic() - tuned
    return BuiltIndex(index, kind, factory, params, {name: value}, recall, timings)


def _predict_nprobe(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    near: np.ndarray,
    k: int,
    floor: float,
    max_norm: float | None = None,
) -> int:
    """The nprobe at which IVF should reach `floor`, from the coarse quantizer alone.

    `near` [Q, m] holds each query's rows scoring at least its exact k-th score (-1 padded). IVF-Flat
    returns min(k, how many of them sit in the probed lists) such hits, so the recall of every
    nprobe follows from the rank of each row's list among the query's nearest lists (for a lossy
    index searched as served, over-fetched and rescored, the same holds nearly: a guess to check).
    """
    ivf = faiss.extract_index_ivf(index)
    nq, nlist = near.shape[0], int(ivf.nlist)
    _, order = ivf.quantizer.search(pad_queries(queries, ivf.d), nlist)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(nlist)[None, :], axis=1)
    qs, cols = np.nonzero(near >= 0)
    rows = vectors[near[qs, cols]]
    _, lists = ivf.quantizer.search(rows if max_norm is None else mips_augment(rows, max_norm), 1)
    counts = np.zeros((nq, nlist + 1), dtype=np.int64)
    np.add.at(counts, (qs, rank[qs, lists[:, 0]] + 1), 1)  # a hit once nprobe > its list's rank
    recall = np.minimum(np.cumsum(counts, axis=1), k).mean(axis=0) / k
    reached = np.flatnonzero(recall >= floor)
    return int(reached[0]) if reached.size else nlist


def tune(
    index: faiss.Index,
    kind: str,
    vectors: np.ndarray,
    config: IndexConfig,
    queries: np.ndarray | None = None,
    max_norm: float | None = None,
    truth: Mapping[str, np.ndarray] | None = None,
) -> tuple[str, int, dict[str, Any]]:
    """The smallest nprobe / efSearch whose measured recall@k reaches the floor (or the best tried).

    Recall is measured against exact maximum inner product over the raw `vectors`; `max_norm` says
    the index holds them MIPS-augmented (see index_store.mips), so its queries get a 0 appended.
    `truth` ({} to fill, or filled by an earlier call on the same vectors and queries) keeps the
    exact neighbours between calls: candidates of one build share them. Each search is the served
    one (`served_search`): a lossy index (IVF-SQ8) is measured with the service's over-fetch and
    exact rescoring. Tuned on its raw top-k instead, IVF3162,SQ8 at 10M items needed nprobe 487
    against IVF-Flat's 59 (scores near the 100th are dense there, and 8-bit codes mis-rank them),
    a recall the service, which rescores, never sees.
    """
    n = vectors.shape[0]
    k = min(config.recall_k, n)
    source = "users" if queries is not None and len(queries) else "items+noise"
    if source == "users":
        assert queries is not None
        queries = np.ascontiguousarray(queries[: config.sample_queries], dtype=np.float32)
    else:
        queries = recall_queries(vectors, config)
    # 2k exact neighbours: the rows past k that tie the k-th score count as hits too.
    if truth is not None and "scores" in truth:
        exact_scores, exact_ids = truth["scores"], truth["ids"]
    else:
        exact_scores, exact_ids = exact_topk(vectors, queries, 2 * k)
        if isinstance(truth, dict):
            truth.update(scores=exact_scores, ids=exact_ids, queries=queries)
    kth = exact_scores[:, k - 1]
    near = np.where(exact_scores >= kth[:, None] - tie_tolerance(kth)[:, None], exact_ids, -1)
    exact_ids = exact_ids[:, :k]
    lossy = is_lossy(index)
    if kind == IVF:
        name, low, high = "nprobe", 1, min(int(faiss.extract_index_ivf(index).nlist), config.max_search_param)
    else:
        name, low, high = "efSearch", k, max(k, config.max_search_param)
    tried: dict[int, float] = {}
    bound: dict[int, float] = {}  # the mean less `recall_margin_se` standard errors: this clears the floor

    def measure(value: int) -> float:
        if value not in tried:
            _, found = served_search(
                index, vectors, queries, k, search_parameters(kind, {name: value}), lossy
            )
            each = recall_per_query(vectors, queries, found, kth)
            tried[value] = float(each.mean())
            se = float(each.std(ddof=1) / np.sqrt(len(each))) if len(each) > 1 else 0.0
            bound[value] = tried[value] - config.recall_margin_se * se
        return bound[value]

    floor = config.recall_floor
    guess = _predict_nprobe(index, vectors, queries, near, k, floor, max_norm) if kind == IVF else low
    guess = max(low, min(high, guess))
    # Each step is a real search of the sampled queries; the guess only saves steps.
    if measure(guess) >= floor:
        value, miss = guess, guess - 1
        if miss >= low and measure(miss) >= floor:
            value, miss = miss, low - 1
    else:
        value, miss = guess, guess
        while measure(value) < floor and value < high:  # double until the floor is met
            miss, value = value, min(high, value * 2)
    if bound[value] >= floor:  # bisect between the last miss and the first hit
        while value - miss > 1:
            mid = (value + miss) // 2
            if measure(mid) >= floor:
                value = mid
            else:
                miss = mid
    _, found = served_search(index, vectors, queries, k, search_parameters(kind, {name: value}), lossy)
    id_overlap = float(
        np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, exact_ids, strict=True)])
    )
    recall = {
        "k": k,
        "value": round(tried[value], 5),
        "lower_bound": round(bound[value], 5),  # the mean less recall_margin_se standard errors
        "margin_se": config.recall_margin_se,
        "met": bound[value] >= floor,
        "id_overlap": round(id_overlap, 5),
        "floor": config.recall_floor,
        "queries": int(queries.shape[0]),
        "query_source": source,
        "query_noise": config.query_noise if source != "users" else None,
        "param": name,
        "tried": [[v, round(r, 5)] for v, r in sorted(tried.items())],
    }
    log.info(
        "tuned %s=%d: recall@%d %.4f, lower bound %.4f (floor %.2f)",
        name,
        value,
        k,
        tried[value],
        bound[value],
        config.recall_floor,
    )
    return name, value, recall
