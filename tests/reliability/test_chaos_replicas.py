"""The control plane across replicas, real processes: two API replicas, two `twotower worker`s and a
real redis-server (issue 11, cases 5, 6, 7; issue 10, new versions without restarts).

Each scenario ends the same way: every replica on the same newest build, zero 5xx under load, no
alias lost or moved by anyone but the operator, no job left queued or running, nothing half-written
in the index store (the checks of tests/reliability/chaos.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from app.state.load import load_into_redis
from index_store.directory import INDEX_FILE
from index_store.store import IndexStore
from tests.conftest import RedisServer
from tests.reliability.artifacts import clone_version, copy_build, current, publish
from tests.reliability.chaos import assert_no_stuck_job, assert_nothing_half_written
from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import ADMIN, Load, Outcome, Proc, Server, deadline_loop, fmt_counts, summary

pytestmark = pytest.mark.slow

V2 = "99990101T000000Z"  # sorts after the demo tag
# Requests that need no Redis round trip and one that does: both must stay 2xx throughout.
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/recall", {"user_id": "1", "k": 10}),
    ("/recall", {"features": {"age": 30, "history": ["1", "2"]}, "k": 10}),
]


@dataclass
class Cluster:
    replicas: list[Server]
    workers: list[Proc]
    rc: redis.Redis
    index: Path
    stores: list[Path]  # each replica's model store (the same path twice when shared)
    url: str  # Redis
    loads: list[Load] = field(default_factory=list)

    def load(self) -> None:
        for r in self.replicas:
            self.loads.append(Load(r.url, REQUESTS, threads=1, pause=0.01).__enter__())

    def outcomes(self) -> list[Outcome]:
        return [o for load in self.loads for o in load.stop()]

    def aliases(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.rc.hgetall("tt:aliases").items()}

    def settle(self, version: str, timeout: float = 60) -> str:
        """Until every replica serves the current build of `version` through `default`."""
        build = current(self.index, version)
        for _ in deadline_loop(timeout, f"every replica on {version}/{build}", step=0.1):
            seen = [r.get("/readyz").json() for r in self.replicas]
            if all(s.get("model_version") == version and s.get("index_build") == build for s in seen):
                return build
        raise AssertionError("unreachable")

    def finish(self, version: str, aliases: dict[str, str]) -> tuple[str, dict[str, int]]:
        """The common end: same newest build everywhere, zero 5xx, every alias where it should be."""
        build = self.settle(version)
        for load in self.loads:
            load.wait_count(load.count() + 5)
        outcomes = self.outcomes()
        counts = summary(outcomes)
        assert not [o for o in outcomes if o.status is None or o.status >= 500], counts
        assert self.aliases() == aliases, self.aliases()
        for _ in deadline_loop(30, "every job to finish or be handed back", step=0.2):
            jobs = [json.loads(self.rc.get(k) or b"{}") for k in self.rc.scan_iter("tt:job:*")]
            if not [j for j in jobs if j.get("status") in ("queued", "running")]:
                break
        assert_no_stuck_job(jobs)
        assert_nothing_half_written(self.index)
        # The build each replica answers with never goes backwards (one load thread per replica).
        for load in self.loads:
            served = [o.build for o in load.outcomes if o.build is not None]
            assert served == sorted(served), "a replica went back to an older build"
        return build, counts


@pytest.fixture
def rc(own_redis: RedisServer) -> Iterator[redis.Redis]:
    own_redis.start()
    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def start(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rc: redis.Redis,
    rel_data: Path,
    model_store: Path,
    index_root: Path,
    version: str,
) -> Iterator[Callable[..., Cluster]]:
    """start(own_stores=False, worker_in_a=False) -> a running cluster, under load, default -> demo."""
    load_into_redis(own_redis.url, rel_data)
    rc.hset("tt:aliases", "default", version)
    made: list[Cluster] = []

    def make(own_stores: bool = False, worker_in_a: bool = False, **extra: str) -> Cluster:
        names = ["models-a", "models-b"] if own_stores else ["models", "models"]
        stores = [tmp_path / n for n in names]
        for s in set(stores):
            shutil.copytree(model_store, s)
        env = {
            **base_env,
            "TWOTOWER_REDIS_URL": own_redis.url,
            "TWOTOWER_MODEL_POLL_S": "0.2",
            "TWOTOWER_REPLICA_TTL_S": "2",
            **extra,
        }
        replicas = [
            spawn("serve", {**env, "TWOTOWER_MODEL_STORE": str(s)}, f"api{i}", worker=worker_in_a and i == 0)
            for i, s in enumerate(stores)
        ]
        # The workers read the first replica's model store (in a shared layout, everyone's).
        workers = [
            spawn("worker", {**env, "TWOTOWER_MODEL_STORE": str(stores[0])}, f"worker{i}") for i in range(2)
        ]
        for r in replicas:
            r.wait_ready()
        for w in workers:
            w.wait_log("worker started")
        cluster = Cluster(replicas, workers, rc, index_root, stores, own_redis.url)
        cluster.load()
        made.append(cluster)
        return cluster

    yield make
    for c in made:
        c.outcomes()


def test_alias_moves_only_when_every_replica_serves_the_target(
    start: Callable[..., Cluster],
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    c = start(own_stores=True)  # each replica reads its own disk: a version reaches A first
    a, b = c.replicas
    clone_version(c.stores[0], version, V2)
    for _ in deadline_loop(60, f"A to serve {V2} (found, built by a worker, loaded)", step=0.2):
        if a.post("/recall", json={"k": 3, "model_version": V2}).status_code == 200:
            break
    # B has not got V2: the move is refused, naming B; nothing moves.
    r = a.put("/admin/aliases/default", headers=ADMIN, json={"model_version": V2})
    assert r.status_code == 409, r.text
    refused = r.json()["detail"]
    assert re.search(r":\d+:", refused), refused  # a replica id (host:pid:nonce)
    assert c.aliases() == {"default": version}
    # V2 reaches B's disk: B loads it and its (already built) index; now the move goes through.
    shutil.copytree(c.stores[0] / V2, c.stores[1] / V2)
    for _ in deadline_loop(60, "the move to be accepted", step=0.2):
        r = a.put("/admin/aliases/default", headers=ADMIN, json={"model_version": V2})
        if r.status_code == 200:
            break
        assert r.status_code == 409, r.text
    build, counts = c.finish(V2, {"default": V2})
    assert IndexStore(c.index).builds(V2) == [build]  # built once, for both replicas

    report(
        "Alias moved to a version one replica has not loaded (each replica its own model store; a new "
        "version copied to replica A's only), then to B's",
        "409 naming the replicas that cannot serve it, nothing moves; once every live replica serves "
        "it, the move succeeds and both follow",
        f"409 `{refused[:160]}`; alias unchanged; after the copy to B: moved, both replicas on {V2}/{build} "
        f"(one build); load {fmt_counts(counts)}",
    )


def test_one_activation_per_build_and_never_backwards(
    start: Callable[..., Cluster],
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    # Replica A runs a worker too: its on_built and its poll loop (every 50 ms) race for each build.
    c = start(worker_in_a=True, TWOTOWER_POLL_INTERVAL_S="0.05")
    a = c.replicas[0]
    builds: list[str] = []
    for _ in range(6):  # rebuild after rebuild, each published while the replicas poll
        job = a.reindex()
        assert job["status"] == "succeeded", job
        builds.append(job["index_build"])
    assert builds == sorted(builds)
    newest, counts = c.finish(version, {"default": version})
    assert newest == builds[-1]
    for r in c.replicas:
        activations = re.findall(rf"index {version}/(\S+) active", r.text())
        assert len(activations) == len(set(activations)), f"a build loaded twice in {r.log.name}"
        assert not re.search(r"replacing (\S+) with \1", r.text())

    report(
        "Six rebuilds in a row; replica A runs a worker (its on_built and its poll loop both load the "
        "new build), replica B polls; two external workers compete for the jobs",
        "each build loaded once per replica; never an older build after a newer one",
        f"{len(builds)} builds, each activated at most once per replica; the builds each replica answered "
        f"with only went forward; both on {newest}; load {fmt_counts(counts)}",
    )


def test_a_transient_read_error_does_not_pin_the_old_build(
    start: Callable[..., Cluster],
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    c = start()
    new = copy_build(c.index, version, good_index.build)
    path = c.index / version / new / INDEX_FILE
    aside = path.with_name("aside")
    os.rename(path, aside)
    path.mkdir()  # every read raises IsADirectoryError (an OSError, as EIO or ESTALE would)
    publish(c.index, version, new)
    try:
        for r in c.replicas:
            r.wait_log(rf"index build {version}/{new} not loaded .*retry", timeout=30)
            assert r.build() == good_index.build
    finally:
        path.rmdir()
        os.rename(aside, path)
    build, counts = c.finish(version, {"default": version})  # no new publish needed
    assert build == new

    report(
        "A published build unreadable for a moment (an I/O error on every read of index.faiss), then "
        "readable again, with no new publish",
        "the previous build keeps serving; the new one is retried with backoff and swaps in, not pinned "
        "out until the next publish",
        f"both replicas logged the I/O error with a retry and kept {good_index.build}; once readable, both "
        f"swapped to {new}; load {fmt_counts(counts)}",
    )


def test_a_new_version_is_picked_up_and_built_once(
    start: Callable[..., Cluster],
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    c = start()
    store = c.stores[0]
    clone_version(store, version, V2)  # copied in place, file by file: seen half-done first
    for _ in deadline_loop(90, f"both replicas to serve {V2}", step=0.2):
        if all(r.post("/recall", json={"k": 3, "model_version": V2}).status_code == 200 for r in c.replicas):
            break
    r = c.replicas[1].put("/admin/aliases/default", headers=ADMIN, json={"model_version": V2})
    assert r.status_code == 200, r.text
    build, counts = c.finish(V2, {"default": V2})
    jobs = [k for k in c.rc.scan_iter("tt:job:*") if V2.encode() in (c.rc.get(k) or b"")]
    assert IndexStore(c.index).builds(V2) == [build] and len(jobs) == 1, jobs
    for rep in c.replicas:
        rep.wait_log(rf"model version {V2} loaded")

    report(
        "A new model version copied into the shared model store while two replicas serve under load",
        "both load it without a restart; its index is built once; an alias move to it succeeds",
        f"both replicas loaded {V2}; {len(jobs)} job, 1 build ({build}); default moved to it and both "
        f"followed; load {fmt_counts(counts)}",
    )
