"""`twotower load`: users (with history) and the catalog from the data files into Redis.

The files are read with a schema's names (tables, id columns, interactions columns, history keys):
the one given (`--schema S`, `--model-version V`), else that of the served versions
(app.catalog.data_schema, the default alias as recorded in Redis deciding a disagreement).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import redis

from app.catalog import iter_catalog_file, read_users
from app.state.base import text
from app.state.keys import Keys
from models.data import HasTowers
from models.errors import StoreUnavailable
from models.layout import DataLayout


def redis_aliases(url: str, prefix: str = "tt:") -> dict[str, str]:
    """The aliases recorded in Redis (which version `default` names decides whose names are read)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        raw = client.hgetall(Keys(prefix).aliases)
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis at {url.split('@')[-1]}: {exc}") from exc
    finally:
        client.close()
    return {str(text(k)): str(text(v)) for k, v in raw.items()}


def load_into_redis(
    url: str, data_dir: Path, prefix: str = "tt:", batch: int = 5000, schema: HasTowers | None = None
) -> tuple[int, int]:
    """Users (with history) and the catalog into Redis. Returns (users, items).

    Users are stored under their raw id with the history under the schema's history key(s); items
    in the catalog hash under their id, the row (id column included) as read. The users are read
    in full and the first item checked before anything is written (a missing table or column leaves
    Redis as it was); the catalog is streamed.
    """
    keys = Keys(prefix)
    layout = schema.layout if schema is not None else DataLayout()
    users = read_users(data_dir, schema)
    catalog = iter_catalog_file(data_dir, schema)
    first = next(catalog, None)
    items = 0
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        pipe = client.pipeline(transaction=False)
        for n, (uid, feats) in enumerate(users.items(), 1):
            pipe.set(keys.user(uid), json.dumps(feats))
            if n % batch == 0:
                pipe.execute()
        pipe.execute()
        for row in itertools.chain([first] if first is not None else [], catalog):
            pipe.hset(keys.items, row[layout.item_id], json.dumps(row))
            items += 1
            if items % batch == 0:
                pipe.execute()
        pipe.execute()
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis at {url.split('@')[-1]}: {exc} (after {items} items)") from exc
    finally:
        client.close()
    return len(users), items
