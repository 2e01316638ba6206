"""A synthetic item catalog in the project's format, drawn from a model manifest's vocabularies."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from models.manifest import ModelManifest

_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "den", "mar", "ost", "el", "an", "qu", "bri")


def synthetic_items(
    manifest: ModelManifest, n: int, seed: int = 0, prefix: str = "syn-"
) -> Iterator[dict[str, Any]]:
    """`n` rows {"item_id", "title", "genres", "release_year"}, lazily, so 1M rows never sit in memory.

    The first rows reuse the model's known item ids (their id embedding is trained); the rest get
    fresh ids `<prefix><i>`, out-of-vocabulary for the tower. Titles and genre sets come from
    pre-drawn pools so that generating is cheap next to encoding.
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
