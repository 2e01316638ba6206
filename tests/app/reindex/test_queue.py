"""The job queue's guarantees, on both stores (Redis: a real redis-server): a job taken off the queue
is finished, handed back, or handed back by a reaper once its lease runs out; submitting is atomic;
a job is never lost. (Issue 11, case 1.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from app.reindex.jobs import ACTIVE_TTL_S, new_job, submit
from app.state import FeatureStore, LocalStore, RedisStore
from models.errors import StoreUnavailable

pytestmark = pytest.mark.anyio
LEASE_S = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["redis", "local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FeatureStore]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        s: FeatureStore = RedisStore(url, 1.0, alias_file=tmp_path / "aliases.json")
    else:
        s = LocalStore(None, tmp_path / "aliases.json").load()
    yield s
    await s.close()


async def test_visibility_timeout_hands_an_unrenewed_job_back(store: FeatureStore) -> None:
    job = await submit(store, "v1")
    taken = job["job_id"]
    assert await store.take_job("w1", LEASE_S) == taken
    assert await store.take_job("w1", LEASE_S) is None
    assert await store.reap_jobs() == []  # the lease is live
    assert await store.job_in_flight(taken)
    await asyncio.sleep(LEASE_S + 0.2)
    assert await store.reap_jobs() == [taken]  # ran out: back on the queue
    assert await store.take_job("w2", LEASE_S) == taken  # the retry, by another worker
    assert await store.renew_job(taken, "w1", LEASE_S) is False  # the stalled holder learns it lost it
    assert await store.finish_job(taken, "w1") is False and await store.job_in_flight(taken)
    assert await store.finish_job(taken, "w2")
    assert not await store.job_in_flight(taken)
    assert await store.reap_jobs() == [] and await store.take_job("w1", LEASE_S) is None


async def test_a_renewed_lease_is_kept(store: FeatureStore) -> None:
    job = await submit(store, "v1")
    assert await store.take_job("w1", LEASE_S) == job["job_id"]
    for _ in range(4):
        await asyncio.sleep(LEASE_S / 2)
        assert await store.renew_job(job["job_id"], "w1", LEASE_S)
    assert await store.reap_jobs() == []
    assert not await store.hand_back(job["job_id"], "w2")  # not w2's to give back
    assert await store.hand_back(job["job_id"], "w1")  # a worker that cannot run it now
    assert not await store.hand_back(job["job_id"], "w1")
    assert await store.take_job("w1", LEASE_S) == job["job_id"]


async def test_submit_coalesces_and_never_returns_a_lost_job(store: FeatureStore) -> None:
    first = await submit(store, "v1")
    assert (await submit(store, "v1"))["job_id"] == first["job_id"]
    assert (await submit(store, "v2"))["job_id"] != first["job_id"]
    # A job marked active but in no queue and under no lease (as an older release could leave one):
    # closed as lost, and a new job is queued.
    lost = new_job("v3")
    await store.put_job(lost)
    assert await store.claim_active("v3", lost["job_id"], ACTIVE_TTL_S) is None
    fresh = await submit(store, "v3")
    assert fresh["job_id"] != lost["job_id"] and await store.job_in_flight(fresh["job_id"])
    closed = await store.get_job(lost["job_id"])
    assert closed is not None and closed["status"] == "failed" and "lost" in closed["error"]


async def test_submit_is_all_or_nothing(redis_url: str, tmp_path: Path) -> None:
    """The enqueue fails (the queue key holds a string): no record, no active marker is left."""
    store = RedisStore(redis_url, 1.0)
    rc = redis.Redis.from_url(redis_url)
    try:
        rc.set("tt:queue", "not a list")
        with pytest.raises(StoreUnavailable):
            await submit(store, "v1")
        assert rc.get("tt:active:v1") is None and list(rc.scan_iter("tt:job:*")) == []
        rc.delete("tt:queue")
        job = await submit(store, "v1")
        assert json.loads(rc.get(f"tt:job:{job['job_id']}") or "{}")["status"] == "queued"
        assert rc.lrange("tt:queue", 0, -1) == [job["job_id"].encode()]
    finally:
        rc.close()
        await store.close()
