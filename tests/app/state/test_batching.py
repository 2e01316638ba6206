"""app/state/batching.py against a real redis-server: the user reads of requests in flight together
go out as one MGET, each gets its own value, a key written meanwhile is read fresh, and a Redis
that is gone fails every waiter with StoreUnavailable (none hangs)."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from app.state.redis_store import RedisStore
from models.errors import StoreUnavailable
from tests.conftest import free_port


def commands(url: str) -> dict[str, int]:
    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_concurrent_reads_share_one_mget(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    for i in range(60):
        r.set(f"tt:user:u{i}", json.dumps({"age": i}))

    async def main() -> None:
        store = RedisStore(redis_url, timeout_s=2.0)
        try:
            await store.get_user("warm-up")  # the connection is made outside the count
            before = commands(redis_url)
            users = [f"u{i}" for i in range(60)] + ["ghost"]
            found = await asyncio.gather(*(store.get_user(u) for u in users))
            after = commands(redis_url)
            assert found[:60] == [{"age": i} for i in range(60)] and found[60] is None
            assert after.get("mget", 0) - before.get("mget", 0) == 1  # 61 reads, one command
            assert after.get("get", 0) == before.get("get", 0)
            r.set("tt:user:u3", json.dumps({"age": 99}))  # nothing is cached
            assert await store.get_user("u3") == {"age": 99}
        finally:
            await store.close()

    asyncio.run(main())


def test_redis_gone_fails_every_waiter() -> None:
    async def main() -> None:
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.3)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(store.get_user(f"u{i}") for i in range(20)), return_exceptions=True), 10
            )
        finally:
            await store.close()
        assert len(results) == 20 and all(isinstance(x, StoreUnavailable) for x in results)
        assert len({id(x) for x in results}) == 20  # each waiter raises its own exception

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 700])
def test_lone_and_oversized_batches(redis_url: str, n: int) -> None:
    r = redis.Redis.from_url(redis_url)
    r.set("tt:user:solo", json.dumps({"age": 1}))

    async def main() -> None:
        store = RedisStore(redis_url, timeout_s=2.0)
        try:
            found = await asyncio.gather(*(store.get_user("solo") for _ in range(n)))
        finally:
            await store.close()
        assert found == [{"age": 1}] * n  # past max_batch (512) a batch goes out early, none is lost

    asyncio.run(main())
