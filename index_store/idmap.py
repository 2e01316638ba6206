"""Item id -> row of one build, as a hash table on a file instead of a Python dict.

A build's ids are a fixed-width unicode array in row order (`ids.npy`). Beside it the build writes
`id_table.npy`: an open-addressing table (linear probing, at most half full) from a hash of the id
to its row, -1 for an empty slot. A lookup hashes a whole batch of ids at once (one integer
mat-vec over their code points, then a 64-bit mixer), reads each id's slot, and compares the row's
stored id with the asked one; the few that landed on another id probe the next slot, again as a
batch. Both arrays are read-only and memory-mapped from the build's files: loading a build costs no
per-id Python work (the dict it replaces held the GIL ~0.4 s per load at 1M ids), and every serving
process on a host shares the same pages.

The hash depends only on an id's characters (code points times fixed odd multipliers, seeded by
`HASH_SEED`): the build and every loader compute the same one. Changing it means a new file name.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

ID_TABLE_FILE = "id_table.npy"
HASH_SEED = 0x7477_6F74  # fixed forever for `id_table.npy`: builds on disk depend on it
_BATCH_PROBES = 3  # vectorised probe rounds; the rare longer runs finish one id at a time
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finaliser: spreads the linear hash's bits
_MIX2 = np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=64)
def _multipliers(width: int) -> np.ndarray:
    # One generator stream: the multipliers of a narrower width are a prefix of a wider one's.
    rng = np.random.default_rng(HASH_SEED)
    mult: np.ndarray = rng.integers(0, 2**64 - 1, size=max(width, 1), dtype=np.uint64, endpoint=True)
    mult |= np.uint64(1)
    mult.flags.writeable = False  # shared by every caller (cached)
    return mult


def _mix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= _MIX1
        h ^= h >> np.uint64(27)
        h *= _MIX2
        h ^= h >> np.uint64(31)
    return h


def hash_ids(ids: np.ndarray) -> np.ndarray:
    """uint64 hash of each id of a fixed-width unicode array (padding NULs add nothing)."""
    width = ids.dtype.itemsize // 4
    if ids.size == 0 or width == 0:
        return np.zeros(ids.shape, dtype=np.uint64)
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), width)
    mult = _multipliers(width)
    h = np.zeros(len(ids), dtype=np.uint64)
    with np.errstate(over="ignore"):
        # Column by column (a sum of products mod 2^64): numpy's integer matmul has no fast path
        # and cost several times more (measured: ~0.4 ms for 1,000 ids of 10 characters, loaded box).
        for j in range(width):
            h += codes[:, j] * mult[j]
    return np.asarray(_mix(h), dtype=np.uint64)


def _slots(h: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(h & np.uint64(size - 1), dtype=np.int64)


def build_table(ids: np.ndarray) -> np.ndarray:
    """The open-addressing table of `ids` (rows, -1 empty), 4 to 8 slots per id (at 1M ids: 4M
    int32 slots, 16 MB; a quarter full keeps most probe runs at one slot).

    Inserted a round at a time: every pending id whose slot is empty and that is the first to ask
    for it takes it; the others move one slot on. Rows are inserted in row order within a slot's
    claimants, so a lookup of a duplicated id finds its first row."""
    n = len(ids)
    size = 1 << max(1, int(4 * max(n, 1) - 1).bit_length())
    table = np.full(size, -1, dtype=np.int32 if n < 2**31 else np.int64)
    slot = _slots(hash_ids(ids), size)
    pending = np.arange(n, dtype=np.int64)
    while pending.size:
        s = slot[pending]
        free = table[s] == -1
        taken, first = np.unique(s[free], return_index=True)
        placed = pending[free][first]
        table[taken] = placed
        keep = np.ones(n, dtype=bool)
        keep[placed] = False
        pending = pending[keep[pending]]
        slot[pending] = (slot[pending] + 1) & (size - 1)
    return table


class IdMap(Mapping[str, int]):
    """id -> row over `ids` (row order) and their `table` (`build_table`); both may be memmaps."""

    def __init__(self, ids: np.ndarray, table: np.ndarray) -> None:
        if ids.dtype.kind != "U" or ids.ndim != 1:
            raise ValueError(f"ids must be a 1-d unicode array, got {ids.dtype} {ids.shape}")
        size = len(table)
        if table.ndim != 1 or table.dtype.kind != "i" or size < max(2, len(ids)) or size & (size - 1):
            raise ValueError(f"not an id table for {len(ids)} ids: {table.dtype} {table.shape}")
        # Plain ndarray views of the maps: a np.memmap subclass costs per indexing call.
        self.ids = np.asarray(ids)
        self.table = np.asarray(table)
        self._width = ids.dtype.itemsize // 4  # characters per id (numpy's UCS-4)

    @classmethod
    def from_ids(cls, ids: Sequence[str] | np.ndarray) -> IdMap:
        """Builds the table in memory: for builds from before `id_table.npy`, and for tests."""
        arr = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=str)
        if arr.size == 0:
            arr = np.zeros(0, dtype="<U1")
        return cls(arr, build_table(arr))

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Row of each id (int64), -1 where the build does not hold it."""
        listed = item_ids if isinstance(item_ids, list | tuple) else list(item_ids)
        # One character wider than every stored id: a longer id keeps a non-NUL code point in the
        # last column (it cannot be a stored id), and NUL padding adds nothing to the hash. With
        # the width given, numpy skips measuring the strings (half the cost of dtype=str).
        q = np.array(listed, dtype=f"<U{self._width + 1}")
        out = np.full(q.shape, -1, dtype=np.int64)
        if q.size == 0 or self.ids.size == 0:
            return out
        if q.ndim != 1:
            raise ValueError("item ids must be a flat sequence of strings")
        todo = np.flatnonzero(q.view(np.uint32).reshape(len(q), -1)[:, -1] == 0)
        size = len(self.table)
        slot = _slots(hash_ids(q), size)
        for _ in range(_BATCH_PROBES):
            if not todo.size:
                return out
            rows = np.asarray(self.table[slot[todo]], dtype=np.int64)
            held = rows >= 0
            todo, rows = todo[held], rows[held]
            hit = self.ids[rows] == q[todo]
            out[todo[hit]] = rows[hit]
            todo = todo[~hit]  # another id in that slot: probe the next one
            slot[todo] = (slot[todo] + 1) & (size - 1)
        for i in todo.tolist():  # the few with a long probe run: one at a time (cheaper than rounds)
            j, want = int(slot[i]), q[i]
            while (r := int(self.table[j])) >= 0 and self.ids[r] != want:
                j = (j + 1) & (size - 1)
            out[i] = r
        return out

    def has_duplicates(self) -> bool:
        s = np.sort(self.ids)
        return bool(np.any(s[1:] == s[:-1]))

    # Mapping: one id at a time (tests, a single item); batches go through `rows`.
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
