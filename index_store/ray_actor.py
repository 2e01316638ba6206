"""The Ray engine's actor: one ONNX Runtime session of the item tower, fed pyarrow batches of the
catalog, either Parquet columns (converted here as the local reader converts them, a column at a
time: `models.catalog_batches.arrow_catalog_batch`) or rows the build process read itself and sent in blocks
of pickled rows (`row_blocks`).

A batch goes through the local engine's own per-batch transform (`TowerEncoder.encode_columns`)
and comes back as one Arrow table (`shard`): ids, vectors (a fixed-size list of float32: one
buffer, no Python object per row), the actor's node, and the filterable columns the build's
attribute collector reads (Parquet only; the build process collects streamed rows itself).

Ray imports this module in its workers by name; it imports Ray only inside the actor.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.catalog_batches import arrow_catalog_batch
from models.errors import DataError
from models.manifest import ITEM_TOWER, ModelManifest
from models.readers import Column, columns_of
from models.runtime import TowerRunner

ROW = "row"  # the column of a streamed block: one pickled catalog row per cell
PATH = "path"  # the column Ray Data adds with `include_paths`: the file a row was read from
ATTR = "attr:"  # prefix of a filterable source's column in a shard


class ItemTowerActor:
    """One ONNX Runtime session of the item tower; called on pyarrow batches of the catalog:
    Parquet columns (converted as the local reader converts them) or streamed rows (`ROW`).

    `path`: the catalog's one Parquet file, when it is one (Ray Data then adds no path column to
    every row, the error location of a bad value is this file)."""

    def __init__(
        self,
        manifest: ModelManifest,
        tower: bytes,
        threads: int,
        filterable: list[str],
        path: str | None = None,
    ) -> None:
        where = tempfile.mkdtemp(prefix="twotower-tower-")
        try:  # the runner verifies the bytes against the manifest's sha256 and loads them
            Path(where, ITEM_TOWER).write_bytes(tower)
            self.runner = TowerRunner(Path(where), manifest, "item", intra_threads=threads).load()
        finally:
            shutil.rmtree(where, ignore_errors=True)
        self.encoder = self.runner.encoder
        self.columns = columns_of(manifest.features.item)
        self.id_field = manifest.features.item.id_field
        self.sources = [self.id_field, *sorted(self.encoder.sources - {self.id_field})]
        self.filterable = filterable
        self.path = path
        import ray

        context = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.node = f"{ip}/{context.get_node_id()[:8]}"

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        n = batch.num_rows
        out: dict[str, Any] = {}  # the shard's columns besides ids, vectors and node
        if ROW in batch.column_names:  # rows the driver read with the local engine's reader
            rows = [pickle.loads(b) for b in batch.column(ROW).to_pylist()]
            columns = {k: [r.get(k) for r in rows] for k in self.sources}
        else:
            where = self.path or (batch.column(PATH)[0].as_py() if n else "catalog")
            read = arrow_catalog_batch(batch, self.columns, self.id_field, where)
            columns = read.columns
            arrow = read.arrow or {}
            out = {f"{ATTR}{s}": self._attr(s, columns.get(s), arrow.get(s), n) for s in self.filterable}
            if self.id_field in arrow:  # the ids as read (strings): no second conversion
                out["id"] = arrow[self.id_field].cast(pa.string())
        ids = columns[self.id_field]
        vectors = self.runner.embed_arrays(self.encoder.encode_columns(columns, n))
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            item = ids[int(np.flatnonzero(bad)[0])]
            raise DataError(f"item {item!r}: the item tower returned NaN or infinity")
        return shard(ids, vectors, self.node, out)

    def _attr(self, source: str, values: Sequence[Any] | None, arrow: Any, n: int) -> Any:
        """A filterable source's converted values as Arrow, one type per kind of column whatever
        the file's (blocks of one dataset share a schema): strings, lists of strings, or float64,
        what the attribute collector makes of numbers anyway. `arrow`: the same values as read,
        cast rather than converted from Python (a column of lists is the costly one)."""
        import pyarrow as pa

        ctype: Column = self.columns[source][0] if source in self.columns else "text"
        if values is None:
            return pa.nulls(n, pa.string())
        if ctype == "number":  # ints as float() rounds them, as the collector's float64 does
            x = np.array(values, dtype=np.float64)
            return pa.array(x, mask=np.fromiter((v is None for v in values), dtype=bool, count=n))
        kind = pa.list_(pa.string()) if ctype == "texts" else pa.string()
        if arrow is not None:
            return arrow.cast(kind)
        return pa.array(values, kind)


def shard(ids: Sequence[str], vectors: np.ndarray, node: str, columns: Mapping[str, Any]) -> Any:
    """One encoded batch as an Arrow table: `id`, `vector` (fixed-size list of float32), `node`
    (dictionary-encoded: one string per shard, not per row) and the `attr:` columns. `columns`
    may hold `id` already as Arrow strings."""
    import pyarrow as pa

    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "id": columns["id"] if "id" in columns else pa.array(ids, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            "node": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([node])),
            **{k: v for k, v in columns.items() if k != "id"},
        }
    )


def row_blocks(rows: Iterable[Mapping[str, Any]], size: int, id_field: str) -> Iterator[Any]:
    """Arrow tables of `size` pickled rows each (pickle: the rows' own Python values, exactly, as
    Ray itself sends objects; an Arrow schema inferred per block could differ between blocks).
    Ids are checked here, with the local engine's message, before any cluster work."""
    import pyarrow as pa

    block: list[bytes] = []
    for n, row in enumerate(rows):
        item_id = row.get(id_field)
        if not isinstance(item_id, str) or not item_id:
            raise DataError(f"catalog row {n}: {id_field} must be a non-empty string, got {item_id!r}")
        block.append(pickle.dumps(dict(row), protocol=pickle.HIGHEST_PROTOCOL))
        if len(block) >= size:
            yield pa.table({ROW: pa.array(block, type=pa.binary())})
            block = []
    if block:
        yield pa.table({ROW: pa.array(block, type=pa.binary())})
