"""Stream a catalog through the item tower of a model version (see `models.runtime.TowerRunner`)."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from index_store.attributes import AttributeCollector, Attributes
from models.data import CatalogBatch, CatalogFile
from models.errors import DataError
from models.runtime import TowerRunner

log = logging.getLogger(__name__)

_LOG_EVERY_S = 5.0


@dataclass(frozen=True)
class EncodedCatalog:
    """A catalog through the item tower: ids in catalog order, their vectors and filterable columns."""

    ids: list[str]
    vectors: np.ndarray  # float32 [N, dim], row i = ids[i]
    attributes: Attributes
    engine: str  # "local" or "ray": recorded in the build manifest


# An engine: the loaded item tower and a progress callback (running item count) -> the encoded catalog.
CatalogEncoder = Callable[[TowerRunner, Callable[[int], None] | None], EncodedCatalog]


def encode_catalog(
    runner: TowerRunner,
    rows: Iterable[Mapping[str, Any]],
    batch_size: int = 4096,
    progress: Callable[[int], None] | None = None,
    collector: AttributeCollector | None = None,
) -> tuple[list[str], np.ndarray]:
    """Stream a catalog through the item tower; only one batch of raw rows is held at a time.

    Returns the item ids in catalog order and their vectors (float32 [N, dim]). `progress` is
    called with the running item count after every batch; `collector` gets every batch's columns.
    A catalog file (`models.data.CatalogFile`) is read as columns, without a dict per row.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoder = runner.encoder
    id_field = encoder.tower.id_field
    ids: list[str] = []
    chunks = VectorBlocks(runner.dim)
    done = 0
    started = last_log = time.monotonic()

    def collect(job: tuple[Future[np.ndarray], int]) -> None:
        nonlocal done, last_log
        future, first_row = job
        vectors = future.result()
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            item = ids[first_row + int(np.flatnonzero(bad)[0])]
            raise DataError(f"item {item!r}: the item tower returned NaN or infinity")
        chunks.add(vectors)
        done += len(vectors)
        if progress is not None:
            progress(done)
        now = time.monotonic()
        if now - last_log >= _LOG_EVERY_S:
            last_log = now
            log.info("encoded %d items (%.0f items/s)", done, done / (now - started))

    keys = {id_field, *encoder.sources, *(collector.sources if collector is not None else ())}
    batches = (
        rows.batches(batch_size, keys)
        if isinstance(rows, CatalogFile)
        else _batched(rows, batch_size, id_field, keys)
    )
    # Feature prep is Python (holds the GIL) and ONNX Runtime releases it: running the session on a
    # helper thread while the next batch is prepared overlaps the two (measured ~40% faster on 2 cores).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool, _no_cycle_collection():
        pending: tuple[Future[np.ndarray], int] | None = None
        for batch in batches:
            ids.extend(batch.columns[id_field])  # non-empty strings: the reader or _batched checked
            if collector is not None:
                collector.add_columns(batch.columns, batch.size)
            arrays = encoder.encode_columns(batch.columns, batch.size)
            if pending is not None:
                collect(pending)
            pending = (pool.submit(runner.embed_arrays, arrays), len(ids) - batch.size)
        if pending is not None:
            collect(pending)
    vectors = chunks.finish()
    elapsed = time.monotonic() - started
    log.info("encoded %d items in %.1fs (%.0f items/s)", len(ids), elapsed, len(ids) / max(elapsed, 1e-9))
    return ids, vectors


class VectorBlocks:
    """Vectors gathered into blocks of `block_bytes`, joined into one array at the end a block at
    a time. Kept as one array per batch and concatenated, they were held twice at the end: 5.1 GB
    at 10M items, dim 64. A block is above glibc's largest mmap threshold (32 MB), so it is mapped
    on its own and freed to the system the moment it has been copied: the join peaks at the
    result plus one block."""

    def __init__(self, dim: int, block_bytes: int = 64 << 20) -> None:
        self.dim = dim
        self.rows_per_block = max(1, block_bytes // (4 * max(dim, 1)))
        self.blocks: list[np.ndarray] = []
        self.fill = 0  # rows used in the last block

    def add(self, vectors: np.ndarray) -> None:
        done = 0
        while done < len(vectors):
            if not self.blocks or self.fill == self.rows_per_block:
                self.blocks.append(np.empty((self.rows_per_block, self.dim), dtype=np.float32))
                self.fill = 0
            take = min(len(vectors) - done, self.rows_per_block - self.fill)
            self.blocks[-1][self.fill : self.fill + take] = vectors[done : done + take]
            self.fill += take
            done += take

    def finish(self) -> np.ndarray:
        """The rows added, float32 [N, dim]; the blocks are released."""
        if not self.blocks:
            return np.zeros((0, self.dim), dtype=np.float32)
        n = (len(self.blocks) - 1) * self.rows_per_block + self.fill
        if len(self.blocks) == 1:  # its unused tail was never written: no resident pages
            out = self.blocks.pop()[:n]
            return out
        out = np.empty((n, self.dim), dtype=np.float32)
        start = 0
        self.blocks.reverse()  # pop() from the end: the first block first
        while self.blocks:
            block = self.blocks.pop()
            rows = min(self.rows_per_block, n - start)
            out[start : start + rows] = block[:rows]
            start += rows
            del block
        return out


def _batched(
    rows: Iterable[Mapping[str, Any]], size: int, id_field: str, keys: Iterable[str]
) -> Iterator[CatalogBatch]:
    """Rows from anywhere (Redis, a folded change log) as column batches of `keys`; each row's id
    is checked as it arrives, so a bad id is reported before any later row is read."""
    keys = list(keys)
    chunk: list[Mapping[str, Any]] = []
    for n, row in enumerate(rows):
        item_id = row.get(id_field)
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"catalog row {n}: {id_field} must be a non-empty string, got {item_id!r}")
        chunk.append(row)
        if len(chunk) >= size:
            yield CatalogBatch({k: [r.get(k) for r in chunk] for k in keys}, len(chunk))
            chunk = []
    if chunk:
        yield CatalogBatch({k: [r.get(k) for r in chunk] for k in keys}, len(chunk))


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector while a catalog streams through. A batch's thousands of
    rows (dicts and lists from the JSON reader) live long enough to be traversed by collection
    after collection, and none of them is in a cycle: reference counting frees them. Measured
    2.5 against 1.4 s CPU to read 1M catalog lines held 4,096 at a time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
