"""Aliases durable beyond Redis and never rewritten silently (issue 11, cases 4 and 9), against a
real redis-server and real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from app.state import LocalStore, RedisStore
from models.errors import StoreUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_redis_flushed_restores_from_the_mirror(redis_url: str, tmp_path: Path) -> None:
    record = tmp_path / "index" / "aliases.json"
    store = RedisStore(redis_url, 1.0, alias_file=record)
    rc = redis.Redis.from_url(redis_url)
    try:
        assert await store.init_alias("default", "v2") == "v2"  # first boot: no record anywhere
        await store.set_alias("default", "v1")
        await store.set_alias("canary", "v2")
        assert json.loads(record.read_text()) == {"default": "v1", "canary": "v2"}
        rc.flushall()  # Redis restarted empty
        assert await store.aliases() == {"default": "v1", "canary": "v2"}
        rc.flushall()
        assert await store.init_alias("default", "v9") == "v1"  # the record wins over "the newest"
        assert rc.hget("tt:aliases", "default") == b"v1"
        rc.hdel("tt:aliases", "default")  # lost from Redis alone (another alias still there)
        assert await store.init_alias("default", "v9") == "v1"
        assert rc.hgetall("tt:aliases") == {b"default": b"v1", b"canary": b"v2"}
    finally:
        rc.close()
        await store.close()


async def test_first_boot_records_default_in_the_mirror(redis_url: str, tmp_path: Path) -> None:
    record = tmp_path / "aliases.json"
    store = RedisStore(redis_url, 1.0, alias_file=record)
    try:
        assert await store.init_alias("default", "v2") == "v2"
        assert json.loads(record.read_text()) == {"default": "v2"}
        assert await store.init_alias("default", "v3") == "v2"
    finally:
        await store.close()


async def test_local_write_failure_changes_nothing(tmp_path: Path) -> None:
    """The record cannot be written (its directory is a file here): 503-class error, nothing live."""
    record = tmp_path / "index" / "aliases.json"
    store = LocalStore(None, record).load()
    await store.set_alias("default", "v1")
    shutil.rmtree(record.parent)
    record.parent.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="nothing changed"):
        await store.set_alias("canary", "v1")
    assert await store.aliases() == {"default": "v1"}
