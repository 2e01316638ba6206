"""Replicas record what they serve (in Redis, with a heartbeat), and an alias moves only to a version
every live replica can serve (issue 11, case 5). Two services in this process, one real Redis, one
shared index store; each replica has its own model store, as each node has its own disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import copy_version, make_settings, until
from tests.data import build_index

V2 = "99990101T000000Z"


WAIT_S = 30


def test_alias_moves_only_where_every_live_replica_serves_it(
    tmp_path: Path,
    redis_url: str,
    model_store: Path,
    version: str,
    data_dir: Path,
    admin: dict[str, str],
) -> None:
    index = tmp_path / "index"
    store_a, store_b = tmp_path / "models-a", tmp_path / "models-b"
    shutil.copytree(model_store, store_a)
    shutil.copytree(model_store, store_b)
    copy_version(store_a / version, store_a / V2, V2)  # only replica A has V2 on its disk
    build_index(index, store_a, version, data_dir)
    build_index(index, store_a, V2, data_dir)
    rc = redis.Redis.from_url(redis_url)
    rc.hset("tt:aliases", "default", version)  # where the operator left it (not the first boot's pick)
    common = {"redis_url": redis_url, "model_poll_s": 0.1, "worker": False}
    a = TestClient(create_app(make_settings(store_a, index, data_dir, **common)))
    b = TestClient(create_app(make_settings(store_b, index, data_dir, **common)))
    with a, b:
        assert a.post("/recall", json={"k": 3, "model_version": V2}).status_code == 200
        assert b.post("/recall", json={"k": 3, "model_version": V2}).status_code == 404

        # B cannot serve V2: the move is refused, naming B, and `default` stays where it was.
        r = a.put("/admin/aliases/default", headers=admin, json={"model_version": V2})
        assert r.status_code == 409, r.text
        replica_b = b.app.state.service.replica_id  # type: ignore[attr-defined]
        assert replica_b in r.json()["detail"]
        assert b.post("/recall", json={"k": 3}).json()["model_version"] == version

        # V2 reaches B's disk: B loads it and its build, says so in its record; the move succeeds.
        copy_version(store_a / V2, store_b / V2, V2)
        until(
            "B to serve V2",
            lambda: b.post("/recall", json={"k": 3, "model_version": V2}).status_code == 200,
            timeout=WAIT_S,
        )
        until(
            "the move to V2 to be accepted",
            lambda: (
                a.put("/admin/aliases/default", headers=admin, json={"model_version": V2}).status_code == 200
            ),
            timeout=WAIT_S,
        )
        until(
            "B to follow the alias",
            lambda: b.post("/recall", json={"k": 3}).json()["model_version"] == V2,
            timeout=WAIT_S,
        )
        assert a.post("/recall", json={"k": 3}).json()["model_version"] == V2

        # What each replica serves is in Redis, under a key that expires unless renewed.
        records = [json.loads(rc.get(k) or b"{}") for k in rc.scan_iter("tt:replica:*")]
        assert {rec["replica"] for rec in records} == {
            a.app.state.service.replica_id,  # type: ignore[attr-defined]
            replica_b,
        }
        for rec in records:
            assert set(rec["versions"]) == {version, V2} and all(rec["versions"].values()), rec
        listed = a.get("/admin/versions", headers=admin).json()["replicas"]
        assert sorted(r["replica"] for r in listed) == sorted(rec["replica"] for rec in records)
        assert all(0 < rc.pttl(k) for k in rc.scan_iter("tt:replica:*"))
    # A replica that stops takes its record with it: it no longer holds alias moves back.
    assert list(rc.scan_iter("tt:replica:*")) == []


def test_a_replica_gone_silent_stops_counting(
    tmp_path: Path, redis_url: str, model_store: Path, version: str, data_dir: Path, admin: dict[str, str]
) -> None:
    """A replica that died without a goodbye (SIGKILL) is live until its record expires, then not."""
    index = tmp_path / "index"
    store = tmp_path / "models"
    shutil.copytree(model_store, store)
    build_index(index, store, version, data_dir)
    rc = redis.Redis.from_url(redis_url)
    # The record a killed replica leaves: it serves nothing, and its heartbeat has stopped.
    rc.set("tt:replica:dead-1", json.dumps({"replica": "dead-1", "versions": {}, "at": 0}), px=1500)
    s = make_settings(store, index, data_dir, redis_url=redis_url, worker=False)
    with TestClient(create_app(s)) as c:
        r = c.put("/admin/aliases/blue", headers=admin, json={"model_version": version})
        assert r.status_code == 409 and "dead-1" in r.text
        until(
            "the dead replica's record to expire",
            lambda: (
                c.put("/admin/aliases/blue", headers=admin, json={"model_version": version}).status_code
                == 200
            ),
            timeout=WAIT_S,
        )
