"""An immutable, loaded index build: the Faiss index, the id map, the stored vectors and the manifest.

Nothing here is mutated after construction (arrays are read-only, mappings are proxies, search
parameters go per call), so any number of threads may search one snapshot while a swap installs
the next. Faiss CPU indexes are safe for concurrent searches. A build loaded by `IndexStore.load`
maps its files (the index, the ids, the vectors): every serving process on a host shares them.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import faiss
import numpy as np

from index_store.attributes import Attributes
from index_store.build import HNSW, IVF, LOSSY_FETCH, is_lossy, pad_queries, rescore, search_parameters
from index_store.filtered import search_filtered
from index_store.idmap import IdMap
from index_store.threads import set_faiss_threads

log = logging.getLogger(__name__)

_WIDEN = 4  # a retry multiplies nprobe / efSearch by this before falling back to brute force


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One build of one model version, ready to search. Build with `IndexStore.load`."""

    model_version: str
    build_id: str
    index: faiss.Index
    ids: np.ndarray  # str, row i of the index is ids[i]
    row_of: IdMap  # id -> row, vectorised (index_store.idmap)
    vectors: np.ndarray  # float32 [N, dim], row i = ids[i]
    manifest: Mapping[str, Any]
    search_params: Mapping[str, int]  # {"nprobe": 12} / {"efSearch": 96} / {} for exact
    kind: str = "exact"
    threads: int = 1  # Faiss threads per search call; 1 suits one query per request
    attributes: Attributes | None = None  # the filterable fields' columns (None: built before filters)

    @cached_property
    def _params(self) -> faiss.SearchParameters | None:
        """The Faiss parameters object of `search_params`, made once per build, not per request."""
        return search_parameters(self.kind, self.search_params)

    @cached_property
    def lossy(self) -> bool:
        """True when the index holds compressed codes (SQ, PQ): its scores are then approximate."""
        factory = str(self.manifest.get("index", {}).get("factory", ""))
        if "SQ" in factory or "PQ" in factory:
            return True
        # The kind search (index_store/kinds.py) may pick IVF-SQ8 whatever a caller's manifest says.
        return self.kind == IVF and is_lossy(self.index)

    def exact_scores(
        self, query: np.ndarray, scores: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) from the index, rescored from the stored vectors when the codes are lossy.

        A compressed index finds the candidates; their scores (and order) come from the stored
        float32 vectors (`build.rescore`), so /recall's scores equal /score's and the exact filtered
        scan's. Sorted descending per query; missing rows (-1) stay last.
        """
        if not self.lossy:
            return scores, rows
        return rescore(self.vectors, query, scores, rows)

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[Collection[str]] | None = None,
        allowed: np.ndarray | None = None,
        exact_below: float = 0.0,
    ) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) per query, score descending; exactly min(k, eligible) results.

        `exclude[i]` holds item ids query i must not return; the search over-fetches by the number
        of them present in the index, widens the search parameter and at last brute-forces the stored
        vectors when an ANN kind still comes back short. `allowed` (bool [N], a filter's rows) keeps
        only those rows: see `filtered.search_filtered`; `exact_below` is its selectivity threshold.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, {self.dim}], got shape {np.shape(queries)}")
        nq = q.shape[0]
        if exclude is not None and len(exclude) != nq:
            raise ValueError(f"exclude has {len(exclude)} entries for {nq} queries")
        if k < 1 or nq == 0:
            return [[] for _ in range(nq)]
        if allowed is None:
            found = self._search_by_id(q, k, exclude)
            if all(len(f) == k for f in found):
                return found
        banned = [self._rows(exclude[i]) if exclude is not None else frozenset() for i in range(nq)]
        if allowed is not None:
            return [search_filtered(self, q[i], k, banned[i], allowed, exact_below) for i in range(nq)]
        want = [min(k, self.size - len(b)) for b in banned]
        fetch = min(self.size, k * (LOSSY_FETCH if self.lossy else 1) + max(len(b) for b in banned))
        scores, rows = self._candidates(q, fetch, self._params)
        out = [self._pick(scores[i], rows[i], banned[i], want[i]) for i in range(nq)]
        short = [i for i in range(nq) if len(out[i]) < want[i]]
        if short and self.kind in (IVF, HNSW):
            wider = {name: value * _WIDEN for name, value in self.search_params.items()}
            scores, rows = self._candidates(q[short], fetch, search_parameters(self.kind, wider))
            for j, i in enumerate(short):
                out[i] = self._pick(scores[j], rows[j], banned[i], want[i])
            short = [i for i in short if len(out[i]) < want[i]]
        for i in short:
            log.debug("search fell back to brute force for one query (k=%d, excluded %d)", k, len(banned[i]))
            out[i] = self._brute(q[i], banned[i], want[i])
        return out

    def _search_by_id(
        self, q: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None
    ) -> list[list[tuple[str, float]]]:
        """The common case: one search of k + len(exclude) rows, exclusions dropped by id.

        Comparing the candidates' ids with the excluded ids costs less than turning the excluded
        ids into rows first (a hash of every id of the history per request: ~13% of a /recall's
        CPU at 1M items). A query that comes back with fewer than k answers is left to the
        row-based path (`search`), which widens the search and knows how many rows are eligible.
        """
        excluded = [e if isinstance(e, set | frozenset) else set(e) for e in exclude] if exclude else None
        extra = max((len(e) for e in excluded), default=0) if excluded else 0
        fetch = min(self.size, k * (LOSSY_FETCH if self.lossy else 1) + extra)
        scores, rows = self._candidates(q, fetch, self._params)
        # Sorted by score; at most `extra` of a query's rows are excluded: the first k + extra
        # suffice, and a lossy index's over-fetch is not turned into Python strings.
        scores, rows = scores[:, : k + extra], rows[:, : k + extra]
        out: list[list[tuple[str, float]]] = []
        for i in range(q.shape[0]):
            keep = rows[i] >= 0
            ids = self.ids[rows[i][keep]].tolist()
            found = zip(ids, scores[i][keep].tolist(), strict=True)
            if excluded and excluded[i]:
                banned = excluded[i]
                found = ((item, s) for item, s in found if item not in banned)  # type: ignore[assignment]
            out.append(list(itertools.islice(found, k)))
        return out

    def _candidates(
        self, q: np.ndarray, fetch: int, params: faiss.SearchParameters | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's top-`fetch` (scores, rows) per query, rescored exactly when the codes are lossy
        (what `build.served_search` does for the recall tuning and the kind search's cost)."""
        # omp_set_num_threads is per OS thread with libgomp: set it on the thread that searches.
        set_faiss_threads(self.threads)
        iq = pad_queries(q, self.index.d)  # the MIPS coordinate of a dot model's ANN index (build.py)
        scores, rows = self.index.search(iq, fetch, params=params)
        return self.exact_scores(q, scores, rows)

    def vectors_for(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors of `item_ids` ([n, dim], zeros where unknown) and a mask of which were found."""
        rows = self.row_of.rows(item_ids)
        found = rows >= 0
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        out[found] = self.vectors[rows[found]]
        return out, found

    def _rows(self, item_ids: Collection[str]) -> frozenset[int]:
        if not item_ids:
            return frozenset()
        rows = self.row_of.rows(list(item_ids))
        return frozenset(rows[rows >= 0].tolist())

    def _pick(
        self, scores: np.ndarray, rows: np.ndarray, banned: frozenset[int], want: int
    ) -> list[tuple[str, float]]:
        # Vectorised: a Python loop over k + excluded rows cost ~90 us per request at k=100.
        if banned:  # set lookups beat np.isin (which sorts) for a few hundred rows
            ok = (r >= 0 and r not in banned for r in rows.tolist())
            keep = np.fromiter(ok, dtype=bool, count=len(rows))
        else:
            keep = rows >= 0
        sel = np.flatnonzero(keep)[:want]
        return list(zip(self.ids[rows[sel]].tolist(), scores[sel].tolist(), strict=True))

    def _brute(self, query: np.ndarray, banned: frozenset[int], want: int) -> list[tuple[str, float]]:
        scores = self.vectors @ query
        if banned:
            scores[list(banned)] = -np.inf
        top = np.argpartition(-scores, want - 1)[:want] if want < self.size else np.arange(self.size)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(str(self.ids[r]), float(scores[r])) for r in top.tolist() if np.isfinite(scores[r])][:want]
