"""Rows to run towers on without data: synthesised from a schema (every kind's known, unknown,
missing, empty and over-long values), or read from a data directory (`--sample-data`)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.data import catalog_rows, user_rows
from models.errors import DataError
from models.features import FeatureSchema, FieldSpec, Side

UNKNOWN = "\x00twotower-unknown"  # a value no vocabulary holds: exercises the out-of-vocabulary path
SAMPLE_ROWS = 9


def sample_rows(
    schema: FeatureSchema, side: Side, count: int = SAMPLE_ROWS, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows that exercise every field's paths: known and unknown values, missing, empty, over-long.

    Row 0 has every feature missing (a cold user, a bare item id); the others combine each field's
    variants at different offsets, so no two fields change in lockstep.
    """
    rng = random.Random(seed)
    tower = schema.tower(side)
    rows: list[dict[str, Any]] = [{} for _ in range(count)]
    for j, spec in enumerate(tower.fields):
        variants = _variants(spec, schema, rng)
        for i in range(1, count):
            value = variants[(i + j) % len(variants)]
            if value is not None:
                rows[i][spec.source] = value
    return rows


def _variants(spec: FieldSpec, schema: FeatureSchema, rng: random.Random) -> list[Any]:
    vocab = list(schema.vocabularies.get(spec.vocab, ())) if spec.vocab is not None else []
    known = vocab[:1] + vocab[-1:] if vocab else []
    if spec.kind == "categorical":
        return [*known, UNKNOWN, None]
    if spec.kind == "hashed":
        return ["a", "some value 123", "", None]
    if spec.kind == "bucket":
        b = list(spec.boundaries) or [0.0]
        return [b[0] - 1.0, b[-1] + 1.0, (b[0] + b[-1]) / 2, b[0], None]
    if spec.kind == "numeric":
        mean, std = spec.mean or 0.0, spec.std or 1.0
        if spec.log:  # raw values are log1p'd: the same points, mapped back, and above -1
            return [0.0, math.expm1(mean), math.expm1(mean + 3 * std), None]
        return [mean, mean + 3 * std, mean - 3 * std, 0.0, None]
    if spec.kind == "vector":
        dim = spec.dim
        return [[rng.gauss(0.0, 1.0) for _ in range(dim)], [0.0] * dim, [3.0] * dim, None]
    if spec.kind == "multi_hot":
        return [[], known[:1], [*known, UNKNOWN], vocab, None]
    if spec.kind == "sequence":
        long = [vocab[i % len(vocab)] for i in range(spec.max_len + 3)] if vocab else [UNKNOWN]
        return [[], known[:1], long, [UNKNOWN, *known], None]
    return ["", "Two Words", " ".join(f"w{i}" for i in range(spec.max_len + 3)), None]  # hashed_words


def describe_row(row: Mapping[str, Any]) -> str:
    """A sample row for an error message: short, with the unknown marker spelled out."""
    text = repr({k: v for k, v in row.items()}).replace(repr(UNKNOWN)[1:-1], "<unknown>")
    return text if len(text) <= 200 else text[:200] + "…"


def read_sample_rows(
    schema: FeatureSchema, data_dir: Path, limit: int = 256
) -> dict[Side, list[dict[str, Any]]]:
    """Up to `limit` users (with their histories) and items of a data directory, read as the
    schema's `[data]` describes them (Parquet, CSV or JSON lines), to run besides the samples."""
    layout = schema.layout
    users = [
        {**row, layout.user_id: uid}
        for uid, row in itertools.islice(user_rows(data_dir, schema=schema).items(), limit)
    ]
    items = list(itertools.islice(catalog_rows(data_dir, schema=schema), limit))
    for side, rows in (("user", users), ("item", items)):
        if not rows:
            raise DataError(f"{data_dir}: no {side} rows for --sample-data")
    return {"user": users, "item": items}
