"""The one reader for users, items and interactions: Parquet, CSV or JSON lines.

A table is named by a stem in the data directory (`users` -> users.parquet | users.csv |
users.jsonl, whichever exists) and its columns by the schema. Values are checked and converted
by the kind of the field that reads them, so the three formats give the same rows:

- ids and text fields (categorical, hashed, hashed_words) are strings (integers become their text);
- bucket and numeric fields are numbers (a bool is not a number; NaN and infinity are refused);
- multi_hot and sequence fields are lists of strings, vector fields lists of numbers; in a CSV
  cell such a list is JSON (`["Comedy", "Drama"]`, `[0.1, 0.2]`);
- an empty CSV cell, a JSON `null` and a Parquet null are a missing value.

Without a schema (no model version to take the names from), and for the columns a schema does not
read when a feature store keeps them (`keep_others`), CSV cells that parse as JSON numbers or
lists are read as such and everything else stays text.
Every error is a DataError naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import itertools
import json
import json.scanner
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import NoneType
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np

from models.errors import DataError
from models.features import FieldSpec, TowerSchema, as_float
from models.layout import FORMATS, DataLayout

Column = Literal["id", "text", "number", "texts", "vector", "any"]
_COLUMN_OF_KIND: dict[str, Column] = {
    "categorical": "text",
    "hashed": "text",
    "hashed_words": "text",
    "bucket": "number",
    "numeric": "number",
    "multi_hot": "texts",
    "sequence": "texts",
    "vector": "vector",
}
_BATCH = 8192
_CONVERT_ROWS = 256
_T = TypeVar("_T")


class Interaction(NamedTuple):
    user_id: str
    item_id: str
    timestamp: float  # the row number when the data has no timestamp column: file order is time order


class HasTowers(Protocol):
    """A schema file (`models.schema.SchemaFile`) or a resolved schema (`FeatureSchema`)."""

    @property
    def user(self) -> TowerSchema: ...

    @property
    def item(self) -> TowerSchema: ...

    @property
    def layout(self) -> DataLayout: ...


@dataclass(frozen=True)
class Dataset:
    """Users and items keyed by id (raw feature dicts, id included), interactions in file order."""

    users: Mapping[str, dict[str, Any]]
    items: Mapping[str, dict[str, Any]]
    interactions: list[Interaction] = field(default_factory=list)
    layout: DataLayout = field(default_factory=DataLayout)

    def histories(self) -> dict[str, list[Interaction]]:
        """Each user's interactions in timestamp order (ties keep file order)."""
        out: dict[str, list[Interaction]] = {}
        for it in self.interactions:
            out.setdefault(it.user_id, []).append(it)
        for rows in out.values():
            rows.sort(key=lambda r: r.timestamp)
        return out


# --------------------------------------------------------------------------- files


def table_path(data_dir: Path, stem: str) -> Path:
    """`<stem>.parquet`, `.csv` or `.jsonl` in `data_dir` (a stem with one of those endings is taken
    as is). Two candidates at once are refused rather than guessed between."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    if stem.endswith(FORMATS):
        path = data_dir / stem
        if not path.is_file():
            raise DataError(f"{path}: not found")
        return path
    found = [data_dir / f"{stem}{ext}" for ext in FORMATS if (data_dir / f"{stem}{ext}").is_file()]
    if not found:
        raise DataError(f"{data_dir / stem}.{{parquet,csv,jsonl}}: not found")
    if len(found) > 1:
        raise DataError(f"{data_dir}: both {found[0].name} and {found[1].name}; keep one")
    return found[0]


def has_table(data_dir: Path, stem: str) -> bool:
    """Whether `data_dir` holds a table for `stem` in any of the formats."""
    data_dir = Path(data_dir)
    if stem.endswith(FORMATS):
        return (data_dir / stem).is_file()
    return any((data_dir / f"{stem}{ext}").is_file() for ext in FORMATS)


def columns_of(tower: TowerSchema) -> dict[str, tuple[Column, FieldSpec | None]]:
    """The columns one tower's table must have (the id and every field's source, except the ones
    filled from the interactions), with the type each is read as."""
    out: dict[str, tuple[Column, FieldSpec | None]] = {tower.id_field: ("id", None)}
    for f in tower.fields:
        if not f.from_interactions and f.source not in out:
            out[f.source] = (_COLUMN_OF_KIND[f.kind], f)
    return out


def iter_rows(
    path: Path,
    columns: Mapping[str, tuple[Column, FieldSpec | None]] | None = None,
    text: Collection[str] = (),
    keep_others: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream (location, row) from one file. With `columns`, rows hold exactly those columns,
    converted (None = missing); a column the file lacks is an error unless its field has a
    default. Without, rows hold every column as read (CSV cells inferred, except `text` columns).
    `keep_others`: with `columns`, rows also hold every other column as read (a feature store
    serves versions whose schemas read different columns of the same file). `labels` say what a
    column is in the error for a file that lacks it (default: the id column, or the field)."""
    suffix = path.suffix
    if suffix == ".parquet":
        raw = _parquet(path, list(columns) if columns and not keep_others else None)
    elif suffix == ".csv":
        raw = _csv(path)
    elif suffix == ".jsonl":
        raw = _jsonl(path)
    else:
        raise DataError(f"{path}: unknown format (use .parquet, .csv or .jsonl)")
    is_csv = suffix == ".csv"
    seen: set[str] = set()
    header_checked = False
    for where, row, header in raw:
        if columns is not None and header is not None and not header_checked:
            _check_header(path, header, columns, labels or {})
            header_checked = True
        if columns is None:
            yield where, {k: v if k in text else _infer(v) for k, v in row.items()} if is_csv else row
            continue
        seen.update(col for col in columns if col in row)
        yield where, _convert_row(row, columns, is_csv, where, keep_others, text)
    if columns is not None and suffix == ".jsonl" and seen:
        # JSON lines have no header: a key that no row carries (even as null) is the same mistake
        _check_header(path, seen, columns, labels or {})


def _convert_row(
    row: Mapping[str, Any],
    columns: Mapping[str, tuple[Column, FieldSpec | None]],
    is_csv: bool,
    where: str,
    keep_others: bool = False,
    text: Collection[str] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if keep_others:
        out = {k: _infer(v) if is_csv and k not in text else v for k, v in row.items() if k not in columns}
    for col, (ctype, spec) in columns.items():
        out[col] = _convert(row.get(col), ctype, spec, is_csv, where, col)
    return out


def _check_header(
    path: Path,
    header: Any,
    columns: Mapping[str, tuple[Column, FieldSpec | None]],
    labels: Mapping[str, str],
) -> None:
    for col, (ctype, spec) in columns.items():
        if col in header:
            continue
        if spec is not None and spec.default is not None:
            continue
        what = labels.get(col) or (
            "the id column" if ctype == "id" else f"field {spec.name!r}" if spec else col
        )
        raise DataError(f"{path}: no column {col!r} ({what}); columns are {sorted(header)}")


def _parquet(path: Path, columns: list[str] | None) -> Iterator[tuple[str, dict[str, Any], Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        if columns is not None:
            columns = [c for c in columns if c in names]
        n = 0
        for batch in pf.iter_batches(batch_size=_BATCH, columns=columns):
            for row in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", row, names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc


def _csv(path: Path) -> Iterator[tuple[str, dict[str, Any], Any]]:
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not found") from exc
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty (expected a header row)")
            header = [h.strip() for h in header]
            for lineno, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path}:{lineno}: expected {len(header)} columns, got {len(cells)}")
                yield f"{path}:{lineno}", dict(zip(header, cells, strict=True)), header
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not valid CSV ({exc})") from exc


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any], Any]]:
    for lineno, row in iter_jsonl(path):
        yield f"{path}:{lineno}", row, None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream (line number, object) from a JSON-lines file; a bad line is a DataError naming both."""
    if not path.is_file():
        raise DataError(f"{path}: not found")
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                row = _scan_object(line)
                if row is None:  # not a plain object line: json.loads decides, and words the error
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{lineno}: expected a JSON object")
                yield lineno, row
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc})") from exc


# The C scanner json.loads runs (for a default decoder), without its Python layers.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: a class
_JSON_SPACE = " \t\n\r"  # what json.loads skips around a value (str.strip() skips more)


def _scan_object(line: str) -> dict[str, Any] | None:
    """The line's value when it is a JSON object with nothing else on the line (what json.loads
    returns for it), else None. Measured 0.8 against 1.9 s for 1M catalog lines."""
    s = line.strip(_JSON_SPACE)
    try:
        value, end = _SCAN(s, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    return value if end == len(s) and value.__class__ is dict else None  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- values


def _infer(cell: str) -> Any:
    """A CSV cell without a schema: JSON numbers and lists as such, an empty cell missing, else text."""
    if cell == "":
        return None
    if cell[0] in "[-0123456789":
        try:
            value = json.loads(cell)
        except ValueError:
            return cell
        if isinstance(value, list) or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
    return cell


def _convert(value: Any, ctype: Column, spec: FieldSpec | None, is_csv: bool, where: str, col: str) -> Any:
    if value is None or (is_csv and value == ""):
        return None
    if ctype == "any":
        return value
    if ctype in ("id", "text"):
        if isinstance(value, str):
            if ctype == "id" and not value:
                raise DataError(f"{where}: column {col!r}: the id must be a non-empty string")
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise DataError(f"{where}: column {col!r}: expected text, got {type(value).__name__} {value!r}")
    if ctype == "number":
        x: Any = value
        if is_csv:
            try:
                x = int(value)
            except ValueError:
                try:
                    x = float(value)
                except ValueError:
                    raise DataError(f"{where}: column {col!r}: expected a number, got {value!r}") from None
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise DataError(f"{where}: column {col!r}: expected a number, got {type(x).__name__} {x!r}")
        if as_float(x) is None:
            raise DataError(f"{where}: column {col!r}: must be a finite number, got {value!r}")
        return x
    if is_csv:
        try:
            value = json.loads(value)
        except ValueError:
            raise DataError(
                f"{where}: column {col!r}: expected a JSON list in the cell, got {value!r}"
            ) from None
    if not isinstance(value, list):
        raise DataError(f"{where}: column {col!r}: expected a list, got {type(value).__name__}")
    if ctype == "texts":
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, int) and not isinstance(v, bool):
                out.append(str(v))
            else:
                raise DataError(f"{where}: column {col!r}: expected a list of strings, got {v!r} in it")
        return out
    # vector
    assert spec is not None
    if len(value) != spec.dim:
        raise DataError(f"{where}: column {col!r}: expected {spec.dim} numbers, got {len(value)}")
    if not all(as_float(v) is not None for v in value):
        raise DataError(f"{where}: column {col!r}: every number must be finite")
    return [float(v) for v in value]


def _timestamp(value: Any, where: str, col: str) -> float:
    """Seconds: a number, numeric text, an ISO 8601 text or a Parquet timestamp."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise DataError(f"{where}: column {col!r}: not a timestamp: {value!r}") from None
    x = as_float(value)
    if x is None:
        raise DataError(f"{where}: column {col!r}: not a timestamp: {value!r}")
    return x


# --------------------------------------------------------------------------- tables


def read_table(
    path: Path, tower: TowerSchema | None, id_column: str, keep_others: bool = False
) -> dict[str, dict[str, Any]]:
    """{id: row} of a users or items file; a missing or duplicate id names the row."""
    out: dict[str, dict[str, Any]] = {}
    columns: dict[str, tuple[Column, FieldSpec | None]] = (
        columns_of(tower) if tower is not None else {id_column: ("id", None)}
    )
    # Without a tower only the id column is checked (and converted): every column is kept.
    keep_others = keep_others or tower is None
    for where, row in iter_rows(path, columns, text=(id_column,), keep_others=keep_others):
        rid = row.get(id_column)
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = row[id_column] = str(rid)
        if not isinstance(rid, str) or not rid:
            raise DataError(f"{where}: column {id_column!r} must be a non-empty id, got {rid!r}")
        if rid in out:
            raise DataError(f"{where}: duplicate {id_column} {rid!r}")
        out[rid] = row
    return out


def read_interactions(
    path: Path,
    layout: DataLayout,
    users: Collection[str] | None = None,
    items: Collection[str] | None = None,
) -> list[Interaction]:
    """The interactions table in file order; a missing timestamp column makes file order the time.
    With `users` / `items`, an interaction naming anything else is an error."""
    cols: dict[str, tuple[Column, FieldSpec | None]] = {
        layout.inter_user: ("id", None),
        layout.inter_item: ("id", None),
    }
    out: list[Interaction] = []
    ts_col = layout.timestamp
    labels = {
        layout.inter_user: "the interactions' user column",
        layout.inter_item: "the interactions' item column",
        **({ts_col: "the interactions' timestamp column"} if ts_col else {}),
    }
    read = iter_rows(path, cols | ({ts_col: ("any", None)} if ts_col else {}), labels=labels)
    for n, (where, row) in enumerate(read):
        uid, iid = row[layout.inter_user], row[layout.inter_item]
        if uid is None or iid is None:
            raise DataError(f"{where}: a user and an item are required, got {uid!r}, {iid!r}")
        if users is not None and uid not in users:
            raise DataError(f"{where}: unknown user {uid!r} (not in the users table)")
        if items is not None and iid not in items:
            raise DataError(f"{where}: unknown item {iid!r} (not in the items table)")
        if ts_col is None:
            ts = float(n)
        elif row.get(ts_col) is None:
            raise DataError(f"{where}: column {ts_col!r}: missing timestamp")
        else:
            ts = _timestamp(row[ts_col], where, ts_col)
        out.append(Interaction(uid, iid, ts))
    return out


def load_dataset(data_dir: Path, schema: HasTowers) -> Dataset:
    """Read and check users, items and interactions as the schema describes them (training)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory")
    layout = schema.layout
    users = read_table(table_path(data_dir, layout.users), schema.user, layout.user_id)
    items = read_table(table_path(data_dir, layout.items), schema.item, layout.item_id)
    path = table_path(data_dir, layout.interactions)
    inter = read_interactions(path, layout, users, items)
    if not inter:
        raise DataError(f"{path}: no interactions")
    return Dataset(users=users, items=items, interactions=inter, layout=layout)


def user_rows(
    data_dir: Path,
    layout: DataLayout | None = None,
    schema: HasTowers | None = None,
    keep_others: bool = False,
) -> dict[str, dict[str, Any]]:
    """What a feature store keeps per user: {user_id: features, with every history key holding the
    user's items in time order}. The id is the key, not a feature. With a schema, its layout names
    the tables and columns and its user fields are checked and converted; `keep_others` keeps the
    columns it does not read as well."""
    layout = schema.layout if schema is not None else (layout or DataLayout())
    users = read_table(
        table_path(data_dir, layout.users), schema.user if schema else None, layout.user_id, keep_others
    )
    events = read_interactions(table_path(data_dir, layout.interactions), layout)
    for row in users.values():
        row.pop(layout.user_id, None)
        for key in layout.history:
            row[key] = []
    for it in sorted(events, key=lambda e: e.timestamp):
        user = users.get(it.user_id)
        if user is None:
            user = users[it.user_id] = {key: [] for key in layout.history}
        for key in layout.history:
            user[key].append(it.item_id)
    return users


def catalog_rows(
    data_dir: Path,
    layout: DataLayout | None = None,
    schema: HasTowers | None = None,
    keep_others: bool = False,
) -> CatalogFile:
    """Stream the items table (id included, as a string): the catalog an index build encodes.
    With a schema, as `user_rows`. The result iterates rows; its `batches()` gives the same
    rows as columns (the index build's path)."""
    layout = schema.layout if schema is not None else (layout or DataLayout())
    path = table_path(data_dir, layout.items)
    columns: dict[str, tuple[Column, FieldSpec | None]] = (
        columns_of(schema.item) if schema is not None else {layout.item_id: ("id", None)}
    )
    return CatalogFile(path, columns, layout.item_id, keep_others or schema is None)


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


def check_catalog_columns(path: Path, names: Collection[str], schema: HasTowers) -> None:
    """Refuse a catalog file (read elsewhere, e.g. by Ray Data) whose columns `names` lack the id
    column or a field without a default: the message `catalog_rows` gives for the same file."""
    _check_header(path, set(names), columns_of(schema.item), {})


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
