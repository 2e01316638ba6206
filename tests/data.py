"""A small dataset in the project's format, drawn from a model's vocabularies (for tests)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from bench.catalog import synthetic_items
from models.manifest import ModelManifest


def write_dataset(out: Path, manifest: ModelManifest, n_users: int, n_items: int, seed: int = 0) -> None:
    """users.jsonl, items.jsonl, interactions.csv, drawn from the model's vocabularies."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    vocabs = manifest.features.vocabularies
    items = list(synthetic_items(manifest, n_items, seed=seed))
    with open(out / "items.jsonl", "w") as f:
        for row in items:
            f.write(json.dumps(row) + "\n")
    user_ids = list(vocabs["user_id"])[:n_users]
    with open(out / "users.jsonl", "w") as f:
        for uid in user_ids:
            row = {
                "user_id": uid,
                "age": rng.randint(15, 70),
                "gender": rng.choice(vocabs["gender"]),
                "occupation": rng.choice(vocabs["occupation"]),
                "zip": f"{rng.randint(10000, 99999)}",
            }
            f.write(json.dumps(row) + "\n")
    with open(out / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        t = 880_000_000
        for uid in user_ids:
            for it in rng.sample(items, 8):
                t += rng.randint(1, 1000)
                w.writerow([uid, it["item_id"], rng.randint(1, 5), t])
