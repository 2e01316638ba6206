"""The schema file: a TOML description of both towers and of the data, read and checked here.

    schema = load_schema("examples/shop/schema.toml")       # SchemaFile; errors: SchemaError
    features = schema.learn(users.values(), items.values())  # vocabularies + statistics -> FeatureSchema
    features = schema.resolve()             # or nothing learned: vocab_file, given mean/std

Every error names the file, the field and the problem
(`examples/shop/schema.toml: item.fields.price: unknown parameter 'mean_'`). The format is
documented in docs/MODEL.md ("Schema file"). Torch-free: `twotower import` uses it too.
"""

from __future__ import annotations

import math
import statistics
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from models.errors import FeatureError, SchemaError
from models.features import KINDS, VOCAB_KINDS, FeatureSchema, FieldSpec, Side, TowerSchema, as_float
from models.layout import DataLayout
from models.transform import _token, check_value

FORMAT = 1
COMMON = ("name", "source", "kind", "default", "filterable")
# Parameters each kind accepts besides COMMON; `required` ones must be given.
PARAMS: dict[str, tuple[str, ...]] = {
    "categorical": ("vocab", "vocab_file"),
    "hashed": ("hash_size", "prefix"),
    "bucket": ("boundaries",),
    "numeric": ("mean", "std", "log"),
    "vector": ("dim",),
    "multi_hot": ("vocab", "vocab_file"),
    "sequence": ("vocab", "vocab_file", "max_len", "from_interactions"),
    "hashed_words": ("hash_size", "max_len"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "hashed": ("hash_size",),
    "bucket": ("boundaries",),
    "vector": ("dim",),
    "sequence": ("max_len",),
    "hashed_words": ("hash_size", "max_len"),
}
_TOP = ("format", "data", "interactions", "user", "item")


@dataclass(frozen=True)
class SchemaFile:
    """A checked schema file. Its towers are *unresolved*: learned vocabularies and statistics are
    filled in by `learn` (from data) or `resolve` (from what is given)."""

    path: Path
    layout: DataLayout
    user: TowerSchema
    item: TowerSchema
    vocab_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # vocab -> values

    def tower(self, side: Side) -> TowerSchema:
        return self.user if side == "user" else self.item

    @property
    def fields(self) -> tuple[tuple[Side, FieldSpec], ...]:
        return tuple(("user", f) for f in self.user.fields) + tuple(("item", f) for f in self.item.fields)

    @property
    def learned_vocabularies(self) -> tuple[str, ...]:
        """Vocabulary names that have no vocab_file: learned from the data at train time."""
        names = {f.vocab for _, f in self.fields if f.vocab is not None}
        return tuple(sorted(n for n in names if n not in self.vocab_files))

    def learn(self, users: Iterable[Mapping[str, Any]], items: Iterable[Mapping[str, Any]]) -> FeatureSchema:
        """Learn the missing vocabularies (sorted distinct values of every field that uses one, and
        its default) and the numeric statistics not given in the file, from user and item rows."""
        learn_vocab = set(self.learned_vocabularies)
        values: dict[str, set[str]] = {v: set() for v in learn_vocab}
        for _, f in self.fields:
            # a default is a value like any other: missing values are trained under it
            if f.vocab in learn_vocab and f.default is not None:
                default = f.default if isinstance(f.default, tuple) else (f.default,)
                values[f.vocab].update(t for x in default if (t := _token(x)) is not None)
        numbers: dict[tuple[Side, str], list[float]] = {}
        for side, rows in (("user", users), ("item", items)):
            tower = self.tower(cast(Side, side))
            vocab_fields = [f for f in tower.fields if f.vocab in learn_vocab]
            stat_fields = [f for f in tower.fields if f.kind == "numeric" and f.mean is None]
            for row in rows:
                for f in vocab_fields:
                    v = row.get(f.source)
                    bucket = values[cast(str, f.vocab)]
                    if isinstance(v, list | tuple):
                        bucket.update(t for x in v if (t := _token(x)) is not None)
                    elif (t := _token(v)) is not None:
                        bucket.add(t)
                for f in stat_fields:
                    x = as_float(row.get(f.source))
                    if x is not None and (not f.log or x > -1.0):
                        numbers.setdefault((cast(Side, side), f.name), []).append(
                            math.log1p(x) if f.log else x
                        )
        stats: dict[tuple[Side, str], tuple[float, float]] = {}
        for key, xs in numbers.items():
            mean = statistics.fmean(xs)
            std = statistics.pstdev(xs, mean) if len(xs) > 1 else 0.0
            stats[key] = (mean, std if std > 0 and math.isfinite(std) else 1.0)
        return self.resolve({v: tuple(sorted(s)) for v, s in values.items()}, stats)

    def resolve(
        self,
        vocabularies: Mapping[str, Sequence[str]] | None = None,
        stats: Mapping[tuple[Side, str], tuple[float, float]] | None = None,
    ) -> FeatureSchema:
        """The resolved schema the manifest carries. `vocabularies` supply the learned ones;
        `stats[(side, field name)] = (mean, std)`. A numeric field with neither given nor learned
        statistics is passed through unchanged (mean 0, std 1), as an imported tower expects."""
        vocabs: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (vocabularies or {}).items()}
        vocabs.update(self.vocab_files)
        towers: dict[str, TowerSchema] = {}
        for side in ("user", "item"):
            tower = self.tower(side)
            specs = []
            for f in tower.fields:
                if f.vocab is not None and f.vocab not in vocabs:
                    raise SchemaError(
                        str(self.path),
                        f"{side}.fields.{f.name}",
                        f"vocabulary {f.vocab!r} has no values: give vocab_file or train on data",
                    )
                if f.kind == "numeric" and f.mean is None:
                    mean, std = (stats or {}).get((side, f.name), (0.0, 1.0))
                    f = replace(f, mean=mean, std=std)
                specs.append(f)
            towers[side] = replace(tower, fields=tuple(specs))
        used = {f.vocab for t in towers.values() for f in t.fields if f.vocab is not None}
        return FeatureSchema(
            user=towers["user"],
            item=towers["item"],
            vocabularies={k: v for k, v in sorted(vocabs.items()) if k in used},
            layout=self.layout,
        )


def load_schema(path: Path | str) -> SchemaFile:
    """Read and check a schema file; any problem is a SchemaError naming file, field and problem."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(where, "", "not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(where, "", f"cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(where, "", f"not valid TOML ({exc})") from None
    return _Parser(path).parse(raw)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self.vocab_files: dict[str, tuple[str, ...]] = {}
        self.vocab_file_of: dict[str, str] = {}

    def fail(self, field: str, message: str) -> SchemaError:
        return SchemaError(self.where, field, message)

    def parse(self, raw: Mapping[str, Any]) -> SchemaFile:
        self.unknown(raw, _TOP, "")
        fmt = raw.get("format", FORMAT)
        if type(fmt) is not int or fmt != FORMAT:  # `true == 1` in Python; not in a schema
            raise self.fail("format", f"unsupported format {fmt!r} (this version reads {FORMAT})")
        data = self.table(raw, "data")
        self.unknown(data, ("users", "items", "interactions"), "data")
        inter = self.table(raw, "interactions")
        self.unknown(inter, ("user", "item", "timestamp"), "interactions")
        user = self.tower(raw, "user")
        item = self.tower(raw, "item")
        d = DataLayout()
        layout = DataLayout(
            users=self.text(data, "users", "data", d.users),
            items=self.text(data, "items", "data", d.items),
            interactions=self.text(data, "interactions", "data", d.interactions),
            user_id=user.id_field,
            item_id=item.id_field,
            inter_user=self.text(inter, "user", "interactions", d.inter_user),
            inter_item=self.text(inter, "item", "interactions", d.inter_item),
            timestamp=self.text(inter, "timestamp", "interactions", None) if "timestamp" in inter else None,
            history=tuple(dict.fromkeys(f.source for f in user.fields if f.from_interactions)),
        )
        return SchemaFile(self.path, layout, user, item, dict(self.vocab_files))

    # --- tables ---------------------------------------------------------------------------------

    def unknown(self, raw: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for key in raw:
            if key not in allowed:
                what = f"parameter {key!r}" if where else f"table or key {key!r}"
                raise self.fail(where or key, f"unknown {what}; expected one of {', '.join(allowed)}")

    def table(self, raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, got {type(value).__name__}")
        return value

    def text(self, raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def tower(self, raw: Mapping[str, Any], side: str) -> TowerSchema:
        if side not in raw:
            raise self.fail(side, f"missing table [{side}]")
        t = self.table(raw, side)
        self.unknown(t, ("id", "fields"), side)
        id_field = self.text(t, "id", side, None) if "id" in t else None
        if id_field is None:
            raise self.fail(f"{side}.id", "missing: name the id column")
        fields = t.get("fields")
        if not isinstance(fields, list) or not fields:
            raise self.fail(f"{side}.fields", f"give at least one [[{side}.fields]]")
        specs: list[FieldSpec] = []
        for i, f in enumerate(fields):
            if not isinstance(f, dict):
                raise self.fail(f"{side}.fields[{i}]", "must be a table")
            spec = self.field(f, side, i)
            if any(s.name == spec.name for s in specs):
                raise self.fail(f"{side}.fields.{spec.name}", "duplicate field name")
            specs.append(spec)
        return TowerSchema(side=cast(Side, side), id_field=id_field, fields=tuple(specs))

    # --- one field --------------------------------------------------------------------------------

    def field(self, raw: Mapping[str, Any], side: str, i: int) -> FieldSpec:
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(f"{side}.fields[{i}]", f"'name' must be a non-empty string, got {name!r}")
        at = f"{side}.fields.{name}"
        kind = raw.get("kind")
        if kind not in KINDS:
            raise self.fail(at, f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
        allowed = COMMON + PARAMS[kind]
        for key in raw:
            if key not in allowed:
                raise self.fail(
                    at, f"unknown parameter {key!r} for kind {kind!r}; expected one of {', '.join(allowed)}"
                )
        for key in REQUIRED.get(kind, ()):
            if key not in raw:
                raise self.fail(at, f"missing parameter {key!r} (kind {kind!r})")
        source = raw.get("source", name)
        if not isinstance(source, str) or not source:
            raise self.fail(at, f"'source' must be a non-empty string, got {source!r}")
        filterable = self.flag(raw, "filterable", at)
        if filterable and side != "item":
            raise self.fail(at, "'filterable' is for item fields only")
        from_interactions = self.flag(raw, "from_interactions", at)
        if from_interactions and side != "user":
            raise self.fail(at, "'from_interactions' is for user fields only")
        vocab: str | None = None
        if kind in VOCAB_KINDS:
            vocab = raw.get("vocab", name)
            if not isinstance(vocab, str) or not vocab:
                raise self.fail(at, f"'vocab' must be a non-empty string, got {vocab!r}")
            if "vocab_file" in raw:
                self.read_vocab(raw["vocab_file"], vocab, at)
        spec = FieldSpec(
            name=name,
            kind=cast(Any, kind),
            source=source,
            vocab=vocab,
            boundaries=self.boundaries(raw, at) if kind == "bucket" else (),
            hash_size=self.integer(raw, "hash_size", at, minimum=2) if "hash_size" in raw else 0,
            prefix=self.integer(raw, "prefix", at, minimum=0) if "prefix" in raw else 0,
            max_len=self.integer(raw, "max_len", at, minimum=1) if "max_len" in raw else 0,
            dim=self.integer(raw, "dim", at, minimum=1) if "dim" in raw else 0,
            log=self.flag(raw, "log", at),
            filterable=filterable,
            from_interactions=from_interactions,
        )
        if kind == "numeric":
            spec = self.numeric_stats(raw, spec, at)
        if "default" in raw:
            default = raw["default"]
            try:
                check_value(spec, default, f"{at}.default")
            except FeatureError as exc:
                raise self.fail(f"{at}.default", exc.message) from None
            spec = replace(spec, default=tuple(default) if isinstance(default, list) else default)
        return spec

    def flag(self, raw: Mapping[str, Any], key: str, at: str) -> bool:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(at, f"{key!r} must be true or false, got {value!r}")
        return value

    def integer(self, raw: Mapping[str, Any], key: str, at: str, minimum: int) -> int:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(at, f"{key!r} must be an integer >= {minimum}, got {value!r}")
        return value

    def boundaries(self, raw: Mapping[str, Any], at: str) -> tuple[float, ...]:
        value = raw["boundaries"]
        if not isinstance(value, list) or not value:
            raise self.fail(at, f"'boundaries' must be a non-empty list of numbers, got {value!r}")
        xs = [as_float(v) for v in value]
        if any(x is None for x in xs):
            raise self.fail(at, f"'boundaries' must hold finite numbers, got {value!r}")
        out = tuple(cast(float, x) for x in xs)
        if any(b <= a for a, b in zip(out, out[1:], strict=False)):
            raise self.fail(at, f"'boundaries' must be strictly increasing, got {value!r}")
        return out

    def numeric_stats(self, raw: Mapping[str, Any], spec: FieldSpec, at: str) -> FieldSpec:
        if ("mean" in raw) != ("std" in raw):
            raise self.fail(at, "give both 'mean' and 'std', or neither (learned at train time)")
        if "mean" not in raw:
            return spec
        mean, std = as_float(raw["mean"]), as_float(raw["std"])
        if mean is None:
            raise self.fail(at, f"'mean' must be a finite number, got {raw['mean']!r}")
        if std is None or std <= 0:
            raise self.fail(at, f"'std' must be a finite number > 0, got {raw['std']!r}")
        return replace(spec, mean=mean, std=std)

    def read_vocab(self, value: Any, vocab: str, at: str) -> None:
        if not isinstance(value, str) or not value:
            raise self.fail(at, f"'vocab_file' must be a non-empty string, got {value!r}")
        vpath = self.path.parent / value
        earlier = self.vocab_file_of.get(vocab)
        if earlier is not None:
            if earlier != str(vpath):
                raise self.fail(at, f"vocabulary {vocab!r} is already read from {earlier}")
            return
        try:
            lines = vpath.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise self.fail(at, f"vocab_file {str(vpath)!r} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(at, f"vocab_file {str(vpath)!r} cannot be read ({exc})") from None
        values = [ln.strip() for ln in lines if ln.strip()]
        if not values:
            raise self.fail(at, f"vocab_file {str(vpath)!r} is empty")
        seen: set[str] = set()
        for n, v in enumerate(values, 1):
            if v in seen:
                raise self.fail(at, f"vocab_file {str(vpath)!r}: value {v!r} repeated (entry {n})")
            seen.add(v)
        self.vocab_files[vocab] = tuple(values)
        self.vocab_file_of[vocab] = str(vpath)
