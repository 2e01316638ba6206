"""The Ray engine's actor: one ONNX Runtime session of the item tower, fed pyarrow batches of the
catalog, either Parquet columns (converted here as the local reader converts them) or rows the
build process read itself and sent in blocks of pickled rows (`row_blocks`).

Ray imports this module in its workers by name; it imports Ray only inside the actor.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.data import convert_catalog_rows
from models.errors import DataError
from models.manifest import ITEM_TOWER, ModelManifest
from models.runtime import TowerRunner

ROW = "row"  # the column of a streamed block: one pickled catalog row per cell


class ItemTowerActor:
    """One ONNX Runtime session of the item tower; called on pyarrow batches of the catalog:
    Parquet columns (converted as the local reader converts them) or streamed rows (`ROW`)."""

    def __init__(self, manifest: ModelManifest, tower: bytes, threads: int, filterable: list[str]) -> None:
        where = tempfile.mkdtemp(prefix="twotower-tower-")
        try:  # the runner verifies the bytes against the manifest's sha256 and loads them
            Path(where, ITEM_TOWER).write_bytes(tower)
            self.runner = TowerRunner(Path(where), manifest, "item", intra_threads=threads).load()
        finally:
            shutil.rmtree(where, ignore_errors=True)
        self.schema = manifest.features
        self.id_field = manifest.features.item.id_field
        self.filterable = filterable
        import ray

        context = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.node = f"{ip}/{context.get_node_id()[:8]}"

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        if ROW in batch.column_names:  # rows the driver read with the local engine's reader
            rows = [pickle.loads(b) for b in batch.column(ROW).to_pylist()]
        else:
            paths = batch.column("path").to_pylist() if "path" in batch.column_names else ["catalog"]
            rows = list(convert_catalog_rows(batch.drop_columns(["path"]).to_pylist(), self.schema, paths[0]))
        vectors = self.runner.embed(rows)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            item = rows[int(np.flatnonzero(bad)[0])][self.id_field]
            raise DataError(f"item {item!r}: the item tower returned NaN or infinity")
        out = {
            "id": np.array([r[self.id_field] for r in rows], dtype=str),
            "vector": vectors,
            "node": np.full(len(rows), self.node),
        }
        if self.filterable:
            out["attrs"] = np.array(
                [json.dumps({k: r.get(k) for k in self.filterable}) for r in rows], dtype=str
            )
        return out


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
