"""A task cancelled while it waits on Redis ends, against a real redis-server.

redis-py (8.1 on Python 3.11) can swallow a cancellation that lands inside a command: the call
returns, or fails with a ConnectionError, and the task runs on. Seen in CI as a reindex job that
never ended: its heartbeat, cancelled after the build, went on renewing the lease for ever.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from app.state import RedisStore
from models.errors import StoreUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _renew_forever(store: RedisStore) -> None:
    """The heartbeat's shape: Redis calls in a loop, a store outage logged and survived."""
    job = {"job_id": "j1", "model_version": "v1", "status": "running"}
    while True:
        await asyncio.sleep(0.0005)
        try:
            await store.renew_job("j1", "w1", 30.0)
            await store.put_job(job)
        except StoreUnavailable:
            pass


async def test_a_cancel_inside_a_redis_call_ends_the_task(redis_url: str) -> None:
    store = RedisStore(redis_url, 1.0)
    rng = random.Random(7)
    hung = 0
    try:
        for _ in range(60):  # without the guard in `_call`, ~40% of these ran on
            task = asyncio.create_task(_renew_forever(store))
            await asyncio.sleep(rng.uniform(0, 0.01))  # lands mostly inside a command
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2.0)
            if not done:
                hung += 1
                task.cancel()
                await asyncio.wait([task], timeout=2.0)
            else:
                assert task.cancelled()
        assert hung == 0, f"{hung} of 60 cancelled tasks ran on"
        assert await store.ping()  # and the client still works
    finally:
        await store.close()


async def test_an_outer_timeout_still_becomes_a_timeout(redis_url: str) -> None:
    """The re-raised cancel keeps asyncio's bookkeeping: an enclosing `asyncio.timeout` that fires
    during a command still turns into TimeoutError, not into a cancel of the whole task."""
    store = RedisStore(redis_url, 1.0)
    try:
        for _ in range(20):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.002):
                    await _renew_forever(store)
            assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    finally:
        await store.close()
