"""Synthetic items and users for any model, drawn from its manifest's resolved schema.

Every field kind gets plausible values: categorical and multi_hot values from the vocabulary,
hashed tokens, bucket numbers around the boundaries, numeric values from the learned mean/std,
vectors of the declared length, hashed_words titles, and user histories (the `from_interactions`
fields) from the model's known item ids. Seeded and lazy: the same (manifest, n, seed) always
yields the same rows, and 1M rows never sit in memory. `write_data_dir` writes them as a data
directory the service and `twotower reindex` read (users.jsonl, items.jsonl, interactions.csv;
see app/catalog.py).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from models.features import FieldSpec, TowerSchema
from models.layout import DataLayout
from models.manifest import ModelManifest

_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "den", "mar", "ost", "el", "an", "qu", "bri")
_POOL = 1 << 16  # values pre-drawn per field; past that, rows cycle the pools with per-field strides
_STRIDES = (7919, 7907, 7901, 7883, 7877, 7873, 7867, 7853, 7841, 7829, 7823, 7817)
USERS = "users.jsonl"  # the file names of the default layout
ITEMS = "items.jsonl"
INTERACTIONS = "interactions.csv"


def _draw(
    spec: FieldSpec, vocabularies: Mapping[str, tuple[str, ...]], rng: random.Random
) -> Callable[[], Any]:
    """A sampler of one raw value for `spec` (never missing, so every input is exercised)."""
    kind = spec.kind
    vocab = list(vocabularies.get(spec.vocab or "", ())) or ["x"]
    if kind == "categorical":
        return lambda: rng.choice(vocab)
    if kind == "multi_hot":
        return lambda: rng.sample(vocab, rng.randint(1, min(3, len(vocab))))
    if kind == "sequence":
        return lambda: rng.sample(vocab, rng.randint(0, min(spec.max_len, len(vocab))))
    if kind == "hashed":
        return lambda: "".join(rng.choices("0123456789ABCDEFGHJKLMNPRSTUVWXYZ", k=5))
    if kind == "bucket":
        lo, hi = spec.boundaries[0], spec.boundaries[-1]
        pad = max((hi - lo) / max(len(spec.boundaries) - 1, 1), 1.0)
        whole = all(float(b).is_integer() for b in spec.boundaries)
        return lambda: rng.randint(int(lo - pad), int(hi + pad)) if whole else rng.uniform(lo - pad, hi + pad)
    if kind == "numeric":
        mean = spec.mean if spec.mean is not None else 0.0
        std = spec.std if spec.std else 1.0

        def numeric() -> float:
            t = rng.gauss(mean, std)
            # log1p(x) = t, so x = expm1(t), kept above -1 where log1p is defined
            return max(round(math.expm1(min(t, 50.0)), 4), -0.999) if spec.log else round(t, 4)

        return numeric
    if kind == "vector":
        return lambda: [round(rng.gauss(0.0, 1.0), 4) for _ in range(spec.dim)]
    # hashed_words: a few made-up words
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) for _ in range(3000)]
    return lambda: " ".join(rng.choices(words, k=rng.randint(1, 4)))


def _rows(
    tower: TowerSchema,
    vocabularies: Mapping[str, tuple[str, ...]],
    n: int,
    rng: random.Random,
    skip: Iterable[str] = (),
) -> Iterator[dict[str, Any]]:
    """Feature dicts (no id) for `n` rows, from per-field pools so that 1M rows stay cheap."""
    skipped = {tower.id_field, *skip}
    specs = [f for f in tower.fields if f.source not in skipped]
    m = min(n, _POOL)
    pools = [[draw() for _ in range(m)] for draw in (_draw(f, vocabularies, rng) for f in specs)]
    offsets = [rng.randrange(m) if m else 0 for _ in specs]
    for i in range(n):
        row: dict[str, Any] = {}
        for k, (spec, pool) in enumerate(zip(specs, pools, strict=True)):
            # past the pool, each field cycles with its own stride so neighbouring rows differ
            j = i if i < m else (i * _STRIDES[k % len(_STRIDES)] + offsets[k]) % m
            row[spec.source] = pool[j]
        yield row


def synthetic_items(
    manifest: ModelManifest, n: int, seed: int = 0, prefix: str = "syn-"
) -> Iterator[dict[str, Any]]:
    """`n` item rows {id, every item feature}, lazily.

    The first rows reuse the model's known item ids (their id embedding is trained); the rest get
    fresh ids `<prefix><i>`, out-of-vocabulary for the tower. Ids depend on `n` and `prefix` only,
    so two seeds give the same catalog with different features (the swap benchmark's rebuild).
    """
    schema = manifest.features
    tower = schema.item
    known = _known_ids(manifest, tower)
    rng = random.Random(seed)
    for i, row in enumerate(_rows(tower, schema.vocabularies, n, rng)):
        yield {tower.id_field: known[i] if i < len(known) else f"{prefix}{i}", **row}


def synthetic_users(
    manifest: ModelManifest, n: int, seed: int = 0, prefix: str = "synu-", max_history: int = 50
) -> Iterator[dict[str, Any]]:
    """`n` user rows {id, every user feature, history}, lazily.

    The first rows reuse the model's known user ids; the rest get `<prefix><i>`. Histories (the
    `from_interactions` fields; oldest first, no repeats) are drawn from the model's known item
    ids, which `synthetic_items` puts at the head of every catalog, so excluding the history
    removes real rows from a recall.
    """
    schema = manifest.features
    tower = schema.user
    known_users = _known_ids(manifest, tower)
    items = _known_ids(manifest, schema.item) or ["1"]
    history_keys = schema.layout.history
    rng = random.Random(seed)
    # Popular items are drawn more often, as in real logs: a Zipf-like weight on a shuffled order.
    order = items[:]
    rng.shuffle(order)
    weights = [1.0 / (r + 10) for r in range(len(order))]
    features = _rows(tower, schema.vocabularies, n, random.Random(seed + 1), skip=history_keys)
    for i, row in enumerate(features):
        length = min(rng.randint(0, max_history), len(order))
        history = list(dict.fromkeys(rng.choices(order, weights=weights, k=length)))
        out: dict[str, Any] = {tower.id_field: known_users[i] if i < len(known_users) else f"{prefix}{i}"}
        out.update(row)
        for key in history_keys:
            out[key] = history
        yield out


def _known_ids(manifest: ModelManifest, tower: TowerSchema) -> list[str]:
    """The vocabulary of the tower's id field, if it has one (an imported tower may not)."""
    for f in tower.fields:
        if f.source == tower.id_field and f.vocab is not None:
            return list(manifest.features.vocabularies.get(f.vocab, ()))
    return []


def write_items(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write catalog rows as JSON lines (atomically: a temporary sibling renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        for row in rows:
            f.write(dumps(row))
            f.write("\n")
            count += 1
    os.replace(tmp, path)
    return count


def write_users(
    out: Path,
    rows: Iterable[Mapping[str, Any]],
    start_ts: int = 880_000_000,
    layout: DataLayout | None = None,
) -> int:
    """users.jsonl (features without history) and interactions.csv (the history, one row per event),
    named and with columns as `layout` says (default: the project's own)."""
    layout = layout or DataLayout()
    history = set(layout.history)
    key = layout.history[0] if layout.history else "history"
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with (
        open(out / f"{layout.users}.jsonl", "w", encoding="utf-8") as fu,
        open(out / f"{layout.interactions}.csv", "w", encoding="utf-8", newline="") as fi,
    ):
        w = csv.writer(fi, lineterminator="\n")
        w.writerow((layout.inter_user, layout.inter_item, "rating", layout.timestamp or "timestamp"))
        for row in rows:
            features = {k: v for k, v in row.items() if k not in history}
            fu.write(dumps(features))
            fu.write("\n")
            uid = row[layout.user_id]
            for t, item in enumerate(row.get(key) or ()):
                w.writerow((uid, item, 4, start_ts + count * 100 + t))
            count += 1
    return count


def write_data_dir(
    out: Path, manifest: ModelManifest, n_items: int, n_users: int, seed: int = 0
) -> dict[str, int]:
    """A complete data directory: `n_items` synthetic items and `n_users` synthetic users."""
    out.mkdir(parents=True, exist_ok=True)
    layout = manifest.features.layout
    items = write_items(out / f"{layout.items}.jsonl", synthetic_items(manifest, n_items, seed))
    users = write_users(out, synthetic_users(manifest, n_users, seed), layout=layout)
    return {"items": items, "users": users}
