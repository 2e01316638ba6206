"""A small dataset in the project's format, drawn from a model's vocabularies (for tests)."""

from __future__ import annotations

import random
from pathlib import Path

from app.catalog import iter_catalog_file
from app.reindex.build import index_config
from app.settings import Settings
from bench.catalog import ITEMS, synthetic_items, synthetic_users, write_items, write_users
from index_store.store import IndexStore
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


def build_index(root: Path, model_store: Path, version: str, data_dir: Path) -> str:
    """One real build of `version` over the catalog in `data_dir`, with the service's index settings."""
    settings = Settings(model_store=model_store, index_store=root, data_dir=data_dir)
    return IndexStore(root).build(model_store, version, iter_catalog_file(data_dir), index_config(settings))
