"""Item id -> row of one build, as two arrays instead of a Python dict.

A build's ids are a fixed-width unicode array in row order (`ids.npy`) and their sort order
(`id_order.npy`, int64: `ids[order]` is sorted). A lookup is a binary search (`np.searchsorted` with
`sorter=order`) plus one comparison, vectorised over a whole batch of ids. Both arrays are read-only
and memory-mapped from the build's files, so loading a build costs no per-id work, holds no GIL for
a dict of a million entries, and every serving process on a host shares the same pages.

Measured at 1M ids (bench/compute.py): a 1,000-id batch costs far less than 1,000 dict lookups from
a Python loop, and loading costs nothing where the dict took ~0.4 s of GIL per process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

ID_ORDER_FILE = "id_order.npy"


class IdMap(Mapping[str, int]):
    """id -> row over `ids` (row order) and `order` (the argsort of `ids`); both may be memmaps."""

    def __init__(self, ids: np.ndarray, order: np.ndarray) -> None:
        if ids.dtype.kind != "U" or ids.ndim != 1:
            raise ValueError(f"ids must be a 1-d unicode array, got {ids.dtype} {ids.shape}")
        if order.shape != ids.shape or order.dtype.kind not in "iu":
            raise ValueError(f"order must be {ids.shape} integers, got {order.dtype} {order.shape}")
        self.ids = ids
        self.order = order
        self._width = ids.dtype.itemsize // 4  # characters per id (numpy's UCS-4)

    @classmethod
    def from_ids(cls, ids: Sequence[str] | np.ndarray) -> IdMap:
        """Sorts in memory: for builds from before `id_order.npy`, and for tests."""
        arr = np.asarray(ids, dtype=str) if not isinstance(ids, np.ndarray) else ids
        if arr.size == 0:
            arr = np.zeros(0, dtype="<U1")
        return cls(arr, sort_order(arr))

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Row of each id (int64), -1 where the build does not hold it."""
        q = np.asarray(item_ids if isinstance(item_ids, Sequence) else list(item_ids), dtype=str)
        out = np.full(q.shape, -1, dtype=np.int64)
        if q.size == 0 or self.ids.size == 0:
            return out
        fits = np.ones(q.shape, dtype=bool)
        if q.dtype.itemsize > self.ids.dtype.itemsize:
            # Wider than every stored id: cannot be one. Narrowed, the others keep every character.
            fits = np.strings.str_len(q) <= self._width
            q = q.astype(self.ids.dtype)
        elif q.dtype != self.ids.dtype:
            q = q.astype(self.ids.dtype)  # widening: the searched array is never cast (no copy of 1M)
        pos = np.searchsorted(self.ids, q, sorter=self.order)
        pos[pos >= len(self.ids)] = 0
        rows = np.asarray(self.order[pos], dtype=np.int64)
        hit = fits & (self.ids[rows] == q)
        out[hit] = rows[hit]
        return out

    def has_duplicates(self) -> bool:
        s = self.ids[self.order]
        return bool(np.any(s[1:] == s[:-1]))

    # Mapping: one id at a time (a filter's single id, tests); batches go through `rows`.
    def __getitem__(self, item_id: str) -> int:
        if not isinstance(item_id, str):
            raise KeyError(item_id)
        r = int(self.rows([item_id])[0])
        if r < 0:
            raise KeyError(item_id)
        return r

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and int(self.rows([item_id])[0]) >= 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def sort_order(ids: np.ndarray) -> np.ndarray:
    """The argsort a build writes beside its ids (stable, so equal ids keep their row order)."""
    return np.argsort(ids, kind="stable").astype(np.int64)
