"""The catalog's column path: the items table as `CatalogBatch`es (columns, not a dict per row),
read from JSON lines or Parquet with the schema's columns and converted a column at a time when no
value needs converting, else through the row reader's per-row conversion (same rows, same errors).

The local engine reads a catalog through `CatalogFile.batches` and the Ray engine's actors convert
Parquet blocks with `arrow_catalog_batch`: one conversion for both, in its own module because Ray
workers import it by name (`index_store.ray_actor`) and it only needs the row reader
(`models.readers`), not the dataset level (`models.data`).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import NoneType
from typing import Any, TypeVar

import numpy as np

from models.errors import DataError
from models.features import FieldSpec
from models.readers import _BATCH, Column, _check_header, _convert_row, iter_jsonl, iter_rows

_CONVERT_ROWS = 256
_T = TypeVar("_T")


@dataclass(frozen=True)
class CatalogBatch:
    """Consecutive catalog rows as columns: `columns[c][i]` is row i's value of the schema's column
    c, exactly as the row's dict holds it (converted; None = missing)."""

    columns: dict[str, list[Any]]
    size: int
    # Read from Arrow and taken as they are (`arrow_catalog_batch`): the Arrow column of each of
    # `columns` (id and text columns as strings), whose values are exactly the lists'.
    arrow: Mapping[str, Any] | None = None

    def rows(self) -> list[dict[str, Any]]:
        keys = list(self.columns)
        return [dict(zip(keys, values, strict=True)) for values in zip(*self.columns.values(), strict=True)]


class CatalogFile(Iterator[dict[str, Any]]):
    """The items table of a data directory, read with a schema's columns: an iterator of rows (one
    dict each), and `batches(size)`: the same rows as columns, with the same errors.

    A JSON-lines file read with the schema's columns alone (no `keep_others`) is converted a batch
    at a time: a column whose values `_convert` would return unchanged (strings, finite numbers,
    lists of strings) is taken as is, and a batch with any other value goes through the per-row
    conversion, which then raises the error for the first bad row or converts the values (an
    integer id, say). Per row in Python this was a third of a 1M-item build (measured, cProfile).
    """

    def __init__(
        self,
        path: Path,
        columns: Mapping[str, tuple[Column, FieldSpec | None]],
        id_column: str,
        keep_others: bool,
    ) -> None:
        self.path = path
        self.columns = dict(columns)
        self.id_column = id_column
        self.keep_others = keep_others
        self._rows: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> CatalogFile:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._rows is None:
            self._rows = self._iter_rows()
        return next(self._rows)

    def _iter_rows(self) -> Iterator[dict[str, Any]]:
        text = (self.id_column,)
        for where, row in iter_rows(self.path, self.columns, text=text, keep_others=self.keep_others):
            yield self._check_id(row, where)

    def _check_id(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        rid = row.get(self.id_column)
        if isinstance(rid, int) and not isinstance(rid, bool):
            row[self.id_column] = str(rid)
        elif not isinstance(rid, str) or not rid:
            raise DataError(f"{where}: column {self.id_column!r} must be a non-empty id, got {rid!r}")
        return row

    def batches(self, size: int = _BATCH, keys: Collection[str] | None = None) -> Iterator[CatalogBatch]:
        """The rows (all of them: do not mix with iterating rows) in batches of up to `size`, as
        columns: `keys` (default: the schema's columns; a row without a key holds None there).
        Read with the schema's columns alone, a row holds no other key, so its batches hold the
        schema's columns whatever `keys` asks (a key they lack is missing in every row)."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        plain = self.columns.get(self.id_column, ("", None))[0] == "id"  # the id check is the column's
        if self.path.suffix == ".jsonl" and not self.keep_others and plain:
            yield from self._jsonl_batches(size)
            return
        if self.path.suffix == ".parquet" and not self.keep_others and plain:
            yield from self._parquet_batches(size)
            return
        names = list(self.columns if keys is None else keys)
        for chunk in _chunks(self, size):
            yield CatalogBatch({c: [r.get(c) for r in chunk] for c in names}, len(chunk))

    def _parquet_batches(self, size: int) -> Iterator[CatalogBatch]:
        """Arrow record batches of the file's schema columns, converted a column at a time
        (`arrow_catalog_batch`, what the Ray engine's actors run): per row in Python, the
        conversion was most of a Parquet catalog's encoding time (measured 0.98 against 0.39 s
        for 200k rows of the demo catalog)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path, columns = self.path, self.columns
        try:
            pf = pq.ParquetFile(path)
            names = set(pf.schema_arrow.names)
            batches = pf.iter_batches(batch_size=size, columns=[c for c in columns if c in names])
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        first = 1
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
            if batch is None:
                return
            if first == 1 and batch.num_rows:  # as the row path, on its first row
                _check_header(path, names, columns, {})
            yield arrow_catalog_batch(batch, columns, self.id_column, str(path), first)
            first += batch.num_rows

    def _jsonl_batches(self, size: int) -> Iterator[CatalogBatch]:
        path, columns = self.path, self.columns
        seen: set[str] = set()
        out: dict[str, list[Any]] = {c: [] for c in columns}
        held = 0
        # Converted _CONVERT_ROWS lines at a time, then gathered: the parsed dicts of a few hundred
        # lines stay in the CPU caches, those of a whole batch do not (measured 1.8 against 3.4 s
        # CPU for 1M lines, the cycle collector paused).
        for lines in _chunks(iter_jsonl(path), _CONVERT_ROWS):
            raws = [row for _, row in lines]
            seen.update(c for c in columns if c not in seen and any(c in r for r in raws))
            converted = _unchanged_columns(raws, columns)
            if converted is None:  # the per-row path: the first bad row's error, or the converted values
                rows = [
                    self._check_id(_convert_row(raw, columns, False, f"{path}:{n}"), f"{path}:{n}")
                    for n, raw in lines
                ]
                converted = {c: [r[c] for r in rows] for c in columns}
            for c, values in converted.items():
                out[c].extend(values)
            held += len(raws)
            while held >= size:
                yield CatalogBatch({c: v[:size] for c, v in out.items()}, size)
                out = {c: v[size:] for c, v in out.items()}
                held -= size
        if held:
            yield CatalogBatch(out, held)
        if seen:  # JSON lines have no header: a key that no row carries (even as null) is missing
            _check_header(path, seen, columns, {})


def _chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Lists of up to `size` consecutive items. An error from `items` comes after the items read
    before it: rows ahead of a broken line are converted (and their errors raised) first, as one
    row at a time would."""
    chunk: list[_T] = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except DataError:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _unchanged_columns(
    raws: list[dict[str, Any]], columns: Mapping[str, tuple[Column, FieldSpec | None]]
) -> dict[str, list[Any]] | None:
    """The rows' columns when no value needs converting (see `_unchanged`), else None."""
    out: dict[str, list[Any]] = {}
    for col, (ctype, spec) in columns.items():
        values = [r.get(col) for r in raws]
        if not _unchanged(values, ctype, spec):
            return None
        out[col] = values
    return out


def _unchanged(values: list[Any], ctype: Column, spec: FieldSpec | None) -> bool:
    """Whether `_convert` (JSON values, not CSV cells) returns every value as it is, and the
    catalog's id check passes. False only means the per-row path decides."""
    types = set(map(type, values))
    if ctype == "any":
        return True
    if ctype == "id":
        return types == {str} and "" not in values  # None fails the id check; an int becomes text
    if ctype == "text":
        return types <= {str, NoneType}
    present = [v for v in values if v is not None] if NoneType in types else values
    if ctype == "number":
        if not types <= {int, float, NoneType}:  # a bool is no number
            return False
        try:
            return bool(np.isfinite(np.array(present, dtype=np.float64)).all())
        except OverflowError:  # an int too big for a float: as_float refuses it
            return False
    if ctype == "texts":
        return types <= {list, NoneType} and set(map(type, itertools.chain.from_iterable(present))) <= {str}
    if ctype == "vector" and spec is not None:  # floats only: _convert makes an int a float
        if not types <= {list, NoneType} or any(len(v) != spec.dim for v in present):
            return False
        flat = list(itertools.chain.from_iterable(present))
        return set(map(type, flat)) <= {float} and bool(np.isfinite(np.array(flat, dtype=np.float64)).all())
    return False


def arrow_catalog_batch(
    batch: Any,
    columns: Mapping[str, tuple[Column, FieldSpec | None]],
    id_column: str,
    where: str,
    first_row: int = 1,
) -> CatalogBatch:
    """Catalog rows read as Arrow (a pyarrow Table or RecordBatch of a Parquet file: the local
    reader's or a Ray Data block) as the schema's columns, converted exactly as `catalog_rows`
    converts the same rows, without a dict per row: a column comes out of Arrow in one call, and
    when `_convert` would return every value unchanged (see `_unchanged`) it is taken as it is.
    Integer id and text columns become their decimal text in Arrow first (what `_convert` does
    per value). Any other value sends the batch through the per-row conversion, which converts it
    or raises the row path's error, the row named `<where>:row <first_row + i>`. A column the
    batch lacks is missing (None) in every row: the caller checked that its field has a default.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    names = set(batch.schema.names)
    out: dict[str, list[Any]] = {}
    arrays: dict[str, Any] = {}
    for col, (ctype, _) in columns.items():
        if col not in names:
            out[col] = [None] * n
            arrays[col] = pa.nulls(n)
            continue
        array = batch.column(col)
        if ctype in ("id", "text") and pa.types.is_integer(array.type):
            array = pc.cast(array, pa.string())
        out[col] = array.to_pylist()
        arrays[col] = array
    if all(_unchanged(out[col], ctype, spec) for col, (ctype, spec) in columns.items()):
        return CatalogBatch(out, n, arrays)
    keys = list(out)
    converted: dict[str, list[Any]] = {c: [] for c in keys}
    for i, values in enumerate(zip(*out.values(), strict=True)):
        loc = f"{where}:row {first_row + i}"
        row = _convert_row(dict(zip(keys, values, strict=True)), columns, False, loc)
        rid = row.get(id_column)
        if not isinstance(rid, str) or not rid:  # CatalogFile._check_id's message
            raise DataError(f"{loc}: column {id_column!r} must be a non-empty id, got {rid!r}")
        for c in keys:
            converted[c].append(row[c])
    return CatalogBatch(converted, n)
