"""The data files and the feature store as catalog sources: users with their history, items.

Readers of the data tables (Parquet, CSV or JSON lines, through models/data.py), and the seeded
user sample a build checks its recall on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from app.settings import Settings
from models.data import catalog_rows, has_table, iter_jsonl, user_rows
from models.layout import DataLayout


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file (errors name file and line)."""
    return (row for _, row in iter_jsonl(path))


def read_users(data_dir: Path, layout: DataLayout | None = None) -> dict[str, dict[str, Any]]:
    """The users table and the interactions (Parquet, CSV or JSON lines; see models/data.py) ->
    {user_id: features with `history` in time order}."""
    return user_rows(data_dir, layout)


def sample_users(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """A seeded sample of real users (features and history) for the build's recall check."""
    rows: list[dict[str, Any]] = []
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=max(settings.redis_timeout_s, 5.0))
        try:
            for key in client.scan_iter(f"{settings.redis_prefix}user:*", count=1000):
                raw = client.get(key)
                if raw:
                    rows.append({**json.loads(raw), "user_id": key.decode().rsplit(":", 1)[-1]})
                if len(rows) >= 20 * limit:
                    break
        finally:
            client.close()
    elif settings.data_dir is not None and has_table(Path(settings.data_dir), DataLayout().users):
        rows = [{**f, "user_id": uid} for uid, f in read_users(Path(settings.data_dir)).items()]
    rows.sort(key=lambda r: str(r["user_id"]))
    random.Random(0).shuffle(rows)
    return rows[:limit]


def iter_catalog_file(data_dir: Path, layout: DataLayout | None = None) -> Iterator[dict[str, Any]]:
    """Stream the items table (Parquet, CSV or JSON lines), ids as strings."""
    return catalog_rows(data_dir, layout)
