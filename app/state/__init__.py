"""The service's state outside its process: feature stores, the Redis key layout, the locks.

`make_store(settings)` picks the store: Redis when `redis_url` is set (several replicas), else the
in-process one (one node).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.catalog import data_schema
from app.settings import Settings
from app.state.aliases import AliasFile
from app.state.base import FeatureStore
from app.state.local import LocalStore
from app.state.redis_store import RedisStore

__all__ = ["FeatureStore", "LocalStore", "RedisStore", "make_store"]
ALIAS_FILE = "aliases.json"  # in the index store: the record on one node, Redis's mirror with it


def make_store(settings: Settings, on_error: Callable[[str], None] | None = None) -> FeatureStore:
    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            settings.redis_timeout_s,
            settings.redis_prefix,
            on_error,
            alias_file=Path(settings.index_store) / ALIAS_FILE,
        )
    alias_file = Path(settings.index_store) / ALIAS_FILE
    schema = data_schema(settings, AliasFile(alias_file).read()) if settings.data_dir is not None else None
    return LocalStore(settings.data_dir, alias_file, schema).load()
