"""The resolved feature schema: the tower inputs a model declares, with their vocabularies and
learned statistics, as the model manifest carries them.

A schema *file* is read by `models.schema`; raw feature dicts become tower inputs in
`models.transform`. Nothing here imports PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from models.errors import FeatureError
from models.layout import DataLayout

Kind = Literal[
    "categorical", "hashed", "bucket", "numeric", "vector", "multi_hot", "sequence", "hashed_words"
]
Side = Literal["user", "item"]
KINDS: tuple[str, ...] = (
    "categorical",
    "hashed",
    "bucket",
    "numeric",
    "vector",
    "multi_hot",
    "sequence",
    "hashed_words",
)
VOCAB_KINDS = ("categorical", "multi_hot", "sequence")
FLOAT_KINDS = ("numeric", "vector", "multi_hot")
LIST_KINDS = ("vector", "multi_hot", "sequence", "hashed_words")  # rank 2 inputs


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
    dim: int = 0  # vector: fixed length
    mean: float | None = None  # numeric: (x - mean) / std; None until resolved (then 0 / 1 if unknown)
    std: float | None = None
    log: bool = False  # numeric: log1p before normalising
    default: Any = None  # raw value used when the feature is missing (lists are stored as tuples)
    filterable: bool = False  # item fields only: usable in a `filter`
    from_interactions: bool = False  # sequence: filled from the user's earlier interactions

    @property
    def dtype(self) -> str:
        return "float32" if self.kind in FLOAT_KINDS else "int64"

    @property
    def rank(self) -> int:
        """1 for one value per row, 2 for a list per row (ONNX axes: batch[, length])."""
        return 2 if self.kind in LIST_KINDS else 1

    def width(self, vocabularies: Mapping[str, Sequence[str]]) -> int | None:
        """The fixed second axis of a rank-2 input (multi_hot, vector); None when it is dynamic."""
        if self.kind == "multi_hot":
            return self.cardinality(vocabularies)
        if self.kind == "vector":
            return self.dim
        return None

    def cardinality(self, vocabularies: Mapping[str, Sequence[str]]) -> int:
        """Rows an embedding table for this field needs (index 0 included); for the float kinds the
        width of the input a projection reads."""
        if self.kind in VOCAB_KINDS:
            assert self.vocab is not None
            return len(vocabularies[self.vocab]) + (0 if self.kind == "multi_hot" else 1)
        if self.kind == "bucket":
            return len(self.boundaries) + 2
        if self.kind == "numeric":
            return 1
        if self.kind == "vector":
            return self.dim
        return self.hash_size

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "source": self.source}
        if self.vocab is not None:
            out["vocab"] = self.vocab
        if self.boundaries:
            out["boundaries"] = list(self.boundaries)
        for key in ("hash_size", "prefix", "max_len", "dim", "log", "filterable", "from_interactions"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.kind == "numeric":
            out["mean"], out["std"] = self.mean, self.std
        if self.default is not None:
            out["default"] = list(self.default) if isinstance(self.default, tuple) else self.default
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FieldSpec:
        """The manifest form (see `to_dict`). A schema *file* goes through `models.schema` instead."""
        for key in ("name", "kind", "source"):
            if key not in raw:
                raise FeatureError(f"schema field {raw.get('name', '?')}", f"missing key {key!r}")
        if raw["kind"] not in KINDS:
            raise FeatureError(f"schema field {raw['name']}", f"unknown kind {raw['kind']!r}")
        default = raw.get("default")
        return cls(
            name=str(raw["name"]),
            kind=raw["kind"],
            source=str(raw["source"]),
            vocab=raw.get("vocab"),
            boundaries=tuple(float(b) for b in raw.get("boundaries", ())),
            hash_size=int(raw.get("hash_size", 0)),
            prefix=int(raw.get("prefix", 0)),
            max_len=int(raw.get("max_len", 0)),
            dim=int(raw.get("dim", 0)),
            mean=None if raw.get("mean") is None else float(raw["mean"]),
            std=None if raw.get("std") is None else float(raw["std"]),
            log=bool(raw.get("log", False)),
            default=tuple(default) if isinstance(default, list) else default,
            filterable=bool(raw.get("filterable", False)),
            from_interactions=bool(raw.get("from_interactions", False)),
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

    @property
    def filterable(self) -> tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.filterable)

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"id_field": self.id_field, "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class FeatureSchema:
    user: TowerSchema
    item: TowerSchema
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    layout: DataLayout = field(default_factory=DataLayout)

    def tower(self, side: Side) -> TowerSchema:
        return self.user if side == "user" else self.item

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user.to_dict(),
            "item": self.item.to_dict(),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "layout": self.layout.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeatureSchema:
        towers: dict[str, TowerSchema] = {}
        for side in ("user", "item"):
            if side not in raw:
                raise FeatureError("features", f"schema has no {side!r} tower")
            t = raw[side]
            towers[side] = TowerSchema(
                side=side,
                id_field=str(t["id_field"]),
                fields=tuple(FieldSpec.from_dict(f) for f in t["fields"]),
            )
        vocabs = {str(k): tuple(str(x) for x in v) for k, v in raw.get("vocabularies", {}).items()}
        layout = DataLayout.from_dict(raw["layout"]) if "layout" in raw else DataLayout()
        schema = cls(user=towers["user"], item=towers["item"], vocabularies=vocabs, layout=layout)
        for spec in (*schema.user.fields, *schema.item.fields):
            if spec.vocab is not None and spec.vocab not in vocabs:
                raise FeatureError(spec.name, f"vocabulary {spec.vocab!r} is not in the schema")
        return schema


# What counts as a number, for every numeric kind: beside the kinds, as the schema file, the data
# readers and the transform all read values with it.
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_float(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, a bool, NaN, infinity, an int too big
    for a float: `float(10**400)` raises OverflowError, which must not escape as a 500)."""
    if not _is_number(value):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def vocab_from(values: Iterable[str]) -> tuple[str, ...]:
    """A deterministic vocabulary: sorted distinct values."""
    return tuple(sorted(set(values)))
