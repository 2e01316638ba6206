"""The data files and the feature store as catalog sources: users with their history, items.

Readers of the project's data format (users.jsonl, items.jsonl, interactions.csv), and the seeded
user sample a build checks its recall on.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from app.settings import Settings
from models.data import iter_jsonl
from models.errors import DataError


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file of the project's data format (errors name file and line)."""
    return (row for _, row in iter_jsonl(path))


def read_users(data_dir: Path) -> dict[str, dict[str, Any]]:
    """users.jsonl + interactions.csv -> {user_id: features with `history` in time order}."""
    users: dict[str, dict[str, Any]] = {}
    for row in read_jsonl(data_dir / "users.jsonl"):
        uid = str(row.pop("user_id"))
        row["history"] = []
        users[uid] = row
    path = data_dir / "interactions.csv"
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: not found") from exc
    events: list[tuple[float, str, str]] = []
    with f:
        for n, rec in enumerate(csv.DictReader(f), 2):
            try:
                events.append((float(rec["timestamp"]), rec["user_id"], rec["item_id"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}:{n}: bad row ({exc})") from exc
    events.sort()
    for _, uid, iid in events:
        users.setdefault(uid, {"history": []})["history"].append(iid)
    return users


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
    elif settings.data_dir is not None and (Path(settings.data_dir) / "users.jsonl").exists():
        rows = [{**f, "user_id": uid} for uid, f in read_users(Path(settings.data_dir)).items()]
    rows.sort(key=lambda r: str(r["user_id"]))
    random.Random(0).shuffle(rows)
    return rows[:limit]


def iter_catalog_file(data_dir: Path) -> Iterator[dict[str, Any]]:
    for row in read_jsonl(data_dir / "items.jsonl"):
        row["item_id"] = str(row["item_id"])
        yield row
