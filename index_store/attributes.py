"""Attribute columns of a build: the raw values of every filterable item field, row-aligned with
the index, so that a filter costs array operations and no per-request feature lookups.

Three column types, chosen per field at build time:
- `ValuesColumn` (categorical, hashed, multi_hot, sequence): the distinct raw values seen in the
  catalog and, per value, the sorted rows holding it (a posting list, CSC layout). `any` is the
  union of a few posting lists, so a filter on a rare value touches only its rows.
- `NumberColumn` (numeric, bucket): the raw source value as float64, NaN where missing (every
  comparison with NaN is false, so a missing value never passes a range).
- `BoolColumn` (any scalar field whose catalog values are all JSON booleans): int8 1 / 0 / -1.

They are written to `attributes.npz` (no pickle) in the build directory, checked by the build
manifest's sha256 like the other files, and read-only once loaded.
"""

from __future__ import annotations

import io
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import NoneType
from typing import Any

import numpy as np

from index_store.filter_cache import MaskCache
from models.errors import ArtifactError
from models.features import FieldSpec, TowerSchema
from models.transform import string_lists

ATTRIBUTES_FILE = "attributes.npz"
VALUE_KINDS = ("categorical", "hashed", "multi_hot", "sequence")  # filtered by string values
NUMBER_KINDS = ("numeric", "bucket")  # filtered by the raw number
COLUMN_KINDS = VALUE_KINDS + NUMBER_KINDS  # vector and hashed_words have no column
_CHUNK = 4096  # rows `watch` collects at a time


@dataclass(frozen=True, eq=False)
class ValuesColumn:
    values: np.ndarray  # str [V], sorted
    ptr: np.ndarray  # int64 [V + 1]: rows of values[v] are rows[ptr[v]:ptr[v + 1]]
    rows: np.ndarray  # int32 [nnz], sorted within each value

    def code(self, value: str) -> int | None:
        i = int(np.searchsorted(self.values, value))
        return i if i < len(self.values) and self.values[i] == value else None

    def rows_of(self, code: int) -> np.ndarray:
        return self.rows[self.ptr[code] : self.ptr[code + 1]]


@dataclass(frozen=True, eq=False)
class NumberColumn:
    x: np.ndarray  # float64 [N], NaN = missing


@dataclass(frozen=True, eq=False)
class BoolColumn:
    b: np.ndarray  # int8 [N]: 1 true, 0 false, -1 missing


Column = ValuesColumn | NumberColumn | BoolColumn


@dataclass(frozen=True, eq=False)
class Attributes:
    """Every filterable field's column over the `size` rows of one build."""

    size: int
    columns: Mapping[str, Column] = field(default_factory=dict)  # by schema field name
    masks: MaskCache = field(default_factory=MaskCache, repr=False)  # the filters last asked of it

    def describe(self) -> dict[str, str]:
        """Field -> column type, as the build manifest records it."""
        return {name: _TYPE[type(col)] for name, col in self.columns.items()}


_TYPE: dict[type, str] = {ValuesColumn: "values", NumberColumn: "number", BoolColumn: "bool"}


class _Field:
    """One field's values as they stream past: compact arrays, not the rows' Python objects (a
    1M-item catalog's genre lists held to the end would cost hundreds of MB in the build)."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        self.numbers = array("d")  # numeric / bucket: the raw value, NaN = missing
        self.codes: dict[str, int] = {}  # value kinds: value -> first-seen code
        self.pair_codes = array("i")  # value kinds: (code, row) per value held
        self.pair_rows = array("i")
        self.bools = array("b")  # -1 missing, 0 / 1 a JSON boolean
        self.all_bool = True  # every present value is a JSON boolean (then a BoolColumn)
        self.any_present = False

    def add(self, row: int, value: Any) -> None:
        if value is not None:
            self.any_present = True
            if not isinstance(value, bool):
                self.all_bool = False
        self.bools.append(-1 if not isinstance(value, bool) else int(value))
        if self.spec.kind in NUMBER_KINDS:
            self.numbers.append(_number(value))
            return
        for tok in dict.fromkeys(_tokens(value)):
            code = self.codes.setdefault(tok, len(self.codes))
            self.pair_codes.append(code)
            self.pair_rows.append(row)

    def add_values(self, first: int, values: list[Any]) -> None:
        """Rows `first`, `first + 1`, ... holding `values` (defaults applied): what `add` does row by
        row, as array operations when every value has a common type (no bool, numbers for the number
        kinds, strings or lists of strings for the value kinds); anything else goes through `add`.
        Per row in Python this was a third of a 1M-item build (measured, cProfile)."""
        n = len(values)
        types = set(map(type, values))
        fast = (
            self._fast_number(values, types)
            if self.spec.kind in NUMBER_KINDS
            else self._fast_tokens(values, types)
        )
        if fast is None:
            for i, value in enumerate(values):
                self.add(first + i, value)
            return
        if types - {NoneType}:  # a present value, and none is a bool
            self.any_present = True
            self.all_bool = False
        self.bools.frombytes(b"\xff" * n)  # int8 -1: no value is a bool
        if isinstance(fast, np.ndarray):
            self.numbers.frombytes(fast.tobytes())
            return
        lens, tokens = fast
        for tok in dict.fromkeys(tokens):  # new values get codes in first-seen order, as `add` gives
            self.codes.setdefault(tok, len(self.codes))
        self.pair_codes.frombytes(
            np.fromiter(map(self.codes.__getitem__, tokens), np.int32, len(tokens)).tobytes()
        )
        rows = np.repeat(np.arange(first, first + n, dtype=np.int32), lens)
        self.pair_rows.frombytes(rows.tobytes())

    def add_arrow(self, first: int, array: Any) -> bool:
        """`add_values` of a pyarrow column (no default to apply) without a Python object per row:
        numbers as float64, strings or lists of strings through a dictionary of their distinct
        tokens (new ones get codes in first-seen order, as `add_values` gives them). False, having
        added nothing, for any other type or a list with a missing member: the caller converts
        that column to Python. The Ray engine's build process collects every shard this way."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        n, kind, t = len(array), self.spec.kind, array.type
        if kind in NUMBER_KINDS:
            if not (pa.types.is_integer(t) or pa.types.is_float32(t) or pa.types.is_float64(t)):
                return False
            x = np.array(array.to_numpy(zero_copy_only=False), dtype=np.float64)  # a copy; nulls: NaN
            x[~np.isfinite(x)] = np.nan
            fast: np.ndarray | tuple[np.ndarray, Any] = x
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            fast = (np.asarray(array.is_valid(), dtype=np.int64), array.drop_null())
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        ):
            tokens = pc.list_flatten(array)  # a missing list holds none
            if tokens.null_count:  # `add` skips a missing member: the caller's Python path
                return False
            lens = pc.list_value_length(array).fill_null(0)
            fast = (np.asarray(lens, dtype=np.int64), tokens)
        else:
            return False
        if array.null_count < n:  # a present value, and none is a bool
            self.any_present = True
            self.all_bool = False
        self.bools.frombytes(b"\xff" * n)  # int8 -1: no value is a bool
        if isinstance(fast, np.ndarray):
            self.numbers.frombytes(fast.tobytes())
            return True
        lens, tokens = fast
        encoded = tokens.dictionary_encode()  # its dictionary in first-seen order
        distinct = encoded.dictionary.to_pylist()
        for tok in distinct:
            self.codes.setdefault(tok, len(self.codes))
        code = np.fromiter(map(self.codes.__getitem__, distinct), np.int32, len(distinct))
        self.pair_codes.frombytes(code[np.asarray(encoded.indices, dtype=np.int64)].tobytes())
        self.pair_rows.frombytes(np.repeat(np.arange(first, first + n, dtype=np.int32), lens).tobytes())
        return True

    @staticmethod
    def _fast_number(values: list[Any], types: set[type]) -> np.ndarray | None:
        """float64 of `_number` for each value, or None when a value needs `_number` itself."""
        if not types <= {int, float, NoneType}:
            return None
        try:
            x = np.array(values, dtype=np.float64)  # None -> NaN; ints round as float() rounds them
        except OverflowError:  # an int beyond float range: `_number` makes it NaN
            return None
        x[~np.isfinite(x)] = np.nan
        return x

    @staticmethod
    def _fast_tokens(values: list[Any], types: set[type]) -> tuple[np.ndarray, list[str]] | None:
        """(tokens per row, the tokens in row order) for strings or lists of strings, else None.
        A row's repeated token is kept here and dropped in `column` (as `add` drops it)."""
        if types <= {str, NoneType}:
            lens = np.fromiter((v is not None for v in values), dtype=np.int64, count=len(values))
            return lens, [v for v in values if v is not None]
        return string_lists(values, types)

    def column(self) -> Column:
        if self.any_present and self.all_bool:
            return BoolColumn(np.frombuffer(self.bools, dtype=np.int8).copy())
        if self.spec.kind in NUMBER_KINDS:
            return NumberColumn(np.frombuffer(self.numbers, dtype=np.float64).copy())
        values = np.array(list(self.codes), dtype=str)
        order = np.argsort(values, kind="stable")  # codes in first-seen order -> sorted values
        rank = np.empty(len(values), dtype=np.int64)
        rank[order] = np.arange(len(values))
        codes = rank[np.frombuffer(self.pair_codes, dtype=np.int32)] if len(values) else np.zeros(0, np.int64)
        rows = np.frombuffer(self.pair_rows, dtype=np.int32).astype(np.int64)
        # By value, then row, each (value, row) pair once (`add_values` keeps a row's repeated value):
        # one sort of a combined key, as lexsort gave when `add` alone filled the pairs.
        span = int(rows.max(initial=-1)) + 1
        key = np.sort(codes * span + rows)  # a plain sort: np.unique hashes first (measured 3 s at 2M)
        key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
        codes, rows = (key // span, key % span) if span else (key, key)
        ptr = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(values)))]).astype(np.int64)
        return ValuesColumn(values[order], ptr, rows.astype(np.int32))


class AttributeCollector:
    """Gathers the filterable fields' raw values from catalog rows as they stream past the encoder.

    collector = AttributeCollector(schema.item)
    ids, vectors = encode_catalog(runner, rows, collector=collector)  # add_columns per batch
    attributes = collector.finish()
    """

    def __init__(self, tower: TowerSchema) -> None:
        self.specs: tuple[FieldSpec, ...] = tuple(f for f in tower.filterable if f.kind in COLUMN_KINDS)
        self._fields = [_Field(f) for f in self.specs]
        self._n = 0

    @property
    def sources(self) -> frozenset[str]:
        """The raw keys it reads."""
        return frozenset(f.source for f in self.specs)

    def add_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> None:
        """The next `n` rows, given as columns by source key (a key absent: missing in every row)."""
        for f in self._fields:
            column = columns.get(f.spec.source)
            self._add(f, [None] * n if column is None else list(column), n)
        self._n += n

    def add_arrow(self, columns: Mapping[str, Any], n: int) -> None:
        """`add_columns` of pyarrow columns (Arrays or ChunkedArrays), the same result: a column
        of numbers, strings or lists of strings is taken as arrays (`_Field.add_arrow`), any other
        (or one with missing values to fill with a default) through its Python values."""
        for f in self._fields:
            column = columns.get(f.spec.source)
            if column is None:
                self._add(f, [None] * n, n)
                continue
            if len(column) != n:
                raise ValueError(f"column {f.spec.source!r} has {len(column)} values, expected {n}")
            if (f.spec.default is None or column.null_count == 0) and f.add_arrow(self._n, column):
                continue
            self._add(f, column.to_pylist(), n)
        self._n += n

    def _add(self, f: _Field, values: list[Any], n: int) -> None:
        if len(values) != n:
            raise ValueError(f"column {f.spec.source!r} has {len(values)} values, expected {n}")
        default = f.spec.default
        if default is not None:
            values = [default if v is None else v for v in values]
        f.add_values(self._n, values)

    def add_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self.add_columns(
            {f.spec.source: [r.get(f.spec.source) for r in rows] for f in self._fields}, len(rows)
        )

    def watch(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """Pass `rows` through, collecting them in chunks: drain it before `finish()`."""
        chunk: list[Mapping[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= _CHUNK:
                self.add_rows(chunk)
                chunk = []
            yield row
        self.add_rows(chunk)

    def finish(self) -> Attributes:
        return Attributes(self._n, {f.spec.name: f.column() for f in self._fields})


def concat(a: Attributes, b: Attributes) -> Attributes | None:
    """`a`'s rows, then `b`'s (None when a field's column type differs between them). Costs array
    operations per column and distinct value, no pass over rows in Python: a catalog delta grows by
    the few rows of each upsert call without collecting every pending row again."""
    if a.size == 0:
        return b
    if a.columns.keys() != b.columns.keys():
        return None
    columns: dict[str, Column] = {}
    for name, ca in a.columns.items():
        cb = b.columns[name]
        if isinstance(ca, NumberColumn) and isinstance(cb, NumberColumn):
            columns[name] = NumberColumn(np.concatenate([ca.x, cb.x]))
        elif isinstance(ca, BoolColumn) and isinstance(cb, BoolColumn):
            columns[name] = BoolColumn(np.concatenate([ca.b, cb.b]))
        elif isinstance(ca, ValuesColumn) and isinstance(cb, ValuesColumn):
            values = np.union1d(ca.values, cb.values).astype(str)
            parts: list[np.ndarray] = []
            counts = []
            for v in values.tolist():
                ia, ib = ca.code(v), cb.code(v)
                ra = ca.rows_of(ia) if ia is not None else np.zeros(0, np.int32)
                rb = cb.rows_of(ib) + a.size if ib is not None else np.zeros(0, np.int32)
                parts += [ra, rb]
                counts.append(len(ra) + len(rb))
            ptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
            rows = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
            columns[name] = ValuesColumn(values, ptr, rows)
        else:
            return None
    return Attributes(a.size + b.size, columns)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    try:
        x = float(value)
    except OverflowError:
        return math.nan
    return x if math.isfinite(x) else math.nan


def _tokens(value: Any) -> list[str]:
    """A value's strings: a list's string (or integer) members, or the scalar itself."""
    items = value if isinstance(value, list | tuple) else [value]
    return [str(v) for v in items if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))]


def to_bytes(attributes: Attributes) -> bytes:
    """The columns as one .npz (keys `<i>.<part>`, field names in the manifest's order)."""
    arrays: dict[str, np.ndarray] = {}
    for i, col in enumerate(attributes.columns.values()):
        if isinstance(col, ValuesColumn):
            arrays.update({f"{i}.values": col.values, f"{i}.ptr": col.ptr, f"{i}.rows": col.rows})
        elif isinstance(col, NumberColumn):
            arrays[f"{i}.x"] = col.x
        else:
            arrays[f"{i}.b"] = col.b
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def from_bytes(data: bytes, described: Mapping[str, str], size: int, where: str) -> Attributes:
    """Columns read back from `to_bytes` output; `described` is the manifest's field -> type."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{where}: not a readable .npz file ({exc})") from exc
    return from_arrays(arrays, described, size, where)


def from_arrays(
    arrays: Mapping[str, np.ndarray], described: Mapping[str, str], size: int, where: str
) -> Attributes:
    """Columns from the arrays of a `to_bytes` archive (read, or mapped by index_store.npzmap)."""
    columns: dict[str, Column] = {}
    try:
        for i, (name, kind) in enumerate(described.items()):
            col: Column
            if kind == "values":
                vc = ValuesColumn(arrays[f"{i}.values"], arrays[f"{i}.ptr"], arrays[f"{i}.rows"])
                ok = vc.ptr.shape == (len(vc.values) + 1,) and (vc.rows.size == 0 or vc.rows.max() < size)
                col = vc
            elif kind == "number":
                col = NumberColumn(arrays[f"{i}.x"])
                ok = col.x.shape == (size,)
            elif kind == "bool":
                col = BoolColumn(arrays[f"{i}.b"])
                ok = col.b.shape == (size,)
            else:
                raise ArtifactError(f"{where}: unknown column type {kind!r} for {name!r}")
            if not ok:
                raise ArtifactError(f"{where}: column {name!r} does not cover {size} rows")
            for arr in vars(col).values():
                arr.setflags(write=False)
            columns[name] = col
    except KeyError as exc:
        raise ArtifactError(f"{where}: missing array {exc}") from exc
    return Attributes(size, columns)
