"""Redis faults against real processes: unreachable at start, hung (SIGSTOP) and killed under load,
then back. What needs Redis answers 503 quickly, what carries its own features is served, and the
service recovers by itself."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.state.load import load_into_redis
from tests.conftest import RedisServer
from tests.reliability.conftest import GoodIndex
from tests.reliability.procs import ADMIN, Load, deadline_loop, fmt_counts, summary

pytestmark = pytest.mark.slow

FEATURES = {"age": 30, "gender": "F", "occupation": "writer", "history": ["1", "2"]}
TIMEOUT_S = 0.3  # per Redis call; the store wraps each call in wait_for(2 x this)


def redis_env(base_env: dict[str, str], redis: RedisServer) -> dict[str, str]:
    return {**base_env, "TWOTOWER_REDIS_URL": redis.url, "TWOTOWER_REDIS_TIMEOUT_S": str(TIMEOUT_S)}


def test_redis_unreachable_at_start(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rel_data: Path,
    good_index: GoodIndex,
    report: Callable[[str, str, str], None],
) -> None:
    srv = spawn("serve", redis_env(base_env, own_redis), "api", worker=True)  # Redis not started
    srv.wait_ready()
    assert srv.get("/healthz").status_code == 200

    t0 = time.monotonic()
    r = srv.post("/recall", json={"user_id": "1", "k": 5})
    needs_redis_s = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert "feature store unavailable" in r.json()["detail"] and r.headers["retry-after"]
    assert needs_redis_s < 3, "a Redis call without a timeout"
    detail = r.json()["detail"]
    # Requests that carry their own features do not need Redis.
    assert srv.post("/recall", json={"features": FEATURES, "k": 5}).status_code == 200
    assert srv.post("/recall", json={"user_id": "1", "features": FEATURES, "k": 5}).status_code == 200
    r = srv.post("/score", json={"features": FEATURES, "items": [{"item_id": "1"}, {"item_id": "x"}]})
    assert r.status_code == 200, r.text
    # Admin paths that need Redis: 503 with a detail; those that do not still answer.
    r = srv.post("/admin/reindex", headers=ADMIN, json={})
    assert r.status_code == 503 and "feature store unavailable" in r.json()["detail"], r.text
    assert srv.get("/admin/reindex/abc", headers=ADMIN).status_code == 503
    assert srv.get("/admin/versions", headers=ADMIN).status_code == 200
    assert srv.alive()

    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    up_at = time.monotonic()
    for _ in deadline_loop(30, "recovery once Redis is up"):
        r = srv.post("/recall", json={"user_id": "1", "k": 5})
        if r.status_code == 200 and r.json()["cold_start"] is False:
            break
    recovered_s = time.monotonic() - up_at
    job = srv.reindex()  # the worker inside the server recovered too
    assert job["status"] == "succeeded", job
    srv.wait_build(job["index_build"])

    report(
        "Redis unreachable at start",
        "the service starts and is ready; what needs Redis answers 503 with a clear detail; requests "
        "with their own features succeed; recovers by itself when Redis returns",
        f"ready without Redis; /recall by user_id 503 in {needs_redis_s:.2f} s ({detail!r}); "
        "/recall and /score with features 200; admin reindex 503, versions 200; Redis started later: "
        f"features served again {recovered_s:.1f} s after it was up and loaded, a worker build succeeded, "
        "no restart",
    )


def test_redis_hung_then_killed_under_load(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    own_redis: RedisServer,
    rel_data: Path,
    good_index: GoodIndex,
    report: Callable[[str, str, str], None],
) -> None:
    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    srv = spawn("serve", redis_env(base_env, own_redis), "api", worker=True)
    srv.wait_ready()
    pid = srv.pid
    baseline = srv.post("/recall", json={"user_id": "3", "k": 10}).json()["items"]
    requests = [
        ("/recall", {"user_id": "1", "k": 10}),  # needs Redis
        ("/recall", {"user_id": "2", "features": FEATURES, "k": 10}),  # Redis optional
        ("/score", {"features": FEATURES, "items": [{"item_id": "1"}, {"item_id": "5"}]}),  # no Redis
    ]
    assert own_redis.proc is not None
    with Load(srv.url, requests, threads=3) as load:
        load.wait_count(60)
        hung_at = time.monotonic()
        os.kill(own_redis.proc.pid, signal.SIGSTOP)  # hung: connections accepted, nothing answered
        time.sleep(2.0)
        os.kill(own_redis.proc.pid, signal.SIGKILL)  # then gone
        os.kill(own_redis.proc.pid, signal.SIGCONT)
        own_redis.proc.wait()
        own_redis.proc = None
        time.sleep(1.5)
        own_redis.start()  # empty: no persistence, as after a crash
        load_into_redis(own_redis.url, rel_data)
        back_at = time.monotonic()
        for _ in deadline_loop(30, "recovery after Redis restarted"):
            r = srv.post("/recall", json={"user_id": "1", "k": 5})
            if r.status_code == 200 and r.json()["cold_start"] is False:
                break
        recovered_at = time.monotonic()
        load.wait_count(load.count() + 60)
    outcomes = load.outcomes
    counts = summary(outcomes)
    assert srv.alive() and srv.pid == pid
    no_response = [o for o in outcomes if o.status is None]
    assert not no_response, no_response[:3]  # no hung request, no dropped connection
    assert all(o.status in (200, 503) for o in outcomes), counts
    slowest = max(o.elapsed for o in outcomes)
    assert slowest < 4 * TIMEOUT_S + 2, f"a request took {slowest:.1f}s: a Redis call without a timeout?"
    # 503 only for what needs Redis, and only while it was away.
    failed = [o for o in outcomes if o.status == 503]
    assert failed and all(o.kind == 0 for o in failed), counts
    assert all(hung_at - 0.1 <= o.started <= recovered_at for o in failed)
    # After the outage every request succeeds again, with the right user's features (no crossed replies).
    after = [o for o in outcomes if o.started > recovered_at]
    assert after and all(o.status == 200 for o in after)
    assert srv.post("/recall", json={"user_id": "3", "k": 10}).json()["items"] == baseline
    errors = srv.get("/metrics").text
    assert 'twotower_feature_store_errors_total{op="get_user"}' in errors

    by_kind = {k: summary([o for o in outcomes if o.kind == k]) for k in range(3)}
    report(
        "Redis hung (SIGSTOP 2 s) then killed (SIGKILL) under load, restarted empty 1.5 s later and reloaded",
        "no 500s, no hung requests (a timeout on every Redis call), recovery without a restart",
        f"by user_id: {fmt_counts(by_kind[0])}; with features: {fmt_counts(by_kind[1])}; /score: "
        f"{fmt_counts(by_kind[2])}; slowest request {slowest:.2f} s; served again "
        f"{recovered_at - back_at:.1f} s after Redis returned, same server pid, same answers as before",
    )
