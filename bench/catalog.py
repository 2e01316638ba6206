"""Synthetic items and users in the project's format, drawn from a model manifest's vocabularies.

Seeded and lazy: the same (manifest, n, seed) always yields the same rows, and 1M rows never sit
in memory. `write_data_dir` writes them as a data directory the service and `twotower reindex` read
(users.jsonl, items.jsonl, interactions.csv; see app/catalog.py).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from models.manifest import ModelManifest

_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "den", "mar", "ost", "el", "an", "qu", "bri")
USERS = "users.jsonl"
ITEMS = "items.jsonl"
INTERACTIONS = "interactions.csv"


def synthetic_items(
    manifest: ModelManifest, n: int, seed: int = 0, prefix: str = "syn-"
) -> Iterator[dict[str, Any]]:
    """`n` rows {"item_id", "title", "genres", "release_year"}, lazily, so 1M rows never sit in memory.

    The first rows reuse the model's known item ids (their id embedding is trained); the rest get
    fresh ids `<prefix><i>`, out-of-vocabulary for the tower. Titles and genre sets come from
    pre-drawn pools so that generating is cheap next to encoding. Ids depend on `n` and `prefix`
    only, so two seeds give the same catalog with different features (the swap benchmark's rebuild).
    """
    rng = random.Random(seed)
    vocabs = manifest.features.vocabularies
    genres = list(vocabs.get("genre", ("Drama",)))
    known = list(vocabs.get("item_id", ()))
    words = ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) for _ in range(3000)]
    titles = [" ".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(50_000)]
    genre_sets = [rng.sample(genres, rng.randint(1, min(3, len(genres)))) for _ in range(2_000)]
    t_idx = rng.choices(range(len(titles)), k=min(n, 1 << 16))
    g_idx = rng.choices(range(len(genre_sets)), k=len(t_idx))
    years = rng.choices(range(1925, 2000), k=len(t_idx))
    m = len(t_idx)
    for i in range(n):
        j = (i * 7919) % m if i >= m else i  # cycle the draws with a stride so neighbours differ
        year = years[j]
        yield {
            "item_id": known[i] if i < len(known) else f"{prefix}{i}",
            "title": f"{titles[(t_idx[j] + i) % len(titles)]} ({year})",
            "genres": genre_sets[g_idx[j]],
            "release_year": year,
        }


def synthetic_users(
    manifest: ModelManifest, n: int, seed: int = 0, prefix: str = "synu-", max_history: int = 50
) -> Iterator[dict[str, Any]]:
    """`n` rows {"user_id", "age", "gender", "occupation", "zip", "history"}, lazily.

    The first rows reuse the model's known user ids; the rest get `<prefix><i>`. Histories (oldest
    first, no repeats) are drawn from the model's known item ids, which `synthetic_items` puts at
    the head of every catalog, so excluding the history removes real rows from a recall.
    """
    rng = random.Random(seed)
    vocabs = manifest.features.vocabularies
    known_users = list(vocabs.get("user_id", ()))
    items = list(vocabs.get("item_id", ())) or ["1"]
    genders = list(vocabs.get("gender", ("F", "M")))
    occupations = list(vocabs.get("occupation", ("other",)))
    # Popular items are drawn more often, as in real logs: a Zipf-like weight on a shuffled order.
    order = items[:]
    rng.shuffle(order)
    weights = [1.0 / (r + 10) for r in range(len(order))]
    for i in range(n):
        length = min(rng.randint(0, max_history), len(order))
        history = list(dict.fromkeys(rng.choices(order, weights=weights, k=length)))
        yield {
            "user_id": known_users[i] if i < len(known_users) else f"{prefix}{i}",
            "age": rng.randint(12, 75),
            "gender": rng.choice(genders),
            "occupation": rng.choice(occupations),
            "zip": f"{rng.randint(0, 99999):05d}",
            "history": history,
        }


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


def write_users(out: Path, rows: Iterable[Mapping[str, Any]], start_ts: int = 880_000_000) -> int:
    """users.jsonl (features without history) and interactions.csv (the history, one row per event)."""
    count = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with (
        open(out / USERS, "w", encoding="utf-8") as fu,
        open(out / INTERACTIONS, "w", encoding="utf-8", newline="") as fi,
    ):
        w = csv.writer(fi, lineterminator="\n")
        w.writerow(("user_id", "item_id", "rating", "timestamp"))
        for row in rows:
            features = {k: v for k, v in row.items() if k != "history"}
            fu.write(dumps(features))
            fu.write("\n")
            uid = row["user_id"]
            for t, item in enumerate(row.get("history") or ()):
                w.writerow((uid, item, 4, start_ts + count * 100 + t))
            count += 1
    return count


def write_data_dir(
    out: Path, manifest: ModelManifest, n_items: int, n_users: int, seed: int = 0
) -> dict[str, int]:
    """A complete data directory: `n_items` synthetic items and `n_users` synthetic users."""
    out.mkdir(parents=True, exist_ok=True)
    items = write_items(out / ITEMS, synthetic_items(manifest, n_items, seed))
    users = write_users(out, synthetic_users(manifest, n_users, seed))
    return {"items": items, "users": users}
