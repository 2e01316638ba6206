"""Chaos, issue 11 cases 4 and 9: aliases durable beyond Redis, and a full disk while recording one.
Real processes: a redis-server the test restarts empty, two API replicas, two workers; a single node
on a full tmpfs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.state.load import load_into_redis
from models.manifest import MANIFEST, list_versions
from tests.conftest import RedisServer
from tests.data import build_index
from tests.reliability.chaos import (
    LOCK_TTL_S,
    NOT_NICE,
    Cluster,
    assert_converged,
    assert_nothing_half_written,
)
from tests.reliability.conftest import GoodIndex, fill_disk
from tests.reliability.procs import ADMIN, Load, Server, deadline_loop, fmt_counts, summary

pytestmark = pytest.mark.slow

V2 = "99990101T000000Z"  # sorts after the demo tag: the newest version


@pytest.fixture
def two_versions(own_models: Path, version: str, index_root: Path, rel_data: Path) -> Path:
    """The demo version plus a copy re-tagged V2, both with an index; returns the model store."""
    shutil.copytree(own_models / version, own_models / V2)
    manifest = json.loads((own_models / V2 / MANIFEST).read_text())
    manifest["version"] = V2
    (own_models / V2 / MANIFEST).write_text(json.dumps(manifest))
    assert list_versions(own_models) == [version, V2]
    build_index(index_root, own_models, V2, rel_data)
    return own_models


@pytest.fixture
def cluster(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rel_data: Path,
    index_root: Path,
    version: str,
    two_versions: Path,
) -> Iterator[Cluster]:
    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    env = {
        **base_env,
        **NOT_NICE,
        "TWOTOWER_REDIS_URL": own_redis.url,
        "TWOTOWER_LOCK_TTL_S": str(LOCK_TTL_S),
        "TWOTOWER_MODEL_STORE": str(two_versions),
    }
    yield Cluster(own_redis, env, index_root, version, spawn)


def test_redis_restarted_empty_keeps_every_alias(
    cluster: Cluster,
    version: str,
    index_root: Path,
    rel_data: Path,
    report: Callable[[str, str, str], None],
) -> None:
    """Case 4: Redis comes back empty; `default` pointed at the older version."""
    c = cluster.start()
    api = c.apis[0]
    assert c.aliases() == {"default": V2}  # first boot: the newest version with an index
    for alias, target in (("default", version), ("canary", V2)):
        r = api.put(f"/admin/aliases/{alias}", headers=ADMIN, json={"model_version": target})
        assert r.status_code == 200, r.text
    aliases = {"default": version, "canary": V2}
    assert c.aliases() == aliases
    with c.load() as load:
        c.server.stop()
        c.server.start()  # empty: no persistence, as a cache node lost and replaced
        load_into_redis(c.server.url, rel_data)  # the operator reloads features and catalog
        assert c.aliases() in ({}, aliases)
        for _ in deadline_loop(20, "the aliases back in Redis"):
            if c.aliases():
                break
        # Replicas keep answering on the restored aliases; a rebuild still goes through.
        for a in c.apis:
            for _ in deadline_loop(10, f"{a.url} to see the restored aliases", step=0.2):
                if a.get("/admin/versions", headers=ADMIN).json()["aliases"] == aliases:
                    break
            assert (
                a.post("/recall", json={"features": {"age": 30}, "k": 3}).json()["model_version"] == version
            )
        r = api.post("/admin/reindex", headers=ADMIN, json={"model_version": version})
        assert r.status_code == 202, r.text
        job = api.wait_job(r.json()["job_id"], timeout=40)
        assert job["status"] == "succeeded", job
        served = assert_converged(c, aliases, load)
    assert c.aliases() == aliases
    assert json.loads((index_root / "aliases.json").read_text()) == aliases
    report(
        "Redis restarted empty under load; `default` pointed at the older of two versions, `canary` at "
        "the newer",
        "every alias restored from the mirror beside the index store; `default` never moves",
        f"aliases back in Redis and on both replicas as {aliases}; a rebuild then succeeded and both "
        f"replicas serve {served}",
    )


def test_disk_full_while_recording_an_alias(
    tiny_disk: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    good_index: GoodIndex,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    """Case 9: one node (no Redis), the index store's disk full when an alias is recorded."""
    shutil.copytree(good_index.root, tiny_disk, dirs_exist_ok=True)
    env = {**base_env, **NOT_NICE, "TWOTOWER_INDEX_STORE": str(tiny_disk)}
    srv: Server = spawn("serve", env, "api1")
    srv.wait_ready()
    record = tiny_disk / "aliases.json"
    before = json.loads(record.read_text())
    assert before == {"default": version}
    with Load(srv.url, [("/recall", {"features": {"age": 30}, "k": 5})], threads=1) as load:
        filler = fill_disk(tiny_disk)
        r = srv.put("/admin/aliases/canary", headers=ADMIN, json={"model_version": version})
        assert r.status_code == 507, r.text
        detail = r.json()["detail"]
        assert "no space" in detail, detail
        assert srv.get("/admin/versions", headers=ADMIN).json()["aliases"] == before  # nothing live
        assert json.loads(record.read_text()) == before
        assert_nothing_half_written(tiny_disk)
        filler.unlink()
        r = srv.put("/admin/aliases/canary", headers=ADMIN, json={"model_version": version})
        assert r.status_code == 200, r.text
        load.wait_count(load.count() + 5)
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    srv.stop()
    again: Server = spawn("serve", env, "api2")
    again.wait_ready()
    after = {"default": version, "canary": version}
    assert again.get("/admin/versions", headers=ADMIN).json()["aliases"] == after
    assert json.loads(record.read_text()) == after
    report(
        "One node: the index store's disk full (a tmpfs filled up) when an alias is moved",
        "a clear 507 and nothing changes, in memory or on disk; once space is back the move works and "
        "survives a restart",
        f"507 {detail!r}; aliases live and on disk unchanged, no temporary file left; after freeing space "
        f"200, and after a restart {after}; load {fmt_counts(counts)}",
    )
