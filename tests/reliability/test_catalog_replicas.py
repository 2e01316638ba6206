"""Catalog changes across replicas, real processes: two `twotower serve` replicas on one real
redis-server. An item upserted on one is recalled on the other, a deleted one is never returned again
by either, and an upsert taken while a reindex runs survives the swap to the build it started."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.state.load import load_into_redis
from tests.conftest import RedisServer
from tests.reliability.procs import ADMIN, Server, deadline_loop

pytestmark = pytest.mark.slow
USER = "1"


def catalog(data_dir: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (data_dir / "items.jsonl").read_text().splitlines()]
    return {str(r["item_id"]): r for r in rows}


def recalled(server: Server, k: int = 1000) -> list[str]:
    r = server.post("/recall", json={"user_id": USER, "k": k, "exclude_history": False})
    assert r.status_code == 200, r.text
    return [it["item_id"] for it in r.json()["items"]]


def upsert(server: Server, item_id: str, row: dict[str, Any]) -> None:
    feats = {k: v for k, v in row.items() if k != "item_id"}
    r = server.put("/admin/items", headers=ADMIN, json={"items": [{"item_id": item_id, "features": feats}]})
    assert r.status_code == 202, r.text


def delete(server: Server, item_id: str) -> None:
    r = httpx_delete(server, f"/admin/items/{item_id}")
    assert r == 202


def httpx_delete(server: Server, path: str) -> int:
    import httpx

    return httpx.delete(f"{server.url}{path}", headers=ADMIN, timeout=10).status_code


def seen_within(server: Server, item_id: str, present: bool, timeout: float = 10) -> float:
    """Seconds until `item_id` is (or is no longer) recalled on `server`."""
    t = time.monotonic()
    for _ in deadline_loop(timeout, f"{item_id} {'in' if present else 'out of'} {server.url}'s recall"):
        if (item_id in recalled(server)) == present:
            break
    return time.monotonic() - t


@pytest.fixture
def replicas(
    spawn: Callable[..., Any], base_env: dict[str, str], own_redis: RedisServer, rel_data: Path, version: str
) -> Iterator[list[Server]]:
    """Two replicas on one Redis; the first runs the reindex worker (encoding one item a batch, so
    that a build runs long enough for changes to arrive during it)."""
    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    rc = redis.Redis.from_url(own_redis.url)
    rc.hset("tt:aliases", "default", version)
    rc.close()
    env = {**base_env, "TWOTOWER_REDIS_URL": own_redis.url, "TWOTOWER_INDEX__BATCH_SIZE": "1"}
    servers = [spawn("serve", env, f"api{i}", worker=i == 0) for i in range(2)]
    for s in servers:
        s.wait_ready()
    yield servers


def test_upsert_and_delete_reach_every_replica(replicas: list[Server], rel_data: Path) -> None:
    a, b = replicas
    items = catalog(rel_data)
    row = next(iter(items.values()))
    upsert(a, "fresh-1", row)
    assert "fresh-1" in recalled(a)  # on the replica that took it: at once
    took = seen_within(b, "fresh-1", present=True)
    print(f"upsert on A recalled on B after {took:.2f} s")
    gone = next(i for i in recalled(a) if i in items)  # the top built item (not an upserted one)
    delete(a, gone)
    assert gone not in recalled(a)  # hidden at once on the replica that took it
    took = seen_within(b, gone, present=False)
    print(f"delete on A hidden on B after {took:.2f} s")
    delete(b, "fresh-1")
    assert "fresh-1" not in recalled(b)
    seen_within(a, "fresh-1", present=False)
    for _ in range(5):  # and never again, on either, poll after poll
        for s in replicas:
            got = recalled(s)
            assert gone not in got and "fresh-1" not in got and len(got) == len(items) - 1
        time.sleep(0.3)


def scored(server: Server, ids: list[str]) -> list[float | None]:
    r = server.post("/score", json={"user_id": USER, "items": [{"item_id": i} for i in ids]})
    assert r.status_code == 200, r.text
    return [s["score"] for s in r.json()["scores"]]


EXTRA = 20_000  # catalog rows added for the rebuild: one item a batch makes it run for seconds


def test_upsert_during_a_reindex_survives_the_swap(
    replicas: list[Server], rel_data: Path, index_root: Path, version: str, own_redis: RedisServer
) -> None:
    a, b = replicas
    items = catalog(rel_data)
    first = next(iter(items.values()))
    rc = redis.Redis.from_url(own_redis.url)
    rc.hset("tt:items", mapping={f"x{i}": json.dumps({**first, "item_id": f"x{i}"}) for i in range(EXTRA)})
    rc.close()
    old = a.build()
    upsert(a, "before-build", first)
    job = a.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
    for _ in deadline_loop(60, "the build to start encoding", step=0.02):
        if a.get(f"/admin/reindex/{job}", headers=ADMIN).json().get("items"):
            break
    # The build has read the change log and is encoding: these two arrive during it.
    upsert(b, "during-build", first)
    gone = next(i for i in recalled(b) if i in items)  # the top built item (not an upserted one)
    delete(b, gone)
    # Both replicas read them from the log before the swap (A at its poll; B's poll reads what it
    # took itself): nothing but the swap's own bookkeeping can lose them now.
    for _ in deadline_loop(30, "A to read the late changes", step=0.05):
        if scored(a, ["during-build", gone]) == [scored(b, ["during-build"])[0], None]:
            break
    time.sleep(1.5)  # three of B's polls
    assert a.get(f"/admin/reindex/{job}", headers=ADMIN).json()["status"] == "running"
    assert a.wait_job(job, timeout=300)["status"] == "succeeded"
    build = a.get(f"/admin/reindex/{job}", headers=ADMIN).json()["index_build"]
    assert build != old
    for s in replicas:
        s.wait_build(build)
    manifest = json.loads((index_root / version / build / "manifest.json").read_text())
    assert manifest["changes_seq"] == 1  # folded the first upsert; the other two came later
    assert manifest["item_count"] == len(items) + EXTRA + 1
    pending = f'twotower_delta_items{{version="{version}"}} 2.0'
    for s in replicas:
        assert s.build() == build
        before, during, deleted = scored(s, ["before-build", "during-build", gone])
        assert before is not None and during is not None and deleted is None, s.url
        assert gone not in recalled(s)
        assert pending in s.get("/metrics").text, s.url


def test_compaction_loses_nothing_across_a_reindex(
    replicas: list[Server], rel_data: Path, own_redis: RedisServer
) -> None:
    """Ten ids upserted over and over on both replicas (Redis drops each id's older entry at every
    append) while a rebuild runs, one of them deleted last: after the swap both replicas serve each
    id's last state, filters and /similar included, and the log holds one entry per id."""
    a, b = replicas
    items = catalog(rel_data)
    rows = list(items.values())
    rc = redis.Redis.from_url(own_redis.url)
    rc.hset("tt:items", mapping={f"y{i}": json.dumps({**rows[0], "item_id": f"y{i}"}) for i in range(2000)})
    old = a.build()
    hot = [f"hot-{i}" for i in range(10)]
    last: dict[str, dict[str, Any]] = {}
    job = a.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"]
    rounds = 0
    while (
        a.get(f"/admin/reindex/{job}", headers=ADMIN).json()["status"] in ("queued", "running") or rounds < 5
    ):
        for n, item_id in enumerate(hot):
            last[item_id] = rows[(rounds * 7 + n) % len(rows)]
            upsert((a, b)[(rounds + n) % 2], item_id, last[item_id])
        rounds += 1
        assert rounds < 500, "the rebuild did not finish"
    delete(b, hot[-1])
    print(f"{rounds} rounds of {len(hot)} upserts while the rebuild ran")
    assert a.wait_job(job, timeout=300)["status"] == "succeeded"
    build = a.get(f"/admin/reindex/{job}", headers=ADMIN).json()["index_build"]
    assert build != old
    assert rc.zcard("tt:changes") == rc.hlen("tt:changes:ids") == len(hot)  # 10 ids, 10 * rounds + 1 changes
    assert int(rc.get("tt:changes:seq") or 0) == len(hot) * rounds + 1
    rc.close()
    for s in replicas:
        s.wait_build(build)
    kept = hot[:-1]

    def on_features(s: Server) -> list[float | None]:
        body = [
            {"item_id": f"probe-{i}", "features": {k: v for k, v in last[i].items() if k != "item_id"}}
            for i in kept
        ]
        r = s.post("/score", json={"user_id": USER, "items": body})
        return [x["score"] for x in r.json()["scores"]]

    for s in replicas:
        for _ in deadline_loop(10, f"{s.url} to serve every id's last state"):
            stored = scored(s, hot)
            want = on_features(s)
            if stored[-1] is None and all(
                x is not None and y is not None and abs(x - y) < 1e-5
                for x, y in zip(stored, want, strict=False)
            ):
                break
        assert hot[-1] not in recalled(s)
        genres = last[kept[0]]["genres"]
        flt = {"genres": {"all": genres}, "release_year": {"eq": last[kept[0]]["release_year"]}}
        r = s.post("/recall", json={"user_id": USER, "k": 1000, "exclude_history": False, "filter": flt})
        assert kept[0] in {it["item_id"] for it in r.json()["items"]}
        near = s.post("/similar", json={"item_id": kept[0], "k": 1000}).json()["items"]
        assert kept[0] not in {it["item_id"] for it in near} and hot[-1] not in {it["item_id"] for it in near}
