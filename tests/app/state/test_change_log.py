"""The catalog change log in Redis (real redis-server) and in a JSON-lines file: sequence numbers
increase by one per change across calls, values come back exactly as written, and `fold` gives the
catalog a build sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.state import LocalStore, RedisStore
from app.state.base import FeatureStore
from app.state.changes import fold, read_changes_sync

pytestmark = pytest.mark.anyio
# An empty list and a float that a Lua cjson round trip would have turned into {} and 0.1000000000000
ODD: dict[str, Any] = {"genres": [], "score": 0.1 + 0.2, "title": 'caf\u00e9 "quoted" {braces}'}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _exercise(store: FeatureStore) -> list[dict[str, Any]]:
    first = await store.append_changes([{"op": "upsert", "item_id": "a", "features": ODD}])
    more = await store.append_changes(
        [{"op": "upsert", "item_id": "b", "features": {}}, {"op": "delete", "item_id": "a"}]
    )
    assert [c["seq"] for c in first + more] == [1, 2, 3]
    everything = await store.changes_since(0)
    assert everything == first + more
    assert everything[0]["features"] == ODD
    assert await store.changes_since(2) == more[1:]
    assert await store.changes_since(3) == []
    return everything


async def test_redis_change_log(redis_url: str) -> None:
    store = RedisStore(redis_url, 1.0)
    try:
        everything = await _exercise(store)
    finally:
        await store.close()
    assert read_changes_sync(redis_url, "tt:", 1.0) == everything


async def test_file_change_log(tmp_path: Path) -> None:
    store = LocalStore(None, tmp_path / "index" / "aliases.json")
    await _exercise(store)
    # a torn last line (a crash mid-append) is ignored, and the next append goes on after it
    with open(tmp_path / "index" / "changes.jsonl", "ab") as f:
        f.write(b'{"seq": 4, "op": "upse')
    assert len(await store.changes_since(0)) == 3
    after = await store.append_changes([{"op": "delete", "item_id": "b"}])
    assert [c["seq"] for c in after] == [4]
    assert [c["seq"] for c in await store.changes_since(0)] == [1, 2, 3, 4]
    assert await store.changes_since(3) == after
    again = LocalStore(None, tmp_path / "index" / "aliases.json")  # a restart reads the same log
    assert [c["seq"] for c in await again.changes_since(0)] == [1, 2, 3, 4]


def test_fold() -> None:
    rows = [{"item_id": "a", "x": 1}, {"item_id": "b", "x": 2}, {"item_id": "c", "x": 3}]
    changes = [
        {"seq": 1, "op": "upsert", "item_id": "new", "features": {"x": 9}},
        {"seq": 3, "op": "delete", "item_id": "a"},
        {"seq": 2, "op": "upsert", "item_id": "a", "features": {"x": 7}},  # older than the delete
        {"seq": 4, "op": "upsert", "item_id": "b", "features": {"x": 8}},
        {"seq": 5, "op": "delete", "item_id": "never-there"},
    ]
    assert list(fold(rows, changes, "item_id")) == [
        {"item_id": "c", "x": 3},
        {"x": 9, "item_id": "new"},
        {"x": 8, "item_id": "b"},
    ]
