"""Feature schema and the one transform from raw feature dicts to tower input arrays.

Training, the service and the index builder all call `TowerEncoder.encode`, so what a tower sees
offline and online cannot drift. The schema travels in the model manifest; nothing here imports
PyTorch.

Index 0 of every id-like input is reserved: out-of-vocabulary, missing or padding. A cold user or
an unknown item therefore still gets a valid (if uninformed) embedding instead of an error.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from models.errors import FeatureError

Kind = Literal["categorical", "bucket", "hashed", "multi_hot", "sequence", "hashed_words"]
Side = Literal["user", "item"]
KINDS: tuple[str, ...] = ("categorical", "bucket", "hashed", "multi_hot", "sequence", "hashed_words")

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class FieldSpec:
    """One tower input. `name` is the ONNX input name; `source` the raw feature key it reads."""

    name: str
    kind: Kind
    source: str
    vocab: str | None = None  # categorical, multi_hot, sequence: a key of FeatureSchema.vocabularies
    boundaries: tuple[float, ...] = ()  # bucket: sorted upper-exclusive edges
    hash_size: int = 0  # hashed, hashed_words: buckets including the reserved 0
    prefix: int = 0  # hashed: characters kept before hashing (0 = all)
    max_len: int = 0  # sequence: most recent N kept; hashed_words: first N words kept

    @property
    def dtype(self) -> str:
        return "float32" if self.kind == "multi_hot" else "int64"

    @property
    def rank(self) -> int:
        """1 for one value per row, 2 for a list per row (ONNX axes: batch[, length])."""
        return 2 if self.kind in ("multi_hot", "sequence", "hashed_words") else 1

    def cardinality(self, vocabularies: Mapping[str, Sequence[str]]) -> int:
        """Rows an embedding table for this field needs (index 0 included)."""
        if self.kind in ("categorical", "sequence", "multi_hot"):
            assert self.vocab is not None
            return len(vocabularies[self.vocab]) + (0 if self.kind == "multi_hot" else 1)
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        return self.hash_size

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "source": self.source}
        if self.vocab is not None:
            out["vocab"] = self.vocab
        if self.boundaries:
            out["boundaries"] = list(self.boundaries)
        for key in ("hash_size", "prefix", "max_len"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FieldSpec:
        for key in ("name", "kind", "source"):
            if key not in raw:
                raise FeatureError(f"schema field {raw.get('name', '?')}", f"missing key {key!r}")
        if raw["kind"] not in KINDS:
            raise FeatureError(f"schema field {raw['name']}", f"unknown kind {raw['kind']!r}")
        return cls(
            name=str(raw["name"]),
            kind=raw["kind"],
            source=str(raw["source"]),
            vocab=raw.get("vocab"),
            boundaries=tuple(float(b) for b in raw.get("boundaries", ())),
            hash_size=int(raw.get("hash_size", 0)),
            prefix=int(raw.get("prefix", 0)),
            max_len=int(raw.get("max_len", 0)),
        )


@dataclass(frozen=True)
class TowerSchema:
    side: Side
    id_field: str  # raw key of the entity id ("user_id" / "item_id")
    fields: tuple[FieldSpec, ...]

    @property
    def feature_names(self) -> frozenset[str]:
        """Raw keys a client may send in `features` (everything but the entity id)."""
        return frozenset(f.source for f in self.fields if f.source != self.id_field)

    def to_dict(self) -> dict[str, Any]:
        return {"id_field": self.id_field, "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class FeatureSchema:
    user: TowerSchema
    item: TowerSchema
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def tower(self, side: Side) -> TowerSchema:
        return self.user if side == "user" else self.item

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user.to_dict(),
            "item": self.item.to_dict(),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSchema:
        towers: dict[str, TowerSchema] = {}
        for side in ("user", "item"):
            if side not in raw:
                raise FeatureError("features", f"schema has no {side!r} tower")
            t = raw[side]
            towers[side] = TowerSchema(
                side=side,  # type: ignore[arg-type]
                id_field=str(t["id_field"]),
                fields=tuple(FieldSpec.from_dict(f) for f in t["fields"]),
            )
        vocabs = {str(k): tuple(str(x) for x in v) for k, v in raw.get("vocabularies", {}).items()}
        schema = cls(user=towers["user"], item=towers["item"], vocabularies=vocabs)
        for spec in (*schema.user.fields, *schema.item.fields):
            if spec.vocab is not None and spec.vocab not in vocabs:
                raise FeatureError(spec.name, f"vocabulary {spec.vocab!r} is not in the schema")
        return schema


def default_schema(
    vocabularies: Mapping[str, Sequence[str]],
    history_len: int = 50,
    title_hash_size: int = 20_000,
    title_words: int = 12,
    zip_hash_size: int = 1_000,
) -> FeatureSchema:
    """The MovieLens feature set, declared once. `vocabularies` needs user_id, item_id, gender,
    occupation and genre."""
    user = TowerSchema(
        side="user",
        id_field="user_id",
        fields=(
            FieldSpec("user_id", "categorical", "user_id", vocab="user_id"),
            FieldSpec("age", "bucket", "age", boundaries=(18, 25, 35, 45, 50, 56)),
            FieldSpec("gender", "categorical", "gender", vocab="gender"),
            FieldSpec("occupation", "categorical", "occupation", vocab="occupation"),
            FieldSpec("zip", "hashed", "zip", hash_size=zip_hash_size, prefix=3),
            FieldSpec("history", "sequence", "history", vocab="item_id", max_len=history_len),
        ),
    )
    item = TowerSchema(
        side="item",
        id_field="item_id",
        fields=(
            FieldSpec("item_id", "categorical", "item_id", vocab="item_id"),
            FieldSpec("genres", "multi_hot", "genres", vocab="genre"),
            FieldSpec(
                "release_year",
                "bucket",
                "release_year",
                boundaries=(1930, 1950, 1960, 1970, 1980, 1985, 1990, 1993, 1995, 1996, 1997, 1998),
            ),
            FieldSpec("title", "hashed_words", "title", hash_size=title_hash_size, max_len=title_words),
        ),
    )
    vocabs = {k: tuple(str(x) for x in v) for k, v in vocabularies.items()}
    return FeatureSchema(user=user, item=item, vocabularies=vocabs)


def hash_token(token: str, hash_size: int) -> int:
    """Stable across processes and platforms (Python's hash() is salted per process).

    `surrogatepass`: a lone surrogate (valid JSON, not valid UTF-8) hashes like any other unknown
    value instead of raising; every other string hashes exactly as with strict UTF-8.
    """
    return 1 + zlib.crc32(token.encode("utf-8", "surrogatepass")) % (hash_size - 1)


def title_tokens(title: str) -> list[str]:
    return _WORD.findall(title.lower())


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: Any) -> float:
    """A number as a float; NaN for anything else, and for an int too large for a float (JSON
    integers are unbounded: math.isfinite(10**400) raises OverflowError)."""
    if not _is_number(value):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _finite_or_nan(value: Any) -> float:
    """A bucket's raw value: NaN (-> bucket 0, missing) for anything but a finite number."""
    f = _as_float(value)
    return f if math.isfinite(f) else math.nan


class TowerEncoder:
    """Validates raw feature dicts and turns batches of them into one tower's input arrays.

    Build once per model version (it indexes the vocabularies); `encode` is the hot path.
    """

    def __init__(self, schema: FeatureSchema, side: Side) -> None:
        self.schema = schema
        self.tower = schema.tower(side)
        self.side = side
        self._index: dict[str, dict[str, int]] = {}
        for spec in self.tower.fields:
            if spec.vocab is not None and spec.vocab not in self._index:
                vocab = schema.vocabularies[spec.vocab]
                # categorical/sequence reserve 0 for unknown; multi_hot columns start at 0.
                offset = 0 if spec.kind == "multi_hot" else 1
                self._index[spec.vocab + ("#mh" if offset == 0 else "")] = {
                    tok: i + offset for i, tok in enumerate(vocab)
                }

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.tower.fields]

    def known_id(self, entity_id: str) -> bool:
        id_spec = next(f for f in self.tower.fields if f.source == self.tower.id_field)
        assert id_spec.vocab is not None
        return entity_id in self._index[id_spec.vocab]

    def validate(self, features: Mapping[str, Any], where: str = "features") -> dict[str, Any]:
        """Check names and types of client-sent features; returns a plain dict (None dropped).

        Raises FeatureError naming `where.<key>` for an unknown name or a wrong type, NaN or
        infinity. Unknown *values* (a new occupation, an unseen item in history) are not errors:
        they map to the out-of-vocabulary bucket.
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
            spec = next(f for f in self.tower.fields if f.source == key)
            self._check_value(spec, value, f"{where}.{key}")
            out[key] = value
        return out

    @staticmethod
    def _check_value(spec: FieldSpec, value: Any, where: str) -> None:
        if spec.kind == "bucket":
            if not _is_number(value):
                raise FeatureError(where, f"expected a number, got {type(value).__name__}")
            if not math.isfinite(_as_float(value)):
                raise FeatureError(where, "must be a finite number within the float range")
        elif spec.kind in ("categorical", "hashed", "hashed_words"):
            if not isinstance(value, str):
                raise FeatureError(where, f"expected a string, got {type(value).__name__}")
        else:  # multi_hot, sequence
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FeatureError(where, "expected a list of strings")

    def encode(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """Raw rows (id under `id_field`, features under their source keys) -> input arrays."""
        n = len(rows)
        out: dict[str, np.ndarray] = {}
        for spec in self.tower.fields:
            src = spec.source
            if spec.kind == "categorical":
                assert spec.vocab is not None
                idx = self._index[spec.vocab]
                out[spec.name] = np.fromiter(
                    (idx.get(v, 0) if isinstance(v := r.get(src), str) else 0 for r in rows),
                    dtype=np.int64,
                    count=n,
                )
            elif spec.kind == "bucket":
                vals = np.fromiter(
                    (_finite_or_nan(r.get(src)) for r in rows),
                    dtype=np.float64,
                    count=n,
                )
                b = np.searchsorted(np.asarray(spec.boundaries), vals, side="right") + 1
                out[spec.name] = np.where(np.isnan(vals), 0, b).astype(np.int64)
            elif spec.kind == "hashed":
                p = spec.prefix or None
                out[spec.name] = np.fromiter(
                    (
                        hash_token(v[:p], spec.hash_size) if isinstance(v := r.get(src), str) and v else 0
                        for r in rows
                    ),
                    dtype=np.int64,
                    count=n,
                )
            elif spec.kind == "multi_hot":
                assert spec.vocab is not None
                idx = self._index[spec.vocab + "#mh"]
                arr = np.zeros((n, len(idx)), dtype=np.float32)
                for i, r in enumerate(rows):
                    for tok in r.get(src) or ():
                        j = idx.get(tok)
                        if j is not None:
                            arr[i, j] = 1.0
                out[spec.name] = arr
            elif spec.kind == "sequence":
                assert spec.vocab is not None
                idx = self._index[spec.vocab]
                seqs = [[idx.get(t, 0) for t in (r.get(src) or ())[-spec.max_len :]] for r in rows]
                out[spec.name] = _pad(seqs)
            else:  # hashed_words
                seqs = [
                    [hash_token(w, spec.hash_size) for w in title_tokens(v)[: spec.max_len]]
                    if isinstance(v := r.get(src), str)
                    else []
                    for r in rows
                ]
                out[spec.name] = _pad(seqs)
        return out


def _pad(seqs: list[list[int]]) -> np.ndarray:
    """Right-pad with 0 to the longest row (at least 1 column, so ONNX never sees a 0-length axis)."""
    width = max(1, max((len(s) for s in seqs), default=1))
    arr = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        arr[i, : len(s)] = s
    return arr


def vocab_from(values: Iterable[str]) -> tuple[str, ...]:
    """A deterministic vocabulary: sorted distinct values."""
    return tuple(sorted(set(values)))
