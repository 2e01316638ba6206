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

This module is the row level: one file's rows (`iter_rows`), one users or items table keyed by id
(`read_table`), and the value conversion every reader shares. It is apart from the dataset level
(`models.data`) and the catalog's column path (`models.catalog_batches`), which both read through
it; the Ray engine's actors import it and the column path without the dataset level.
"""

from __future__ import annotations

import csv
import json
import json.scanner
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from models.errors import DataError
from models.features import FieldSpec, TowerSchema, as_float
from models.layout import FORMATS

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
