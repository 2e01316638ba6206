"""Chaos, issue 11 cases 1 and 2: jobs that are never lost or stuck, a worker that survives any one
failure. Real processes: a redis-server, two API replicas, two workers."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.state.load import load_into_redis
from tests.conftest import RedisServer
from tests.reliability.chaos import LOCK_TTL_S, NOT_NICE, Cluster, assert_converged, current_build
from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import ADMIN, deadline_loop

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rel_data: Path,
    index_root: Path,
    version: str,
    good_index: GoodIndex,
) -> Iterator[Cluster]:
    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    env = {**base_env, **NOT_NICE, "TWOTOWER_REDIS_URL": own_redis.url}
    env["TWOTOWER_LOCK_TTL_S"] = str(LOCK_TTL_S)
    yield Cluster(own_redis, env, index_root, version, spawn)


def test_submit_is_atomic(cluster: Cluster, version: str, report: Callable[[str, str, str], None]) -> None:
    """Case 1: the job record is written but the enqueue fails (here: the queue key holds a string)."""
    c = cluster.start()
    aliases = c.aliases()
    rc = c.client()
    with c.load() as load:
        rc.set("tt:queue", "not a list")  # every push to and pop from the queue now fails
        r = c.apis[0].post("/admin/reindex", headers=ADMIN, json={})
        assert r.status_code == 503, r.text
        rc.delete("tt:queue")
        r = c.apis[1].post("/admin/reindex", headers=ADMIN, json={})
        assert r.status_code == 202, r.text
        job = c.apis[1].wait_job(r.json()["job_id"], timeout=40)
        assert job["status"] == "succeeded", job
        served = assert_converged(c, aliases, load)
    assert served == job["index_build"]
    report(
        "Submit interrupted between writing the job and queueing it (the queue key made unusable)",
        "the request fails whole (503); the next request queues a job that runs",
        f"first POST 503, nothing half-submitted; the next POST's job {job['status']}; both replicas on "
        f"{served}",
    )


def test_worker_killed_while_waiting_for_the_lock(
    cluster: Cluster, version: str, report: Callable[[str, str, str], None]
) -> None:
    """Case 1: a job taken off the queue, its worker killed while it waits for the version's lock."""
    c = cluster.start()
    aliases = c.aliases()
    rc = c.client()
    with c.load() as load:
        rc.set(f"tt:lock:{version}", "someone-else", px=60_000)  # a build of the version in progress
        job_id = c.apis[0].post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        for _ in deadline_loop(10, "a worker to take the job off the queue"):
            if rc.llen("tt:queue") == 0:
                break
        for w in c.workers:
            w.send(signal.SIGKILL)
        for w in c.workers:
            w.proc.wait()
        rc.delete(f"tt:lock:{version}")  # the other build ends
        for _ in range(2):
            c.add_worker()
        job = c.apis[1].wait_job(job_id, timeout=40)
        assert job["status"] == "succeeded", job
        served = assert_converged(c, aliases, load)
    assert served == job["index_build"] == current_build(c.index_root, version)
    report(
        "Both workers SIGKILLed while one held a job off the queue, waiting for the version's lock",
        "the job's lease expires and it is handed back, then built by a new worker",
        f"job {job['status']} after {job.get('attempts', '?')} attempts; both replicas on {served}",
    )


def test_worker_survives_a_failure_to_start_the_build(
    cluster: Cluster, version: str, report: Callable[[str, str, str], None]
) -> None:
    """Case 2: OSError starting the build child (an environment too big for exec: E2BIG)."""
    c = cluster.start(workers=0)
    aliases = c.aliases()
    # The worker hands its settings to the build child as one JSON string in the environment: with
    # these two (harmless to the worker itself) it is over MAX_ARG_STRLEN, and exec fails (E2BIG).
    poison = {
        "TWOTOWER_MODEL_VERSIONS": json.dumps(["a" * 60_000, "b" * 60_000]),
        "TWOTOWER_INDEX__ANN_FACTORY": "x" * 30_000,
    }
    poisoned = c.add_worker({**c.env, **poison})
    poisoned.wait_log("worker started")
    with c.load() as load:
        first = c.apis[0].post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        job1 = c.apis[0].wait_job(first, timeout=30)
        assert job1["status"] == "failed" and "Argument list too long" in (job1["error"] or ""), job1
        assert poisoned.alive(), poisoned.tail()
        # The same worker takes the next job: its loop went on.
        second = c.apis[1].post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        assert second != first
        job2 = c.apis[1].wait_job(second, timeout=30)
        assert job2["status"] == "failed", job2
        for _ in deadline_loop(10, "the worker's status to count both failures"):
            status = c.apis[0].get("/admin/worker", headers=ADMIN)
            assert status.status_code == 200, status.text
            workers = status.json()["workers"]
            if workers and workers[0]["failures"] >= 2:
                break
        assert len(workers) == 1 and workers[0]["alive"], workers
        assert "Argument list too long" in workers[0]["last_error"]
        # A healthy worker beside it builds the next job; the cluster converges.
        poisoned.stop()
        c.workers.remove(poisoned)
        c.add_worker().wait_log("worker started")
        third = c.apis[0].post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        job3 = c.apis[0].wait_job(third, timeout=40)
        assert job3["status"] == "succeeded", job3
        served = assert_converged(c, aliases, load)
    report(
        "The worker cannot start its build child (OSError E2BIG), twice in a row",
        "each job fails with the reason; the worker lives on, takes the next job, reports its state",
        f"jobs failed with {job1['error']!r}; worker alive, /admin/worker failures="
        f"{workers[0]['failures']}; a healthy worker then built {served}",
    )
