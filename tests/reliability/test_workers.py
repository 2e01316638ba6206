"""The reindex worker under faults, real processes and real Redis: SIGKILL mid-build, two workers
racing for one version, and a lock holder paused past its lock's expiry (fencing)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from app.reindex.jobs import new_job
from app.state.load import load_into_redis
from index_store.directory import TMP_PREFIX
from index_store.store import IndexStore
from models.manifest import ModelManifest
from tests.conftest import RedisServer
from tests.data import write_dataset
from tests.reliability.artifacts import current
from tests.reliability.chaos import NOT_NICE
from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import (
    ADMIN,
    Load,
    Proc,
    Server,
    deadline_loop,
    fmt_counts,
    summary,
    wait_gone,
)

pytestmark = pytest.mark.slow

LOCK_TTL_S = 2.0
N_BIG = 4000


@pytest.fixture
def rc(own_redis: RedisServer) -> Iterator[redis.Redis]:
    own_redis.start()
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    yield client
    client.close()


def env_for(base_env: dict[str, str], url: str, **extra: str) -> dict[str, str]:
    env = {**base_env, **NOT_NICE, "TWOTOWER_REDIS_URL": url, "TWOTOWER_LOCK_TTL_S": str(LOCK_TTL_S)}
    return {**env, **extra}


def build_children(worker: Proc) -> list[psutil.Process]:
    out = []
    for p in worker.children():
        try:
            if "reindex" in p.cmdline():
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def job_of(rc: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = rc.get(f"tt:job:{job_id}")
    return json.loads(raw) if raw else {}


def test_worker_sigkilled_mid_build(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rc: redis.Redis,
    manifest: ModelManifest,
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    big = tmp_path / "big"
    write_dataset(big, manifest, 30, N_BIG, seed=7)
    load_into_redis(own_redis.url, big)
    # Small batches: the build reports progress (and the worker writes it to Redis) 125 times.
    env = env_for(base_env, own_redis.url, TWOTOWER_INDEX__BATCH_SIZE="32")
    api: Server = spawn("serve", env, "api")
    worker: Proc = spawn("worker", env, "worker1")
    api.wait_ready()
    worker.wait_log("worker started")
    good = good_index.build
    with Load(api.url, [("/recall", {"user_id": "1", "k": 10})]) as load:
        job_id = api.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        for _ in deadline_loop(60, "the build to report progress", step=0.002):
            job = job_of(rc, job_id)
            if job.get("items", 0) > 0:
                break
        kids = build_children(worker)
        for p in [*kids, worker.proc]:  # the whole tree, as the OOM killer or a node loss would
            os.kill(p.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        held = rc.get(f"tt:lock:{version}")
        worker.proc.wait()
        wait_gone(kids)
        assert kids and 0 < job["items"] < N_BIG, job

        # No partial build became current, or even a complete-looking one.
        assert current(index_root, version) == good
        assert IndexStore(index_root).builds(version) == [good]
        leftovers = [p.name for p in (index_root / version).iterdir() if p.name.startswith(TMP_PREFIX)]
        assert rc.get(f"tt:job:{job_id}") and job_of(rc, job_id)["status"] == "running"
        # The lock expires by itself.
        assert held is not None
        for _ in deadline_loop(LOCK_TTL_S + 3, "the dead worker's lock to expire", step=0.05):
            if rc.get(f"tt:lock:{version}") is None:
                break
        lock_gone_s = time.monotonic() - killed_at
        # A new worker: the dead worker's job is handed back to it once its lease runs out, and built.
        spawn("worker", env, "worker2")
        done = api.wait_job(job_id)
        asked_s = time.monotonic() - killed_at
        assert done["status"] == "succeeded" and done["items"] == N_BIG, done
        assert done["attempts"] == 2, done
        api.wait_build(done["index_build"])
    assert not [p for p in (index_root / version).iterdir() if p.name.startswith(TMP_PREFIX)]
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert {o.build for o in load.outcomes} <= {good, done["index_build"]}

    report(
        "Worker and its build child killed with SIGKILL mid-build (after "
        f"{job['items']} of {N_BIG} items encoded)",
        "no partial build becomes current; the lock expires; the job is handed back and built",
        f"CURRENT unchanged, no new build directory ({len(leftovers)} `.tmp-` directory left, none after the "
        f"next build); lock gone {lock_gone_s:.1f} s after the kill (TTL {LOCK_TTL_S:.0f} s); the dead "
        f"worker's job was handed back to a new worker (its lease ran out) and finished "
        f"{asked_s:.1f} s after the kill, {N_BIG} items, swapped in; replica load {fmt_counts(counts)}",
    )


class BuildWatch:
    """Samples the build children of some workers: the most that ever ran at once."""

    def __init__(self, workers: list[Proc]) -> None:
        self.workers = workers
        self.max_at_once = 0
        self.seen: dict[int, str] = {}  # build child pid -> the worker log it belongs to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BuildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = 0
            for w in self.workers:
                for p in build_children(w):
                    self.seen[p.pid] = w.log.name
                    now += 1
            self.max_at_once = max(self.max_at_once, now)
            time.sleep(0.01)


def test_two_workers_race_for_one_version(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rc: redis.Redis,
    rel_data: Path,
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    load_into_redis(own_redis.url, rel_data)
    env = env_for(base_env, own_redis.url)
    api: Server = spawn("serve", env, "api")
    workers: list[Proc] = [spawn("worker", env, f"worker{i}") for i in (1, 2)]
    api.wait_ready()
    for w in workers:  # both polling the queue before the jobs arrive
        w.wait_log("worker started")
    with BuildWatch(workers) as watch:
        first = api.post("/admin/reindex", headers=ADMIN, json={}).json()
        again = api.post("/admin/reindex", headers=ADMIN, json={}).json()
        assert again["job_id"] == first["job_id"]  # asked twice: one job
        # A second job for the same version anyway (as two replicas' timers racing would make).
        dup = new_job(version)
        rc.set(f"tt:job:{dup['job_id']}", json.dumps(dup))
        rc.rpush("tt:queue", dup["job_id"])
        jobs = [api.wait_job(first["job_id"]), api.wait_job(dup["job_id"])]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    assert watch.max_at_once == 1, "two builds of one version ran at once"
    assert len(watch.seen) == 2 and len(set(watch.seen.values())) == 2, watch.seen
    builds = sorted(j["index_build"] for j in jobs)
    assert builds[0] != builds[1] and current(index_root, version) == builds[1]
    api.wait_build(builds[1])

    report(
        "Two workers racing: the same version asked twice of the API, plus a duplicate job queued so "
        "that each worker takes one",
        "one builds, the other waits or skips",
        "the API coalesced the two requests into one job; with two jobs queued each worker took one "
        f"and at most {watch.max_at_once} build ran at any moment (the second waited for the lock); "
        "both succeeded one after the other, the later build is current",
    )


def test_paused_lock_holder_is_fenced(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rc: redis.Redis,
    rel_data: Path,
    index_root: Path,
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    load_into_redis(own_redis.url, rel_data)
    env = env_for(base_env, own_redis.url)
    api: Server = spawn("serve", env, "api")
    wa: Proc = spawn("worker", env, "workerA")
    api.wait_ready()
    good = good_index.build
    with Load(api.url, [("/recall", {"user_id": "1", "k": 10})]) as load:
        job_a = api.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
        for _ in deadline_loop(60, "worker A's build child", step=0.002):
            kids = build_children(wa)
            if kids:
                break
        child = kids[0]
        token_a = rc.get(f"tt:lock:{version}")
        child.send_signal(signal.SIGSTOP)  # a GC pause, a frozen VM: the holder stops, its lock does not
        wa.send(signal.SIGSTOP)
        paused_at = time.monotonic()
        assert token_a is not None
        for _ in deadline_loop(LOCK_TTL_S + 3, "A's lock to expire"):
            if rc.get(f"tt:lock:{version}") is None:
                break
        # Worker B takes over: A's lease ran out, so A's job is handed back to B, which publishes.
        spawn("worker", env, "workerB")
        done_b = api.wait_job(job_a)
        assert done_b["status"] == "succeeded", done_b
        build_b = done_b["index_build"]
        api.wait_build(build_b)
        assert rc.get(f"tt:lock:{version}") is None
        # A resumes: its build runs to the end and reaches the fence with a token that is not the lock's.
        paused_s = time.monotonic() - paused_at
        wa.send(signal.SIGCONT)
        child.send_signal(signal.SIGCONT)
        line = wa.wait_log(r"build of .* failed .*stale build not published", timeout=60)
        wa.wait_log(r"handed back meanwhile: this run.s outcome \(failed\) is dropped")
        load.wait_count(load.count() + 20)
    assert job_of(rc, job_a)["status"] == "succeeded"  # B's outcome, not overwritten by A
    assert current(index_root, version) == build_b
    assert IndexStore(index_root).builds(version) == sorted([good, build_b])  # A's build was deleted
    assert wa.alive()
    wa.wait_log(r"lock on .* lost")
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert {o.build for o in load.outcomes} <= {good, build_b}
    error_a = line.split(": ")[-1]

    report(
        "Lock holder paused (SIGSTOP of worker A and its build) past its lock's expiry; worker B takes "
        "over and publishes; A resumed",
        "A's stale build is not published (fencing token checked at publish)",
        f"A paused {paused_s:.1f} s (lock TTL {LOCK_TTL_S:.0f} s); B's build current; A's build ran to the "
        f"fence and was refused and deleted ({error_a!r}); the job's record keeps B's success; "
        "worker A lives on; "
        f"replica load {fmt_counts(counts)}, never A's build",
    )
