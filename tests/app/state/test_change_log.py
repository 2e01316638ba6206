"""The catalog change log in Redis (real redis-server) and in a JSON-lines file: sequence numbers
increase by one per change across calls, values come back exactly as written, `fold` gives the
catalog a build sees, and compaction keeps the newest change per id only (bounded by the ids, not
the changes), losing nothing when it races appends from other processes, a polling replica and a
build's read."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from app.state import LocalStore, RedisStore
from app.state.base import FeatureStore
from app.state.changes import FileChangeLog, fold, read_changes_sync

pytestmark = pytest.mark.anyio
# An empty list and a float that a Lua cjson round trip would have turned into {} and 0.1000000000000
ODD: dict[str, Any] = {"genres": [], "score": 0.1 + 0.2, "title": 'caf\u00e9 "quoted" {braces}'}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _exercise(store: FeatureStore) -> list[dict[str, Any]]:
    first = await store.append_changes([{"op": "upsert", "item_id": "a", "features": ODD}])
    more = await store.append_changes(
        [{"op": "upsert", "item_id": "b", "features": {}}, {"op": "delete", "item_id": "c"}]
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


# --- compaction --------------------------------------------------------------------------------

IDS = [f"i{n}" for n in range(40)]


def _batches(rounds: int, seed: int) -> list[list[dict[str, Any]]]:
    """Upserts and deletes over a few ids, many times each (a batch may change one id twice)."""
    rng = random.Random(seed)
    out = []
    for r in range(rounds):
        batch = []
        for _ in range(rng.randint(1, 30)):
            item = rng.choice(IDS)
            if rng.random() < 0.2:
                batch.append({"op": "delete", "item_id": item})
            else:
                feats = {"round": r, "seed": seed, "pad": "x" * rng.randint(0, 200), "genres": []}
                batch.append({"op": "upsert", "item_id": item, "features": feats})
        out.append(batch)
    return out


def _newest_per_id(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for c in sorted(history, key=lambda c: c["seq"]):
        latest[c["item_id"]] = c
    return sorted(latest.values(), key=lambda c: c["seq"])


ROWS = [{"item_id": i, "base": True} for i in IDS[::2]] + [{"item_id": "untouched", "base": True}]


def _check_log(log: list[dict[str, Any]], history: list[dict[str, Any]], exact: bool = True) -> None:
    """`log` (a full read) holds the newest change of each id (only those if `exact`: Redis compacts
    at every append, a file when it has doubled); any cursor reads what a replica needs."""
    want = _newest_per_id(history)
    assert (log if exact else _newest_per_id(log)) == want
    assert [c["seq"] for c in log] == sorted(c["seq"] for c in log)
    assert log[-1] == max(history, key=lambda c: c["seq"])  # the newest change is never dropped
    assert list(fold(ROWS, log, "item_id")) == list(fold(ROWS, history, "item_id"))
    for cursor in (0, 1, len(history) // 2, len(history) - 1, len(history)):
        since = _newest_per_id([c for c in log if c["seq"] > cursor])
        assert since == [c for c in want if c["seq"] > cursor]


async def test_redis_log_keeps_the_newest_change_per_id(redis_url: str) -> None:
    store = RedisStore(redis_url, 1.0)
    history: list[dict[str, Any]] = []
    try:
        for batch in _batches(150, seed=1):
            history += await store.append_changes(batch)
        assert [c["seq"] for c in history] == list(range(1, len(history) + 1))  # never reused
        log = await store.changes_since(0)
        _check_log(log, history)
        for cursor in (0, 7, len(history) // 2, len(history)):
            assert await store.changes_since(cursor) == [c for c in log if c["seq"] > cursor]
    finally:
        await store.close()
    assert read_changes_sync(redis_url, "tt:", 1.0) == log  # the build child's read
    client = redis.Redis.from_url(redis_url)
    assert client.zcard("tt:changes") == client.hlen("tt:changes:ids") == len(IDS)  # bounded by ids
    client.close()


def test_file_log_compacts_when_it_doubles(tmp_path: Path) -> None:
    path = tmp_path / "changes.jsonl"
    log = FileChangeLog(path, compact_bytes=8192)
    reader = FileChangeLog(path)  # another process's view: reads on from its own tail
    history: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    cursor = 0
    sizes = []
    for batch in _batches(300, seed=2):
        history += log.append(batch)
        sizes.append(path.stat().st_size)
        for c in reader.read_since(cursor):  # a replica's poll across compactions
            seen[c["item_id"]] = max(seen.get(c["item_id"], c), c, key=lambda x: x["seq"])
            cursor = max(cursor, c["seq"])
    assert [c["seq"] for c in history] == list(range(1, len(history) + 1))
    assert sum(len(b) for b in _batches(300, seed=2)) * 100 > 8 * 8192  # enough to compact often
    assert min(sizes[len(sizes) // 2 :]) < max(sizes)  # it was rewritten, more than once ...
    assert max(sizes) < 4 * 8192 + 40 * 400  # ... and never grew past twice its compacted size
    _check_log(log.read_since(0), history, exact=False)
    assert sorted(seen.values(), key=lambda c: c["seq"]) == _newest_per_id(history)
    again = FileChangeLog(path)  # a restart: the same log, and sequence numbers go on
    _check_log(again.read_since(0), history, exact=False)
    log.compact()  # by hand too: exactly the newest change per id
    _check_log(again.read_since(0), history)
    assert again.append([{"op": "delete", "item_id": "i0"}])[0]["seq"] == len(history) + 1
    assert not list(tmp_path.glob(".*compact*"))


def _appender(path: str, seed: int, out: str) -> None:
    log = FileChangeLog(Path(path), compact_bytes=4096)
    stamped = []
    for batch in _batches(120, seed):
        stamped += log.append(batch)
    Path(out).write_text(json.dumps(stamped))


def test_file_compaction_races_appends_a_poll_and_a_build(tmp_path: Path) -> None:
    """Three processes append (each compacting when its turn comes), while this one polls like a
    replica and reads the whole log like a build: no acknowledged change is lost, and every build
    read is the newest state of each id as of its last sequence number."""
    path = tmp_path / "changes.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_appender, args=(str(path), seed, str(tmp_path / f"out{seed}.json")))
        for seed in (10, 11, 12)
    ]
    for p in procs:
        p.start()
    # The poller also appends from a thread, as a serving process does (its poll and its PUTs share
    # one log object): a poll's read must not move the tail an append counts from.
    poller, builder = FileChangeLog(path, compact_bytes=4096), FileChangeLog(path)
    mine: list[dict[str, Any]] = []
    local = threading.Thread(target=lambda: [mine.extend(poller.append(b)) for b in _batches(120, 13)])
    local.start()
    seen: dict[str, dict[str, Any]] = {}
    cursor = 0
    builds = []
    while any(p.is_alive() for p in procs) or local.is_alive():
        for c in poller.read_since(cursor):
            if c["item_id"] not in seen or seen[c["item_id"]]["seq"] < c["seq"]:
                seen[c["item_id"]] = c
            cursor = max(cursor, c["seq"])
        builds.append(builder.read_since(0))
        time.sleep(0.002)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    local.join()
    history = [c for seed in (10, 11, 12) for c in json.loads((tmp_path / f"out{seed}.json").read_text())]
    history += mine
    assert sorted(c["seq"] for c in history) == list(range(1, len(history) + 1))  # one seq each
    for c in poller.read_since(cursor):
        if c["item_id"] not in seen or seen[c["item_id"]]["seq"] < c["seq"]:
            seen[c["item_id"]] = c
    assert sorted(seen.values(), key=lambda c: c["seq"]) == _newest_per_id(history)
    _check_log(FileChangeLog(path).read_since(0), history, exact=False)
    assert len(builds) > 10
    for read in builds:  # a build folds exactly the changes up to the last one it read
        if read:
            last = max(c["seq"] for c in read)
            assert _newest_per_id(read) == _newest_per_id([c for c in history if c["seq"] <= last])


async def test_redis_compaction_races_appends_and_reads(redis_url: str) -> None:
    """Two replicas' stores append at once while a third polls and a build reads the whole log."""
    stores = [RedisStore(redis_url, 2.0) for _ in range(3)]
    history: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    builds = []
    done = 0

    async def append(store: RedisStore, seed: int) -> None:
        nonlocal done
        for batch in _batches(120, seed):
            history.extend(await store.append_changes(batch))
        done += 1

    async def poll() -> None:
        cursor = 0
        while True:
            for c in await stores[2].changes_since(cursor):
                if c["item_id"] not in seen or seen[c["item_id"]]["seq"] < c["seq"]:
                    seen[c["item_id"]] = c
                cursor = max(cursor, c["seq"])
            builds.append(await anyio.to_thread.run_sync(read_changes_sync, redis_url, "tt:", 2.0))
            if done == 2:
                return
            await anyio.sleep(0.001)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(append, stores[0], 20)
            tg.start_soon(append, stores[1], 21)
            tg.start_soon(poll)
        await poll()  # once more after the last append
    finally:
        for s in stores:
            await s.close()
    assert sorted(c["seq"] for c in history) == list(range(1, len(history) + 1))
    assert sorted(seen.values(), key=lambda c: c["seq"]) == _newest_per_id(history)
    _check_log(read_changes_sync(redis_url, "tt:", 1.0), history)
    for read in builds:
        if read:
            last = max(c["seq"] for c in read)
            assert _newest_per_id(read) == _newest_per_id([c for c in history if c["seq"] <= last])
