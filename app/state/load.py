"""`twotower load`: users (with history) and the catalog from the data files into Redis."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from app.catalog import iter_catalog_file, read_users
from app.state.keys import Keys


def load_into_redis(url: str, data_dir: Path, prefix: str = "tt:", batch: int = 5000) -> tuple[int, int]:
    """Users (with history) and the catalog into Redis. Returns (users, items)."""
    keys = Keys(prefix)
    client = redis.Redis.from_url(url, socket_timeout=10)
    users = read_users(data_dir)
    pipe = client.pipeline(transaction=False)
    for n, (uid, feats) in enumerate(users.items(), 1):
        pipe.set(keys.user(uid), json.dumps(feats))
        if n % batch == 0:
            pipe.execute()
    pipe.execute()
    items = 0
    for row in iter_catalog_file(data_dir):
        pipe.hset(keys.items, row["item_id"], json.dumps(row))
        items += 1
        if items % batch == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return len(users), items
