"""The catalog change log: upserts and deletes between rebuilds, each with a sequence number.

A change is `{"seq": n, "op": "upsert" | "delete", "item_id": ..., "features": {...}}` (no
`features` on a delete). Sequence numbers increase by one per change and are never reused; one
call's changes are appended in one atomic step (all or nothing). Two logs:

- `RedisChangeLog` (several replicas): a sorted set `<prefix>changes` scored by sequence number,
  the counter in `<prefix>changes:seq`, both written by one Lua script.
- `FileChangeLog` (one node): JSON lines in `changes.jsonl` beside the index store, appended under
  a file lock and fsynced before the call returns, so a restart replays it.

Every replica reads the log from its last sequence number (app/delta.py); a build reads it up to
its start and records that sequence number in its manifest (app/reindex/build.py).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from app.state.base import text
from app.state.keys import Keys
from index_store.locking import file_lock
from models.errors import StoreUnavailable

CHANGES_FILE = "changes.jsonl"
Change = dict[str, Any]

# KEYS: the sorted set, the counter. ARGV: one JSON object (a change without seq) each. Returns the
# first seq. The seq is spliced in as text: a cjson round trip would turn [] into {} and round floats.
_APPEND = """
local first = redis.call('INCRBY', KEYS[2], #ARGV) - #ARGV + 1
for i, raw in ipairs(ARGV) do
  local seq = first + i - 1
  redis.call('ZADD', KEYS[1], seq, '{"seq": ' .. seq .. ', ' .. string.sub(raw, 2))
end
return first
"""


def _stamped(changes: list[Change], first: int) -> list[Change]:
    return [{**c, "seq": first + i} for i, c in enumerate(changes)]


class FileChangeLog:
    """One node (any number of processes on it): JSON lines, one change a line, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._mutex = threading.Lock()  # flock is per open file: one holder per process at a time
        # Where the complete lines read so far end, and the last seq among them: a poll reads on
        # from there instead of the whole file (the file only ever grows).
        self._tail = (0, 0)

    def append(self, changes: list[Change]) -> list[Change]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._mutex, file_lock(self.lock_path):
            done = self.read_since(self._tail[1])
            first = (done[-1]["seq"] if done else self._tail[1]) + 1
            stamped = _stamped(changes, first)
            data = "".join(json.dumps(c, sort_keys=True) + "\n" for c in stamped).encode()
            with open(self.path, "ab") as f:
                if f.tell() > 0 and not self._ends_with_newline():
                    data = b"\n" + data  # after a line torn by a crash: never glue onto it
                f.write(data)  # one write of all lines: a crash tears at most the last line
                f.flush()
                os.fsync(f.fileno())
        return stamped

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def read_since(self, seq: int) -> list[Change]:
        offset, last = self._tail
        start = offset if seq >= last else 0
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        out = []
        for line in data[:end].splitlines():
            try:
                change = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-append: it was never acknowledged
            if isinstance(change, dict) and isinstance(change.get("seq"), int):
                last = max(last, change["seq"]) if start == offset else last
                if change["seq"] > seq:
                    out.append(change)
        if start == offset and start + end > offset:
            self._tail = (start + end, last)
        return out


class RedisChangeLog:
    """Several replicas: the log in Redis (async for the API, sync for a build child)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, call: Callable[..., Awaitable[Any]]) -> None:
        self.client = client
        self.keys = keys
        self._call = call

    async def append(self, changes: list[Change]) -> list[Change]:
        k = self.keys
        raws = [json.dumps(c) for c in changes]
        first = await self._call(
            "changes", lambda: self.client.eval(_APPEND, 2, k.changes, k.changes_seq, *raws)
        )
        return _stamped(changes, int(first))

    async def read_since(self, seq: int) -> list[Change]:
        raw = await self._call(
            "changes", lambda: self.client.zrangebyscore(self.keys.changes, f"({seq}", "+inf")
        )
        return [json.loads(str(text(r))) for r in raw]


def read_changes_sync(url: str, prefix: str, timeout_s: float) -> list[Change]:
    """Every change in the Redis log (a build child's read)."""
    client = redis.Redis.from_url(url, socket_timeout=max(timeout_s, 5.0))
    try:
        raw = client.zrangebyscore(Keys(prefix).changes, "-inf", "+inf")
    except (redis.RedisError, OSError) as exc:
        raise StoreUnavailable(f"change log unreadable: {exc}") from exc
    finally:
        client.close()
    return [json.loads(str(text(r))) for r in raw]


def fold(
    rows: Iterable[Mapping[str, Any]], changes: list[Change], id_field: str
) -> Iterator[Mapping[str, Any]]:
    """The catalog as a build sees it: `rows` with every change applied (the newest per id wins;
    a deleted item is left out, an upserted one replaces the row of its id or is added at the end)."""
    latest: dict[str, Change] = {}
    for c in changes:
        old = latest.get(c["item_id"])
        if old is None or int(old["seq"]) < int(c["seq"]):
            latest[c["item_id"]] = c
    for row in rows:
        if str(row.get(id_field)) not in latest:
            yield row
    for c in sorted(latest.values(), key=lambda c: int(c["seq"])):
        if c["op"] == "upsert":
            yield {**(c.get("features") or {}), id_field: c["item_id"]}
