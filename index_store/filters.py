"""Filters over a build's attribute columns: validate a client's filter against the schema, then
turn it into a boolean mask over the build's rows.

    {"genres": {"any": ["Comedy", "Drama"]},      # values columns: any | all | none
     "release_year": {"gte": 1990, "lt": 2000},   # number columns: gt | gte | lt | lte | eq
     "available": {"eq": true}}                   # bool columns: eq

Fields combine with AND, and so do the operators of one field. A value the catalog never holds is
not an error (`any: ["Western"]` matches nothing); a wrong name, operator or type is a
FeatureError naming its path, e.g. `filter.genres.any.1`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from index_store.attributes import COLUMN_KINDS, Attributes, BoolColumn, NumberColumn, ValuesColumn
from models.errors import FeatureError
from models.features import TowerSchema

VALUE_OPS = ("any", "all", "none")
NUMBER_OPS = ("gt", "gte", "lt", "lte", "eq")
BOOL_OPS = ("eq",)
MAX_VALUES = 1000  # values in one any/all/none list (the service passes its setting)


def filter_mask(
    raw: Mapping[str, Any] | None,
    tower: TowerSchema,
    attributes: Attributes,
    where: str = "filter",
    max_values: int = MAX_VALUES,
) -> np.ndarray | None:
    """The rows passing `raw` (bool [N], read-only: the same array for every request asking the
    same filter of this build while it is cached), or None when there is nothing to filter on."""
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise FeatureError(where, "expected an object of field -> {operator: value}")
    try:
        key = json.dumps([raw, max_values], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        key = None  # not from JSON (a caller's own objects): validated below, not cached
    cached = attributes.masks.get(key) if key is not None else None
    if cached is not None:
        return cached.mask
    mask = _mask(raw, tower, attributes, where, max_values)
    return attributes.masks.put(key, mask).mask if key is not None else mask


def _mask(
    raw: Mapping[str, Any], tower: TowerSchema, attributes: Attributes, where: str, max_values: int
) -> np.ndarray:
    by_name = {f.name: f for f in tower.fields}
    mask = np.ones(attributes.size, dtype=bool)
    for name, ops in raw.items():
        at = f"{where}.{name}"
        spec = by_name.get(name)
        filterable = sorted(f.name for f in tower.filterable if f.kind in COLUMN_KINDS)
        if spec is None or name == tower.id_field:
            raise FeatureError(at, f"unknown item field; filterable fields: {filterable}")
        if not spec.filterable:
            raise FeatureError(at, f"field is not filterable; filterable fields: {filterable}")
        if spec.kind not in COLUMN_KINDS:
            raise FeatureError(at, f"a {spec.kind} field cannot be filtered")
        column = attributes.columns.get(name)
        if column is None:
            raise FeatureError(at, "the serving index build has no column for it (built before; reindex)")
        if not isinstance(ops, Mapping) or not ops:
            raise FeatureError(at, 'expected an object of operator -> value, e.g. {"any": [...]}')
        for op, value in ops.items():
            mask &= _apply(column, op, value, f"{at}.{op}", attributes.size, max_values)
    return mask


def _apply(
    column: ValuesColumn | NumberColumn | BoolColumn, op: str, value: Any, at: str, size: int, max_values: int
) -> np.ndarray:
    if isinstance(column, ValuesColumn):
        _check_op(op, VALUE_OPS, at)
        return _values(column, op, _strings(value, at, max_values), size)
    if isinstance(column, NumberColumn):
        _check_op(op, NUMBER_OPS, at)
        x = _number(value, at)
        compare = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}
        with np.errstate(invalid="ignore"):  # NaN (missing) compares false: it never passes
            hit: np.ndarray = compare.get(op, np.equal)(column.x, x)
        return hit
    _check_op(op, BOOL_OPS, at)
    if not isinstance(value, bool):
        raise FeatureError(at, f"expected true or false, got {type(value).__name__}")
    out: np.ndarray = column.b == int(value)
    return out


def _check_op(op: str, allowed: tuple[str, ...], at: str) -> None:
    if op not in allowed:
        raise FeatureError(at, f"unknown operator for this field; expected one of {list(allowed)}")


def _strings(value: Any, at: str, max_values: int) -> list[str]:
    if not isinstance(value, list) or not value:
        raise FeatureError(at, "expected a non-empty list of strings")
    if len(value) > max_values:
        raise FeatureError(at, f"at most {max_values} values")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise FeatureError(f"{at}.{i}", f"expected a string, got {type(v).__name__}")
    return value


def _number(value: Any, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeatureError(at, f"expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        raise FeatureError(at, "must be a finite number") from None
    if not math.isfinite(x):
        raise FeatureError(at, "must be a finite number")
    return x


def _values(column: ValuesColumn, op: str, values: list[str], size: int) -> np.ndarray:
    codes = {c for v in values if (c := column.code(v)) is not None}
    if op == "all":
        if len(codes) < len(set(values)):  # a value no item holds: no row holds all of them
            return np.zeros(size, dtype=bool)
        counts = np.zeros(size, dtype=np.int32)
        for c in codes:
            counts[column.rows_of(c)] += 1
        out: np.ndarray = counts == len(codes)
        return out
    hit = np.zeros(size, dtype=bool)
    for c in codes:
        hit[column.rows_of(c)] = True
    return hit if op == "any" else ~hit
