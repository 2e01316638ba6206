"""The ANN kind of a build chosen by measured query cost at the recall floor, within a build budget.

Candidates (ann_factory unset):
- IVF{nlist},Flat, nlist = sqrt(N): the coarse quantizer is trained once on a sample, and every
  vector's list is assigned once; IVF{nlist},SQ8 reuses both (8-bit codes: a quarter of the
  memory, a little more nprobe for the same recall).
- IVF{2 nlist},Flat: fewer vectors per list, but its own quantizer (4x the base's k-means: twice
  the points on twice the centroids) and assignment (2x); built only if its time, predicted from
  the base's measured times, fits `kind_budget_s`.

Each candidate's nprobe is tuned to the floor on the build's queries (the exact neighbours are
computed once for all), then `cost_queries` of them are searched one per call on one thread, as
the service searches: the cheapest per-query time at the floor wins. Both the tuning and the cost
search a candidate exactly as the service does (`build.served_search`): SQ8 is asked for
`LOSSY_FETCH` x k and its candidates rescored from the stored vectors, rescoring time included.
The candidates, their cost, and the choice go into the manifest (index.params.candidates).

Candidates are built, measured and dropped one at a time, in the order Flat, the wide Flat, SQ8;
the winner is built again (the same quantizer, assignment and codec sample: the same index)
unless it was the last. At 10M items, dim 64, the vectors are 2.6 GB, the Flat candidate 2.6 GB
and the SQ8 one 0.7 GB: holding both candidates kept the build over 8 GB.

Measured on the demo model's 1M catalog with user queries (issue 12): IVF1000 Flat nprobe 35
0.376 ms at 0.949, IVF4096 Flat nprobe 96 0.364 ms at 0.961, IVF1024 SQ8 nprobe 48 0.436 ms at
0.950, HNSW32 efSearch 256 only 0.919: the kinds that can win here are IVF's, so HNSW is not a
candidate (set ann_factory for it). PQ with a refine step over the stored vectors is not one
either: measured again on the same 1M catalog (400 user queries, 1 thread, tie-aware recall@100,
the stored vectors rescoring the fetched rows exactly, as the service does for SQ8): IVF1000
PQ32x4fs (fast-scan) scans in 0.10-0.14 ms but reaches only 0.33 (fetch 200) to 0.45 (fetch 400)
at nprobe 26-40, PQ16x4fs 0.26, RaBitQ 0.71 at 0.32-0.40 ms, against Flat's 0.949 at nprobe 26
in 0.256 ms. The user vectors sit far from the item distribution and the synthetic catalog has
many near-equal scores at the 100th: codes that coarse cannot order them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from index_store.heap import trim_heap
from index_store.threads import using_faiss_threads

if TYPE_CHECKING:
    from index_store.build import BuiltIndex, IndexConfig

log = logging.getLogger(__name__)


@dataclass
class _Candidate:
    factory: str
    make: Callable[[], faiss.Index]  # builds the filled index; deterministic, so a rebuild is the same index
    build_s: float  # shared work (the base's training and assignment) included
    params: dict[str, Any]


def choose_kind(
    vectors: np.ndarray,
    indexed: np.ndarray,
    nlist: int,
    config: IndexConfig,
    queries: np.ndarray | None,
    max_norm: float | None,
    base_params: Mapping[str, Any],
) -> BuiltIndex:
    """Build the candidates over `indexed` (the vectors, MIPS-augmented when `max_norm`), tune
    each to the floor against exact search over `vectors`, keep the cheapest measured one.

    One candidate index is alive at a time (at 10M items the Flat one is 2.6 GB and the SQ8 one
    0.7 GB beside the 2.6 GB of vectors): each is built, tuned, measured and dropped, and the
    winner is built again from the same trained quantizer, assignment and codec sample (the same
    index) unless it was the last one measured, which is why IVF-SQ8, the likely winner at scale,
    is measured last.
    """
    from index_store.build import IVF, BuiltIndex, tune

    n, d = indexed.shape
    rng = np.random.default_rng(config.seed)
    started = time.monotonic()
    skipped: list[dict[str, Any]] = []

    # The base: one trained quantizer and one assignment, shared by Flat and SQ8.
    t = time.monotonic()
    base, train_n, sample = _trained_ivf(indexed, nlist, "Flat", config, rng)
    train_s = time.monotonic() - t
    t = time.monotonic()
    assign = _assign(base, indexed)
    assign_s = time.monotonic() - t

    def make_flat() -> faiss.Index:
        index = faiss.clone_index(base)  # trained and empty: a copy of the centroids only
        _add(index, indexed, assign)
        return index

    def make_sq8() -> faiss.Index:
        quantizer = faiss.clone_index(faiss.extract_index_ivf(base).quantizer)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        # (faiss's Python layer keeps `quantizer` referenced by `index`: it lives as long as the index)
        index.train(sample)  # the quantizer is trained: this trains the 8-bit codec only
        _add(index, indexed, assign)
        return index

    wide_rng = copy.deepcopy(rng)  # the wide candidate's sample: the same draw on a rebuild

    def make_wide() -> faiss.Index:
        index, _, _ = _trained_ivf(indexed, wide, "Flat", config, copy.deepcopy(wide_rng))
        _add(index, indexed, _assign(index, indexed))
        return index

    def candidates() -> Iterator[_Candidate]:
        flat = _Candidate(f"IVF{nlist},Flat", make_flat, train_s + assign_s, {"train_size": train_n})
        yield flat
        # A second nlist: its own quantizer, about twice the base's train and assignment time;
        # k-means: twice the points on twice the centroids; the assignment: twice the centroids.
        predicted = 4 * train_s + 2 * assign_s + (flat.build_s - train_s - assign_s)
        if wide > nlist and predicted <= config.kind_budget_s:
            yield _Candidate(
                f"IVF{wide},Flat", make_wide, 0.0, {"train_size": min(n, config.train_per_list * wide)}
            )
        elif wide > nlist:
            skipped.append(
                {
                    "factory": f"IVF{wide},Flat",
                    "skipped": f"predicted {predicted:.1f}s > {config.kind_budget_s}s",
                }
            )
        yield _Candidate(f"IVF{nlist},SQ8", make_sq8, 0.0, {"train_size": train_n})

    wide = min(n, 2 * nlist)
    truth: dict[str, np.ndarray] = {}
    results = []
    last: faiss.Index | None = None
    for c in candidates():
        last = None  # the previous candidate's index is freed before this one is built
        trim_heap()  # the dropped candidate's lists leave the RSS
        t = time.monotonic()
        index = c.make()
        c.build_s += time.monotonic() - t
        t = time.monotonic()
        name, value, recall = tune(index, IVF, vectors, config, queries, max_norm, truth)
        tune_s = time.monotonic() - t
        query_ms = _query_ms(index, vectors, truth["queries"], recall["k"], value, config.cost_queries)
        recall["query_ms"] = round(query_ms, 4)
        results.append((c, name, value, recall, tune_s, _size(index)))
        last = index
        del index
    met = [r for r in results if r[3]["met"]]
    best = min(met, key=lambda r: r[3]["query_ms"]) if met else max(results, key=lambda r: r[3]["value"])
    chosen, name, value, recall, _, _ = best
    rebuild_s = 0.0
    if chosen is not results[-1][0]:
        last = None
        trim_heap()  # the dropped candidate's lists leave the RSS
        t = time.monotonic()
        last = chosen.make()
        rebuild_s = time.monotonic() - t
    assert last is not None
    table = [
        {
            "factory": c.factory,
            name_: v,
            "recall": r["value"],
            "query_ms": r["query_ms"],
            "build_s": round(c.build_s, 3),
            "tune_s": round(ts, 3),
            "bytes": size,
        }
        for c, name_, v, r, ts, size in results
    ]
    log.info(
        "index kinds at the floor %.2f: %s; chose %s",
        config.recall_floor,
        ", ".join(f"{row['factory']} {row['query_ms']} ms/q (recall {row['recall']})" for row in table),
        chosen.factory,
    )
    ivf = faiss.extract_index_ivf(last)
    params = {
        **base_params,
        "nlist": int(ivf.nlist),
        **chosen.params,
        "candidates": table + skipped,
        "chosen_by": "query_ms at the recall floor",
    }
    timings = {
        "kinds_s": time.monotonic() - started,
        "train_s": train_s,
        "add_s": chosen.build_s,
        "rebuild_s": rebuild_s,
    }
    return BuiltIndex(last, IVF, chosen.factory, params, {name: value}, recall, timings)


def _trained_ivf(
    indexed: np.ndarray,
    nlist: int,
    codec: str,
    config: IndexConfig,
    rng: np.random.Generator,
) -> tuple[faiss.Index, int, np.ndarray]:
    n, d = indexed.shape
    index = faiss.index_factory(d, f"IVF{nlist},{codec}", faiss.METRIC_INNER_PRODUCT)
    train_n = min(n, config.train_per_list * nlist)
    sample = indexed[np.sort(rng.choice(n, size=train_n, replace=False))] if train_n < n else indexed
    index.train(sample)
    return index, int(train_n), sample


def _assign(index: faiss.Index, x: np.ndarray) -> np.ndarray:
    """Each vector's list (the costly part of an IVF add: N x nlist inner products), once."""
    _, lists = faiss.extract_index_ivf(index).quantizer.search(x, 1)
    return np.ascontiguousarray(lists[:, 0], dtype=np.int64)


def _add(index: faiss.Index, x: np.ndarray, lists: np.ndarray) -> None:
    """IVF add with the lists already assigned (`IndexIVF::add_core`: rows as ids, each list in
    row order). For IVF-Flat each list is appended once, at its final size, from the rows
    themselves (a Flat code is the float32 row): add_core appends a vector at a time and each
    list's std::vector grows by doubling, 632 MB held for 488 MB of Flat codes at 2M (measured),
    ~0.6 GB more at 10M; the index is byte for byte add_core's. Other codecs go through add_core:
    encoding them a list at a time cost 5x add_core's time for SQ8 (4.2 s against 0.8 s at 2M),
    and their lists are a quarter of Flat's."""
    ivf = faiss.extract_index_ivf(index)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat) or ivf.code_size != 4 * x.shape[1]:
        ivf.add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
        return
    invlists = ivf.invlists
    assert invlists is not None
    order = np.argsort(lists, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=ivf.nlist))])
    for list_no in np.flatnonzero(np.diff(bounds)).tolist():
        rows = np.ascontiguousarray(order[bounds[list_no] : bounds[list_no + 1]], dtype=np.int64)
        codes = np.ascontiguousarray(x[rows]).view(np.uint8)
        invlists.add_entries(list_no, len(rows), faiss.swig_ptr(rows), faiss.swig_ptr(codes))
    ivf.ntotal += x.shape[0]
    if index is not ivf:
        index.ntotal = ivf.ntotal


def _query_ms(
    index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int, nprobe: int, count: int
) -> float:
    """Mean ms per query, one query per call on one thread, searched as the service searches
    (`build.served_search`: a lossy index's over-fetch and exact rescoring included); the better
    of two passes, so one preempted pass on a shared machine does not decide."""
    from index_store.build import IVF, is_lossy, search_parameters, served_search

    q = np.ascontiguousarray(queries[:count], dtype=np.float32)
    params = search_parameters(IVF, {"nprobe": nprobe})
    lossy = is_lossy(index)
    best = float("inf")
    with using_faiss_threads(1):
        for _ in range(2):
            t = time.perf_counter()
            for i in range(q.shape[0]):
                served_search(index, vectors, q[i : i + 1], k, params, lossy)
            best = min(best, (time.perf_counter() - t) * 1000 / q.shape[0])
    return best


def _size(index: faiss.Index) -> int:
    """Bytes of the index's codes, ids and centroids (serializing 1M vectors to count them costs)."""
    ivf = faiss.extract_index_ivf(index)
    return int(ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4)
