"""The rows of the filters last asked of one build, kept with what a search derives from them.

Turning a filter into rows costs passes over every row of the build (a comparison of a 1M-row
number column alone is ~0.5 ms, more than the IVF search it restricts), and real traffic repeats a
few filters ("comedies", "in stock"). Each build's attributes hold one cache: the filter's
canonical JSON -> its read-only mask, the count of rows it keeps and, made on first use, the
bitmap Faiss reads (`IDSelectorBitmap`) and the row numbers an exact scan gathers. A search that
gets a cached mask (`entry_of`, by identity) uses them instead of recomputing them per request;
the excluded rows are then left out of the answer instead of out of a copy of the mask (see
index_store/filtered.py). Bounded by bytes (least recently used first out), so 10M-row builds
do not hold many 10 MB masks. Thread-safe: requests search in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

BUDGET_BYTES = 64 << 20  # per build; a 1M-row filter: 1.1 MB (+ 8 B a kept row below 25% kept)


@dataclass(eq=False)
class FilterRows:
    """One filter's rows over a build: `mask` is read-only and shared by every request using it."""

    mask: np.ndarray
    count: int
    _bits: np.ndarray | None = field(default=None, repr=False)
    _rows: np.ndarray | None = field(default=None, repr=False)

    @property
    def bits(self) -> np.ndarray:
        """The mask packed as Faiss's IDSelectorBitmap reads it (bit i of byte i // 8 = row i)."""
        if self._bits is None:  # two threads may both pack it once: the same bytes either way
            self._bits = np.packbits(self.mask, bitorder="little")
        return self._bits

    @property
    def rows(self) -> np.ndarray:
        """The kept row numbers, ascending."""
        if self._rows is None:
            self._rows = np.flatnonzero(self.mask)
        return self._rows

    @property
    def nbytes(self) -> int:
        """What it may come to hold: the row numbers only for a filter few enough to gather."""
        gathered = 8 * self.count if self.count * 4 < self.mask.size else 0
        return int(self.mask.nbytes + self.mask.nbytes // 8 + gathered)


class MaskCache:
    def __init__(self, budget_bytes: int = BUDGET_BYTES) -> None:
        self.budget = budget_bytes
        self._by_key: OrderedDict[str, FilterRows] = OrderedDict()
        self._by_mask: dict[int, FilterRows] = {}  # id(mask) of a cached entry -> the entry
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> FilterRows | None:
        with self._lock:
            entry = self._by_key.get(key)
            if entry is not None:
                self._by_key.move_to_end(key)
            return entry

    def put(self, key: str, mask: np.ndarray) -> FilterRows:
        mask.flags.writeable = False  # shared by concurrent requests: nobody may change it
        entry = FilterRows(mask, int(np.count_nonzero(mask)))
        if entry.nbytes > self.budget:
            return entry  # too big to keep: used once
        with self._lock:
            old = self._by_key.pop(key, None)
            if old is not None:
                self._forget(old)
            self._by_key[key] = entry
            self._by_mask[id(mask)] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.budget and self._by_key:
                _, out = self._by_key.popitem(last=False)
                self._forget(out)
        return entry

    def _forget(self, entry: FilterRows) -> None:
        self._by_mask.pop(id(entry.mask), None)
        self._bytes -= entry.nbytes

    def entry_of(self, mask: np.ndarray) -> FilterRows | None:
        """The cached entry whose mask *is* `mask` (an evicted one's id may be reused: checked)."""
        with self._lock:
            entry = self._by_mask.get(id(mask))
        return entry if entry is not None and entry.mask is mask else None

    def __len__(self) -> int:
        return len(self._by_key)
