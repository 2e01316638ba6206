"""The one transform from raw feature dicts to tower input arrays, and the checks of client values.

Training, the service and the index builder all call `TowerEncoder.encode`, so what a tower sees
offline and online cannot drift. The fields it encodes are declared in `models.features` (the
resolved schema the model manifest carries). Nothing here imports PyTorch.

Index 0 of every id-like input is reserved: out-of-vocabulary, missing or padding. A cold user or
an unknown item therefore still gets a valid (if uninformed) embedding instead of an error.
"""

from __future__ import annotations

import itertools
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from types import NoneType
from typing import Any

import numpy as np

from models.errors import FeatureError
from models.features import FeatureSchema, FieldSpec, Side, _is_number, as_float

_F32_MAX = float(np.finfo(np.float32).max)

_WORD = re.compile(r"[a-z0-9]+")
_ROW, _ROW_BYTE = "\x01", b"\x01"  # the row separator of _hashed_words: no word character
_WORD_BYTES = bytes(c if chr(c) in "abcdefghijklmnopqrstuvwxyz0123456789\x01" else 32 for c in range(256))


def hash_token(token: str, hash_size: int) -> int:
    """Stable across processes and platforms (Python's hash() is salted per process).

    `surrogatepass`: JSON may carry a lone surrogate ("\\ud800"); it hashes like any other string
    instead of failing the request."""
    try:
        data = token.encode()
    except UnicodeEncodeError:  # the rare case, off the hot path: an error handler costs ~30%
        data = token.encode("utf-8", errors="surrogatepass")
    return 1 + zlib.crc32(data) % (hash_size - 1)


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _token(value: Any) -> str | None:
    """A string key for a vocabulary or a hash. Integers (e.g. from a Parquet column) count as their
    decimal text; anything else is missing."""
    cls = value.__class__
    if cls is str:
        return value  # type: ignore[no-any-return]
    if cls is int:  # not bool: its class is bool
        return str(value)
    return value if isinstance(value, str) else None


def _finite_or_nan(value: Any) -> float:
    """A bucket's raw value: NaN (-> bucket 0, missing) for anything but a finite number."""
    cls = value.__class__
    if cls is float:  # the common cases first (NaN stays NaN; infinity is missing)
        return value if math.isfinite(value) else math.nan  # type: ignore[no-any-return]
    if cls is int and -(2**53) <= value <= 2**53:
        return float(value)
    x = as_float(value)
    return math.nan if x is None else x


def numeric_value(spec: FieldSpec, value: Any) -> float | None:
    """A numeric field's encoded value, or None if `value` does not give a finite float32."""
    x = as_float(value)
    if x is None:
        return None
    if spec.log:
        if x <= -1.0:
            return None
        x = math.log1p(x)
    mean = spec.mean if spec.mean is not None else 0.0
    std = spec.std if spec.std else 1.0
    z = (x - mean) / std
    return z if math.isfinite(z) and abs(z) <= _F32_MAX else None


def vector_value(spec: FieldSpec, value: Any) -> list[float] | None:
    """A vector field's value as floats, or None if it is not `dim` finite float32 numbers."""
    if not isinstance(value, list | tuple) or len(value) != spec.dim:
        return None
    out: list[float] = []
    for v in value:
        x = as_float(v)
        if x is None or abs(x) > _F32_MAX:
            return None
        out.append(x)
    return out


def check_value(spec: FieldSpec, value: Any, where: str) -> None:
    """Raise FeatureError naming `where` if `value` (not None) does not fit the field's kind."""
    kind = spec.kind
    if kind in ("bucket", "numeric"):
        if not _is_number(value):
            raise FeatureError(where, f"expected a number, got {type(value).__name__}")
        if as_float(value) is None:
            raise FeatureError(where, "must be a finite number")
        if kind == "numeric" and numeric_value(spec, value) is None:
            if spec.log and float(value) <= -1.0:
                raise FeatureError(where, "must be greater than -1 (the field is log-scaled)")
            raise FeatureError(where, "out of range")
    elif kind in ("categorical", "hashed", "hashed_words"):
        if not isinstance(value, str):
            raise FeatureError(where, f"expected a string, got {type(value).__name__}")
    elif kind == "vector":
        if not isinstance(value, list | tuple) or not all(_is_number(v) for v in value):
            raise FeatureError(where, f"expected a list of {spec.dim} numbers")
        if len(value) != spec.dim:
            raise FeatureError(where, f"expected {spec.dim} numbers, got {len(value)}")
        if vector_value(spec, value) is None:
            raise FeatureError(where, "every number must be finite")
    else:  # multi_hot, sequence
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise FeatureError(where, "expected a list of strings")


class TowerEncoder:
    """Validates raw feature dicts and turns batches of them into one tower's input arrays.

    Build once per model version (it indexes the vocabularies); `encode` is the hot path. `encode`
    never raises on values: a missing or unusable value takes the field's default (or the
    missing encoding). Client input goes through `validate` first, which names what is wrong.
    """

    def __init__(self, schema: FeatureSchema, side: Side) -> None:
        self.schema = schema
        self.tower = schema.tower(side)
        self.side = side
        self._index: dict[str, dict[str, int]] = {}
        self._by_source: dict[str, list[FieldSpec]] = {}
        for spec in self.tower.fields:
            self._by_source.setdefault(spec.source, []).append(spec)
        for spec in self.tower.fields:
            if spec.vocab is not None:
                # categorical/sequence reserve 0 for unknown; multi_hot columns start at 0.
                offset = 0 if spec.kind == "multi_hot" else 1
                key = spec.vocab + ("#mh" if offset == 0 else "")
                if key not in self._index:
                    vocab = schema.vocabularies[spec.vocab]
                    self._index[key] = {tok: i + offset for i, tok in enumerate(vocab)}

    @property
    def sources(self) -> frozenset[str]:
        """The raw keys `encode` reads."""
        return frozenset(self._by_source)

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.tower.fields]

    def known_id(self, entity_id: str) -> bool:
        """Whether the id has its own embedding (False when the tower has no id vocabulary)."""
        return any(
            entity_id in self._index[spec.vocab]
            for spec in self._by_source.get(self.tower.id_field, ())
            if spec.kind == "categorical" and spec.vocab is not None
        )

    def validate(self, features: Mapping[str, Any], where: str = "features") -> dict[str, Any]:
        """Check names and types of client-sent features; returns a plain dict (None dropped).

        Raises FeatureError naming `where.<key>` for an unknown name or a wrong type, NaN or
        infinity, a vector of the wrong length. Unknown *values* (a new category, an unseen
        item in history) are not errors: they map to the out-of-vocabulary bucket.
        """
        allowed = self.tower.feature_names
        out: dict[str, Any] = {}
        for key, value in features.items():
            if key not in allowed:
                raise FeatureError(
                    f"{where}.{key}", f"unknown {self.side} feature; expected one of {sorted(allowed)}"
                )
            if value is None:
                continue
            for spec in self._by_source[key]:
                check_value(spec, value, f"{where}.{key}")
            out[key] = value
        return out

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Raw rows (id under `id_field`, features under their source keys) -> input arrays."""
        return self.encode_columns({key: [r.get(key) for r in rows] for key in self._by_source}, len(rows))

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> dict[str, np.ndarray]:
        """`encode` of `n` rows given as columns by source key (a key absent: missing in every row).

        The common cases (strings, numbers, lists of strings) go through array operations and
        C-level maps; any other value takes the per-value path, with the same result."""
        out: dict[str, np.ndarray] = {}
        for spec in self.tower.fields:
            column = columns.get(spec.source)
            vals = _defaulted([None] * n if column is None else column, spec.default)
            kind = spec.kind
            types = set(map(type, vals))
            if kind == "categorical":
                assert spec.vocab is not None
                idx = self._index[spec.vocab]
                if types <= {str, NoneType}:  # None is no key of idx: 0, as _token(None) gives
                    out[spec.name] = np.fromiter(map(idx.get, vals, itertools.repeat(0)), np.int64, n)
                    continue
                out[spec.name] = np.fromiter(
                    (
                        idx.get(v, 0) if v.__class__ is str else idx.get(t, 0) if (t := _token(v)) else 0
                        for v in vals
                    ),
                    dtype=np.int64,
                    count=n,
                )
            elif kind == "bucket":
                x = _fast_floats(vals, types)
                if x is None:
                    x = np.fromiter((_finite_or_nan(v) for v in vals), dtype=np.float64, count=n)
                b = np.searchsorted(np.asarray(spec.boundaries), x, side="right") + 1
                out[spec.name] = np.where(np.isnan(x), 0, b).astype(np.int64)
            elif kind == "numeric":
                fill = numeric_value(spec, spec.default) if spec.default is not None else None
                out[spec.name] = np.fromiter(
                    (z if (z := numeric_value(spec, v)) is not None else (fill or 0.0) for v in vals),
                    dtype=np.float32,
                    count=n,
                )
            elif kind == "vector":
                arr = np.zeros((n, spec.dim), dtype=np.float32)
                fallback = vector_value(spec, spec.default)
                for i, v in enumerate(vals):
                    vec = vector_value(spec, v) if v is not None else None
                    if vec is None:
                        vec = fallback
                    if vec is not None:
                        arr[i] = vec
                out[spec.name] = arr
            elif kind == "hashed":
                p = spec.prefix or None
                out[spec.name] = np.fromiter(
                    (hash_token(t[:p], spec.hash_size) if (t := _token(v)) else 0 for v in vals),
                    dtype=np.int64,
                    count=n,
                )
            elif kind == "multi_hot":
                assert spec.vocab is not None
                idx = self._index[spec.vocab + "#mh"]
                arr = np.zeros((n, len(idx)), dtype=np.float32)
                lists = string_lists(vals, types)
                if lists is not None:
                    lens, flat = lists
                    cols = np.fromiter(map(idx.get, flat, itertools.repeat(-1)), np.int64, len(flat))
                    rows = np.repeat(np.arange(n), lens)
                    known = cols >= 0
                    arr[rows[known], cols[known]] = 1.0
                else:
                    rows_at: list[int] = []
                    cols_at: list[int] = []
                    for i, v in enumerate(vals):
                        for tok in _tokens(v):
                            j = idx.get(tok)
                            if j is not None:
                                rows_at.append(i)
                                cols_at.append(j)
                    arr[rows_at, cols_at] = 1.0  # one scatter instead of a store per value
                out[spec.name] = arr
            elif kind == "sequence":
                assert spec.vocab is not None
                idx = self._index[spec.vocab]
                seqs = [[idx.get(t, 0) for t in _tokens(v)[-spec.max_len :]] for v in vals]
                out[spec.name] = _pad(seqs)
            else:  # hashed_words
                hashed = _hashed_words(vals, types, spec) if n else None
                if hashed is None:
                    words = [word_tokens(v)[: spec.max_len] if isinstance(v, str) else [] for v in vals]
                    hashed = _pad(_hash_each(words, spec.hash_size))
                out[spec.name] = hashed
        return out


def _defaulted(values: Sequence[Any], default: Any) -> Sequence[Any]:
    """The column with the field's default where a value is missing (None)."""
    if default is None:
        return values
    return [default if v is None else v for v in values]


def _fast_floats(vals: Sequence[Any], types: set[type]) -> np.ndarray | None:
    """`_finite_or_nan` of every value as one array, or None when some value needs it itself."""
    if not types <= {int, float, NoneType}:
        return None
    try:
        x = np.array(vals, dtype=np.float64)  # None -> NaN; an int rounds as float() rounds it
    except OverflowError:
        return None
    x[~np.isfinite(x)] = np.nan
    return x


def string_lists(vals: Sequence[Any], types: set[type]) -> tuple[np.ndarray, list[str]] | None:
    """(length of each row's list, every member in row order) when each value is a list (or tuple)
    of strings or missing, else None. What `_tokens` gives for such values (also the filter
    columns' tokens: index_store.attributes)."""
    if not types <= {list, tuple, NoneType}:
        return None
    lists = [() if v is None else v for v in vals] if NoneType in types else vals
    flat = list(itertools.chain.from_iterable(lists))
    if not set(map(type, flat)) <= {str}:
        return None
    return np.fromiter(map(len, lists), dtype=np.int64, count=len(lists)), flat


def _hashed_words(vals: Sequence[Any], types: set[type], spec: FieldSpec) -> np.ndarray | None:
    """The hashed_words input of a column of texts in a few C-level passes over the whole batch,
    not a regex and a list per row; None when a value is no text (or holds the separator).

    The texts are joined by a separator and lowercased once (lowercasing is per character, so the
    join changes no word); every byte of the UTF-8 that is not [a-z0-9] or the separator becomes a
    space (a non-ASCII character is all bytes >= 0x80), and a split gives the words, as bytes: the
    bytes `hash_token` hashes, since a word is ASCII."""
    if not types <= {str, NoneType}:
        return None
    texts = [v if v is not None else "" for v in vals] if NoneType in types else vals
    joined = _ROW.join(texts)
    if joined.count(_ROW) != len(texts) - 1:
        return None
    data = joined.lower().encode("utf-8", "surrogatepass").translate(_WORD_BYTES)
    tokens = data.replace(_ROW_BYTE, b" " + _ROW_BYTE + b" ").split()
    is_sep = np.fromiter(map(_ROW_BYTE.__eq__, tokens), dtype=bool, count=len(tokens))
    row = np.cumsum(is_sep)  # the row each token is in
    starts = np.concatenate([[0], np.flatnonzero(is_sep) + 1])  # token index where each row starts
    pos = np.arange(len(tokens)) - starts[row]  # a word's place in its row
    keep = ~is_sep & (pos < spec.max_len)
    kept = list(itertools.compress(tokens, keep.tolist()))
    distinct = dict.fromkeys(kept, 0)  # titles share most of their words: each hashed once
    m = spec.hash_size - 1
    for w in distinct:
        distinct[w] = 1 + zlib.crc32(w) % m
    cols = pos[keep]
    arr = np.zeros((len(texts), max(1, int(cols.max(initial=0)) + 1)), dtype=np.int64)
    arr[row[keep], cols] = np.fromiter(map(distinct.__getitem__, kept), dtype=np.int64, count=len(kept))
    return arr


def _hash_each(words: list[list[str]], hash_size: int) -> list[list[int]]:
    """hash_token of every word (ASCII [a-z0-9]+, so the plain encode cannot fail), each distinct
    word of the batch hashed once: titles share most of their words."""
    distinct = dict.fromkeys(itertools.chain.from_iterable(words), 0)
    m = hash_size - 1
    for w in distinct:
        distinct[w] = 1 + zlib.crc32(w.encode()) % m
    get = distinct.__getitem__
    return [list(map(get, ws)) for ws in words]


def _tokens(value: Any) -> list[str]:
    """A list feature's items as strings; a non-list value is an empty list."""
    if not isinstance(value, list | tuple):
        return []
    out: list[str] = []
    for v in value:
        if v.__class__ is str:
            out.append(v)
        elif (t := _token(v)) is not None:
            out.append(t)
    return out


def _pad(seqs: list[list[int]]) -> np.ndarray:
    """Right-pad with 0 to the longest row (at least 1 column, so ONNX never sees a 0-length axis)."""
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    width = max(1, int(lens.max(initial=1)))
    arr = np.zeros((len(seqs), width), dtype=np.int64)
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum()))
    rows = np.repeat(np.arange(len(seqs)), lens)
    starts = np.cumsum(lens) - lens
    arr[rows, np.arange(flat.size) - np.repeat(starts, lens)] = flat  # one scatter, not a store per row
    return arr
