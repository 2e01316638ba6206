"""A small dataset in the project's format, drawn from a model's vocabularies (for tests)."""

from __future__ import annotations

import random
from pathlib import Path

from bench.catalog import ITEMS, synthetic_items, synthetic_users, write_items, write_users
from models.manifest import ModelManifest


def write_dataset(out: Path, manifest: ModelManifest, n_users: int, n_items: int, seed: int = 0) -> None:
    """users.jsonl, items.jsonl, interactions.csv: bench's generators, with every user's history
    (8 items) drawn from this catalog, so that excluding or keeping it shows in a recall."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    items = list(synthetic_items(manifest, n_items, seed=seed))
    write_items(out / ITEMS, items)
    users = [
        {**u, "history": [it["item_id"] for it in rng.sample(items, 8)]}
        for u in synthetic_users(manifest, n_users, seed=seed)
    ]
    write_users(out, users)
