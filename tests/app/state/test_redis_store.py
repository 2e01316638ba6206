"""The contract against a real redis-server: features, aliases and jobs in Redis; Redis going away
and coming back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.state.load import load_into_redis
from tests.app.conftest import make_settings
from tests.conftest import RedisServer


@pytest.fixture
def rclient(redis_url: str, model_store: Path, index_root: Path, data_dir: Path) -> Iterator[TestClient]:
    load_into_redis(redis_url, data_dir)
    # data_dir=None: every feature must come from Redis, none from the files
    s = make_settings(model_store, index_root, None, redis_url=redis_url, redis_timeout_s=0.3)
    with TestClient(create_app(s)) as c:
        yield c


def test_features_come_from_redis(rclient: TestClient, redis_url: str) -> None:
    r = rclient.post("/recall", json={"user_id": "1", "k": 5})
    assert r.status_code == 200 and r.json()["cold_start"] is False
    assert rclient.post("/recall", json={"user_id": "ghost", "k": 5}).json()["cold_start"] is True
    # a user written to Redis after start is served at once
    redis.Redis.from_url(redis_url).set("tt:user:late", '{"age": 30, "history": ["1"]}')
    assert rclient.post("/recall", json={"user_id": "late", "k": 5}).json()["cold_start"] is False


def test_alias_and_job_live_in_redis(
    rclient: TestClient, redis_url: str, admin: dict[str, str], version: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    assert r.hget("tt:aliases", "default") == version.encode()
    assert (
        rclient.put("/admin/aliases/blue", headers=admin, json={"model_version": version}).status_code == 200
    )
    assert r.hget("tt:aliases", "blue") == version.encode()
    job = rclient.post("/admin/reindex", headers=admin, json={"model_version": version}).json()
    assert r.get(f"tt:job:{job['job_id']}") is not None
    deadline = time.monotonic() + 60
    while rclient.get(f"/admin/reindex/{job['job_id']}", headers=admin).json()["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    final = rclient.get(f"/admin/reindex/{job['job_id']}", headers=admin).json()
    assert final["status"] == "succeeded", final
    assert r.hget("tt:builds", version) == final["index_build"].encode()
    assert r.get(f"tt:lock:{version}") is None  # released


def test_redis_down_then_back(rclient: TestClient, redis_server: RedisServer) -> None:
    feats = {"age": 30, "gender": "F", "history": ["1", "2"]}
    redis_server.stop()
    try:
        t0 = time.monotonic()
        r = rclient.post("/recall", json={"user_id": "1", "k": 5})
        assert r.status_code == 503 and "feature store" in r.json()["detail"]
        assert time.monotonic() - t0 < 3, "a Redis call without a timeout"
        # a request that carries its own features is still served
        ok = rclient.post("/recall", json={"user_id": "1", "features": feats, "k": 5})
        assert ok.status_code == 200
        assert rclient.post("/recall", json={"features": feats, "k": 5}).status_code == 200
        assert rclient.get("/healthz").status_code == 200
        assert rclient.get("/readyz").status_code == 200  # the index and model still serve
        assert 'twotower_feature_store_errors_total{op="get_user"}' in rclient.get("/metrics").text
    finally:
        redis_server.start()
    deadline = time.monotonic() + 10
    while rclient.post("/recall", json={"user_id": "ghost", "k": 5}).status_code != 200:
        assert time.monotonic() < deadline, "did not recover after Redis came back"
        time.sleep(0.1)


def test_redis_unreachable_at_start(model_store: Path, index_root: Path) -> None:
    from tests.conftest import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    s = make_settings(model_store, index_root, None, redis_url=url, redis_timeout_s=0.2)
    with TestClient(create_app(s)) as c:
        assert c.get("/healthz").status_code == 200
        # no alias can be read, so `default` falls back to the newest version with an index
        assert c.get("/readyz").status_code == 200
        assert c.post("/recall", json={"user_id": "1", "k": 3}).status_code == 503
        assert c.post("/recall", json={"features": {"age": 20}, "k": 3}).status_code == 200
