"""The catalog change log: upserts and deletes between rebuilds, each with a sequence number.

A change is `{"seq": n, "op": "upsert" | "delete", "item_id": ..., "features": {...}}` (no
`features` on a delete). Sequence numbers increase by one per change and are never reused; one
call's changes are appended in one atomic step (all or nothing). Two logs:

- `RedisChangeLog` (several replicas): a sorted set `<prefix>changes` scored by sequence number,
  the counter in `<prefix>changes:seq` and each id's newest seq in `<prefix>changes:ids`, all
  written by one Lua script.
- `FileChangeLog` (one node): JSON lines in `changes.jsonl` beside the index store, appended under
  a file lock and fsynced before the call returns, so a restart replays it.

Every replica reads the log from its last sequence number (app/delta.py); a build reads it up to
its start and records that sequence number in its manifest (app/reindex/build.py).

Compaction: the log keeps the newest change of each item id and nothing else. Every reader only
ever uses the newest change of an id (a replica's delta, a build's fold), whatever sequence number
it reads from, so dropping the older ones never changes what anyone sees: no reader, build or
replica, needs to be waited for. The newest change itself stays, even once every build holds it:
a build re-reads the catalog of record (the data files, or `twotower load`'s catalog in Redis),
which the service never writes, so the log is the only record of an upsert or a delete. The log
is thus bounded by the number of distinct ids changed, not by the number of changes. Redis drops
an id's older entry in the same script that appends the new one; the file is rewritten (under
the append lock, atomically) whenever it has doubled since its last compaction and is past
`compact_bytes`.
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

COMPACT_BYTES = 1 << 20  # a file log smaller than this is never rewritten
# KEYS: the sorted set, the counter, the hash id -> newest seq. ARGV: item id, JSON object (a change
# without seq), in pairs. Returns the first seq. An id's older entry goes in the same step (the
# compaction). The seq is spliced in as text: a cjson round trip would turn [] into {} and round floats.
_APPEND = """
local n = #ARGV / 2
local first = redis.call('INCRBY', KEYS[2], n) - n + 1
for i = 1, n do
  local id, raw = ARGV[2 * i - 1], ARGV[2 * i]
  local seq = first + i - 1
  local old = redis.call('HGET', KEYS[3], id)
  if old then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], old, old)
  end
  redis.call('HSET', KEYS[3], id, seq)
  redis.call('ZADD', KEYS[1], seq, '{"seq": ' .. seq .. ', ' .. string.sub(raw, 2))
end
return first
"""
_HEADER = "compacted"  # the first line of a compacted file: {"compacted": {"bytes": n, "seq": last}}


def _stamped(changes: list[Change], first: int) -> list[Change]:
    return [{**c, "seq": first + i} for i, c in enumerate(changes)]


def newest(changes: Iterable[Change]) -> list[Change]:
    """The newest change of each item id, in sequence order (what the log keeps; what a reader uses)."""
    latest: dict[str, Change] = {}
    for c in changes:
        old = latest.get(c["item_id"])
        if old is None or int(old["seq"]) < int(c["seq"]):
            latest[c["item_id"]] = c
    return sorted(latest.values(), key=lambda c: int(c["seq"]))


class FileChangeLog:
    """One node (any number of processes on it): JSON lines, one change a line, fsynced."""

    def __init__(self, path: Path, compact_bytes: int = COMPACT_BYTES) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.compact_bytes = compact_bytes
        self._mutex = threading.Lock()  # flock is per open file: one holder per process at a time
        # Where the complete lines read so far end, the last seq among them, and which file they
        # were read from: a poll reads on from there instead of the whole file. A file grows only
        # by appends; a compaction replaces it, and the next read starts over. A file is known by
        # its inode and its first line: an inode number is reused once freed (two compactions
        # later), a first line never (a compacted file's header holds its last seq).
        self._tail: tuple[int, int, tuple[int, bytes]] = (0, 0, (-1, b""))
        self._tail_lock = threading.Lock()  # a poll reads while an append of this process reads

    def append(self, changes: list[Change]) -> list[Change]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._mutex, file_lock(self.lock_path):
            # The last seq from this very read: the tail may move under a concurrent poll's read.
            first = self._read(self._tail[1])[1] + 1
            stamped = _stamped(changes, first)
            data = "".join(json.dumps(c, sort_keys=True) + "\n" for c in stamped).encode()
            with open(self.path, "ab") as f:
                if f.tell() > 0 and not self._ends_with_newline():
                    data = b"\n" + data  # after a line torn by a crash: never glue onto it
                f.write(data)  # one write of all lines: a crash tears at most the last line
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            if size > self.compact_bytes and size > 2 * self._compacted_bytes():
                self._compact()
        return stamped

    def _compacted_bytes(self) -> int:
        """The file's size right after its last compaction (0: never compacted)."""
        with open(self.path, "rb") as f:
            first = f.readline()
        try:
            head = json.loads(first)
            return int(head[_HEADER]["bytes"])
        except (ValueError, KeyError, TypeError):
            return 0

    def compact(self) -> None:
        """Rewrite the file with the newest change of each id only (any process; under the lock)."""
        with self._mutex, file_lock(self.lock_path):
            self._compact()

    def _compact(self) -> None:
        """Under the lock. A crash leaves the old file or the new one, both complete: the new one is
        written beside it, fsynced and renamed over it."""
        everything, last = self._read(0)
        kept = newest(everything)
        body = "".join(json.dumps(c, sort_keys=True) + "\n" for c in kept).encode()
        tmp = self.path.with_name(f".{self.path.name}.compact")
        header = b""
        for _ in range(3):  # the header holds the file's own size: settle its digits
            header = (json.dumps({_HEADER: {"bytes": len(header) + len(body), "seq": last}}) + "\n").encode()
        with open(tmp, "wb") as f:
            f.write(header + body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def read_since(self, seq: int) -> list[Change]:
        return self._read(seq)[0]

    def _read(self, seq: int) -> tuple[list[Change], int]:
        """The changes after `seq`, and the last seq in the file (as far as its complete lines go)."""
        with self._tail_lock:
            offset, last, known = self._tail
        try:
            with open(self.path, "rb") as f:
                ident = (os.fstat(f.fileno()).st_ino, f.readline())
                if ident != known:  # first read, or the file was compacted since: start over
                    offset, last = 0, 0
                start = offset if seq >= last else 0
                if start == 0:
                    last = 0  # counted again from the lines
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
        out = []
        for line in data[:end].splitlines():
            try:
                change = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-append: it was never acknowledged
            if not isinstance(change, dict):
                continue
            if isinstance(change.get(_HEADER), dict):  # a compacted file: the last seq it held
                last = max(last, int(change[_HEADER].get("seq", 0)))
            elif isinstance(change.get("seq"), int):
                last = max(last, change["seq"])
                if change["seq"] > seq:
                    out.append(change)
        with self._tail_lock:  # only ever forward: a slower concurrent read must not move it back
            cur_offset, _, cur_ident = self._tail
            if cur_ident != ident or start + end > cur_offset:
                self._tail = (start + end, last, ident)
        return out, last


class RedisChangeLog:
    """Several replicas: the log in Redis (async for the API, sync for a build child)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, call: Callable[..., Awaitable[Any]]) -> None:
        self.client = client
        self.keys = keys
        self._call = call

    async def append(self, changes: list[Change]) -> list[Change]:
        k = self.keys
        args = [x for c in changes for x in (str(c["item_id"]), json.dumps(c))]
        first = await self._call(
            "changes", lambda: self.client.eval(_APPEND, 3, k.changes, k.changes_seq, k.changes_ids, *args)
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
    kept = newest(changes)
    latest = {c["item_id"] for c in kept}
    for row in rows:
        if str(row.get(id_field)) not in latest:
            yield row
    for c in kept:
        if c["op"] == "upsert":
            yield {**(c.get("features") or {}), id_field: c["item_id"]}
