"""A search restricted to the rows a filter keeps: inside the Faiss search, or an exact scan.

A broad filter goes into the ANN search as an `IDSelectorBitmap` (Faiss skips rows outside it
while it scans lists / walks the graph), with the build's tuned nprobe / efSearch widened for the
share it keeps; on IVF, a filter keeping over a third is searched without the selector and its
rows kept afterwards, which gives the same answer for less (`_post_filtered`). A selective
filter leaves too few eligible rows in the probed lists or the visited graph nodes: the ANN answer
comes back short or misses true neighbours, while an exact scan of the few eligible rows' stored
vectors is cheap and exact. Which side a filter falls on is its measured selectivity (the
`exact_below` share of the catalog, a setting). An ANN search that still returns fewer than
min(k, eligible) rows falls back to the exact scan, so the count is always exact.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from index_store.build import EXACT, HNSW, IVF, LOSSY_FETCH, pad_queries
from index_store.filter_cache import FilterRows
from index_store.threads import set_faiss_threads

if TYPE_CHECKING:
    from index_store.snapshot import Snapshot

log = logging.getLogger(__name__)
# A filter keeping a share p of the rows searches nprobe * p^-0.5 (IVF) or efSearch * p^-1 (HNSW):
# the k eligible neighbours sit further out than the unfiltered k. Measured on 100k uniform 64-d
# vectors (IVF316, tuned nprobe 189, 100 queries, recall@100 against exact filtered search, fallback
# included): without widening 0.940 at p=0.5, 0.891 at 0.05, 0.830 at 0.01 (floor 0.95); with
# p^-0.5, >= 0.994 at every p; p^-1 gave the same recall at up to twice the cost. HNSW (whose
# selector filters results, not the walk) needed p^-1: 600 items, HNSW16, p~0.08, recall@10 0.805
# at p^-0.5; at p^-1, 50k items HNSW32: 0.996 at p=0.5, 0.999 at 0.2. The demo model's clustered
# item vectors on the build's own kind choice (IVF632, nprobe 13 at 100k) reached only 0.949 at
# p~0.5 with p^-0.5 (tests/e2e/test_filters_100k.py): p^-0.75 there.
WIDEN_EXP = 0.75
# A filter keeping at least this share on an IVF index is searched without a selector and its
# rows kept afterwards (`_post_filtered`: the same answer; it over-fetches want / share rows).
# The selector skips the distance of every row it drops, so it wins when it drops most of them.
# Measured on the bench's 1M IVF build (nprobe 26, widened by p^-0.75; 300 user queries, one
# thread, quiet; ms a search, selector / plain): 28% kept 0.74 / 0.84 (fetching 1.5x or 2x
# more did not help), 38% 0.68-0.72 / 0.62, 50% 0.48-0.53 / 0.43-0.46, 61% 0.50-0.52 / 0.43,
# 90% 0.36-0.37 / 0.37-0.38; unfiltered 0.23-0.26.
POST_FILTER_SHARE = 0.35


def search_filtered(
    snap: Snapshot,
    query: np.ndarray,
    k: int,
    banned: frozenset[int],
    allowed: np.ndarray,
    exact_below: float,
) -> list[tuple[str, float]]:
    """Top min(k, eligible) (item id, score) over the rows in `allowed` minus `banned`."""
    if allowed.shape != (snap.size,) or allowed.dtype != np.bool_:
        raise ValueError(f"allowed must be bool [{snap.size}], got {allowed.dtype} {allowed.shape}")
    cached = snap.attributes.masks.entry_of(allowed) if snap.attributes is not None else None
    if cached is not None:
        # The filter's rows, count and bitmap were made once for every request asking it: the
        # excluded rows are left out of the answer (the search over-fetches by their number)
        # instead of out of a per-request copy of the mask, which would cost passes over every row.
        hidden = [r for r in banned if allowed[r]]
        if len(hidden) <= k:
            return _search_cached(snap, query, k, hidden, cached, exact_below)
    eligible = allowed
    if banned:
        eligible = allowed.copy()
        eligible[list(banned)] = False
    count = int(np.count_nonzero(eligible))
    want = min(k, count)
    if want == 0:
        return []
    if snap.kind == EXACT or count <= exact_below * snap.size:
        return exact_scan(snap, query, eligible, count, want)
    found = _ann(snap, query, eligible, want, count / snap.size)
    if len(found) < want:
        log.debug("filtered ANN search came back short (%d of %d): exact scan", len(found), want)
        return exact_scan(snap, query, eligible, count, want)
    return found


def _search_cached(
    snap: Snapshot, query: np.ndarray, k: int, hidden: list[int], rows: FilterRows, exact_below: float
) -> list[tuple[str, float]]:
    count = rows.count - len(hidden)
    want = min(k, count)
    if want == 0:
        return []
    if snap.kind == EXACT or count <= exact_below * snap.size:
        return _exact_cached(snap, query, hidden, rows, want)
    found = _ann(snap, query, rows.mask, want + len(hidden), count / snap.size, rows)
    if hidden:
        gone = set(snap.ids[hidden].tolist())
        found = [hit for hit in found if hit[0] not in gone]
    if len(found) < want:
        log.debug("filtered ANN search came back short (%d of %d): exact scan", len(found), want)
        return _exact_cached(snap, query, hidden, rows, want)
    return found[:want]


def _exact_cached(
    snap: Snapshot, query: np.ndarray, hidden: list[int], rows: FilterRows, want: int
) -> list[tuple[str, float]]:
    if rows.count * 4 >= snap.size:  # most rows: the plain scan (one product over all) is no dearer
        # (FilterRows.nbytes counts the row numbers only below this share)
        eligible = rows.mask.copy()
        eligible[hidden] = False
        return exact_scan(snap, query, eligible, rows.count - len(hidden), want)
    kept = rows.rows
    scores = snap.vectors[kept] @ query
    if hidden:
        scores[np.isin(kept, hidden)] = -np.inf
    top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return list(zip(snap.ids[kept[top]].tolist(), scores[top].astype(float).tolist(), strict=True))


def exact_scan(
    snap: Snapshot, query: np.ndarray, eligible: np.ndarray, count: int, want: int
) -> list[tuple[str, float]]:
    """Exact top-`want` over the eligible rows' stored vectors."""
    if count * 4 < snap.size:  # few rows: gather them (a copy of count x dim floats)
        rows = np.flatnonzero(eligible)
        scores = snap.vectors[rows] @ query
    else:  # most rows: one product over all, the others masked (no copy of the matrix)
        rows = np.arange(snap.size)
        scores = snap.vectors @ query
        scores[~eligible] = -np.inf
    top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return list(zip(snap.ids[rows[top]].tolist(), scores[top].astype(float).tolist(), strict=True))


def _ann(
    snap: Snapshot,
    query: np.ndarray,
    eligible: np.ndarray,
    want: int,
    share: float,
    cached: FilterRows | None = None,
) -> list[tuple[str, float]]:
    """The top `want` eligible rows of the ANN search widened for `share`: post-filtered when the
    filter is broad (`_post_filtered`), else (or when that comes back short) with a selector."""
    if snap.kind == IVF and share >= POST_FILTER_SHARE:
        found = _post_filtered(snap, query, eligible, want, share)
        if found is not None:
            return found
    # The eligible rows packed little-endian (bit i of byte i // 8 = row i, as Faiss reads it).
    bits = cached.bits if cached is not None else np.packbits(eligible, bitorder="little")
    return _selected(snap, query, bits, want, share)


def _post_filtered(
    snap: Snapshot, query: np.ndarray, eligible: np.ndarray, want: int, share: float
) -> list[tuple[str, float]] | None:
    """The selector search's answer, from the same probed lists searched without a selector.

    Faiss's IVF scan with a selector checks every code against it, which measured slower per list
    than the plain scan. Searched plainly for want / share rows (times LOSSY_FETCH on compressed
    codes), the probed lists give their best rows in order; when those hold as many eligible rows
    as the selector search takes, they are exactly its rows (an eligible row ranked above them
    would be among the over-fetch too), so the answer is the same. None when they hold fewer (a
    filter far from the query's neighbourhood): the caller runs the selector search then.
    """
    take = _fetch(snap, want)  # what the selector search takes
    fetch = min(snap.size, math.ceil(take / share))
    params = faiss.SearchParametersIVF(nprobe=_widened_nprobe(snap, share))  # type: ignore[call-arg]
    set_faiss_threads(snap.threads)
    iq = pad_queries(query.reshape(1, -1), snap.index.d)
    scores, rows = snap.index.search(iq, fetch, params=params)
    found = rows[0] >= 0
    found[found] = eligible[rows[0][found]]
    keep = np.flatnonzero(found)[:take]
    if len(keep) < take:
        return None
    scores, rows = snap.exact_scores(query.reshape(1, -1), scores[:, keep], rows[:, keep])
    scores, rows = scores[:, :want], rows[:, :want]
    return list(zip(snap.ids[rows[0]].tolist(), scores[0].astype(float).tolist(), strict=True))


def _selected(
    snap: Snapshot, query: np.ndarray, bits: np.ndarray, want: int, share: float
) -> list[tuple[str, float]]:
    """The ANN search with the eligible rows as a selector (`bits`, see `_ann`)."""
    selector = faiss.IDSelectorBitmap(snap.size, faiss.swig_ptr(bits))
    params: Any
    if snap.kind == IVF:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=_widened_nprobe(snap, share))  # type: ignore[call-arg]
    elif snap.kind == HNSW:
        params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing from the stubs
            sel=selector, efSearch=math.ceil(snap.search_params.get("efSearch", 16) / share)
        )
    else:
        params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # stubs lack kwargs
    scores, rows = snap._candidates(query.reshape(1, -1), _fetch(snap, want), params)
    del bits  # the selector reads it during the search: keep it alive until here
    scores, rows = scores[:, :want], rows[:, :want]
    keep = rows[0] >= 0
    return list(zip(snap.ids[rows[0][keep]].tolist(), scores[0][keep].astype(float).tolist(), strict=True))


def _widened_nprobe(snap: Snapshot, share: float) -> int:
    """The build's nprobe widened for a filter keeping `share` (Faiss caps it at nlist)."""
    return math.ceil(snap.search_params.get("nprobe", 1) * float(share**-WIDEN_EXP))


def _fetch(snap: Snapshot, want: int) -> int:
    """Rows a search takes for `want`: on compressed codes LOSSY_FETCH times as many, for the
    stored vectors to pick the best `want` from."""
    return min(snap.size, want * LOSSY_FETCH) if snap.lossy else want
