"""Fixtures for models/: a tiny MovieLens-shaped dataset and one tiny trained version of it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from models.ml100k import Rating, write_dataset

MOVIELENS = Path(__file__).resolve().parents[2] / "examples" / "movielens" / "schema.toml"

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
WORDS = ["night", "star", "love", "dead", "city", "river", "king", "ghost", "summer", "war"]


def make_dataset(out: Path, n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Path:
    """Users who prefer one genre, items with 1-2 genres: enough signal for a tiny model to learn."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for i in range(1, n_items + 1):
        genres = sorted(set(rng.sample(GENRES, rng.randint(1, 2))))
        year = rng.choice([None, 1975, 1990, 1995, 1997])
        title = " ".join(rng.sample(WORDS, 2)).title() + (f" ({year})" if year else "")
        items.append({"item_id": str(i), "title": title, "genres": genres, "release_year": year})
    users: list[dict[str, Any]] = []
    inter: list[Rating] = []
    for u in range(1, n_users + 1):
        users.append(
            {
                "user_id": str(u),
                "age": rng.randint(15, 70),
                "gender": rng.choice("MF"),
                "occupation": rng.choice(["student", "writer", "engineer"]),
                "zip": f"{rng.randint(10000, 99999)}",
            }
        )
        liked = GENRES[u % len(GENRES)]
        pool = [it["item_id"] for it in items if liked in it["genres"]] or [it["item_id"] for it in items]
        picks = rng.sample(pool, min(per_user, len(pool)))
        picks += rng.sample([it["item_id"] for it in items if it["item_id"] not in picks], 3)
        for k, iid in enumerate(picks):
            inter.append(Rating(str(u), iid, float(rng.randint(1, 5)), 880_000_000 + u * 1000 + k * 10))
    out.mkdir(parents=True, exist_ok=True)
    write_dataset(out, users, items, inter)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> tuple[Path, str]:
    """One tiny training run, exported (ONNX + manifest) into a temporary model store."""
    pytest.importorskip("torch")
    from models.training.train import TrainConfig, train_and_export

    store = tmp_path_factory.mktemp("store")
    config = TrainConfig(epochs=2, batch_size=64, dim=16, field_dim=8, hidden=(32,), patience=1)
    path = train_and_export(MOVIELENS, tiny_data, store, "tiny-1", config)
    return store, path.name
