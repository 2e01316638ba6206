"""`twotower serve --workers 2`, real processes: two replicas on one port, one reindex worker, one
view of the metrics, a crashed process started again, nothing left behind on SIGTERM or SIGKILL."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.state.load import load_into_redis
from tests.conftest import RedisServer
from tests.reliability.procs import ADMIN, Server, deadline_loop, wait_gone

pytestmark = pytest.mark.slow


def serving(srv: Server) -> list[psutil.Process]:
    """The supervisor's serving processes (multiprocessing may add a resource tracker: not one)."""
    out = []
    for k in psutil.Process(srv.pid).children():
        try:
            if k.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(k.cmdline()):
                out.append(k)
        except psutil.NoSuchProcess:
            continue
    return out


def replicas(srv: Server) -> dict[str, Any]:
    body = srv.get("/admin/versions", headers=ADMIN).json()
    return {r["replica"]: r["versions"] for r in body["replicas"]}


def requests_counted(srv: Server) -> float:
    text = srv.get("/metrics").text
    rx = re.compile(r'^twotower_requests_total\{[^}]*route="/recall"[^}]*status="200"[^}]*\} (\S+)$', re.M)
    return sum(float(x) for x in rx.findall(text))


def test_two_processes_one_port(
    spawn: Callable[..., Any], base_env: dict[str, str], own_redis: RedisServer, rel_data: Path
) -> None:
    own_redis.start()
    load_into_redis(own_redis.url, rel_data)
    env = {**base_env, "TWOTOWER_REDIS_URL": own_redis.url, "TWOTOWER_SHUTDOWN_DRAIN_S": "0.2"}
    srv: Server = spawn("serve", env, "api", worker=True, workers=2)
    srv.wait_ready()
    procs = serving(srv)
    assert len(procs) == 2, procs
    # Each process is a full replica with its own record, both serving the same build.
    for _ in deadline_loop(20, "two replica records"):
        seen = replicas(srv)
        if len(seen) == 2 and len({str(v) for v in seen.values()}) == 1:
            break
    build = srv.build()
    # Requests on fresh connections reach both processes; /metrics counts every one of them,
    # whichever process answers the scrape.
    n = 60
    for i in range(n):
        r = httpx.post(f"{srv.url}/recall", json={"user_id": str(1 + i % 50), "k": 5}, timeout=10)
        assert r.status_code == 200, r.text
    for _ in range(6):
        assert requests_counted(srv) == n
    # Their metric files are memory maps on the host's tmpfs, not on a disk filesystem.
    for p in procs:
        files = {m.path for m in p.memory_maps() if "twotower-metrics-" in m.path}
        assert files and all(f.startswith("/dev/shm/") for f in files), files
    # One reindex worker for the service, in one of the two processes; both swap to its build.
    workers = srv.get("/admin/worker", headers=ADMIN).json()["workers"]
    assert len(workers) == 1 and workers[0]["pid"] in {p.pid for p in procs}, workers
    job = srv.reindex()
    assert job["status"] == "succeeded", job
    new = job["index_build"]
    assert new != build
    for _ in deadline_loop(20, f"both replicas on {new}"):
        seen = replicas(srv)
        if len(seen) == 2 and all(new in v.values() for v in seen.values()):
            break
    # A serving process that dies is started again; the service answers throughout.
    victim = procs[1]
    victim.send_signal(signal.SIGKILL)
    wait_gone([victim])
    for _ in deadline_loop(30, "the killed process to be replaced"):
        now = serving(srv)
        if len(now) == 2 and victim.pid not in {p.pid for p in now}:
            break
    srv.wait_ready()
    assert httpx.post(f"{srv.url}/recall", json={"user_id": "1", "k": 5}, timeout=10).status_code == 200
    # SIGTERM: every process drains and exits, the supervisor last, with 0.
    kids = serving(srv)
    srv.send(signal.SIGTERM)
    assert srv.proc.wait(30) == 0
    wait_gone(kids)


def test_sigkill_of_the_supervisor_takes_the_processes_with_it(
    spawn: Callable[..., Any], base_env: dict[str, str], own_redis: RedisServer
) -> None:
    own_redis.start()
    env = {**base_env, "TWOTOWER_REDIS_URL": own_redis.url}
    srv: Server = spawn("serve", env, "api", workers=2)
    srv.wait_ready()
    kids = serving(srv)
    assert len(kids) == 2
    srv.send(signal.SIGKILL)
    wait_gone(kids)


def test_more_than_one_process_needs_redis(spawn: Callable[..., Any], base_env: dict[str, str]) -> None:
    srv: Server = spawn("serve", base_env, "api", workers=2)
    assert srv.proc.wait(60) == 2
    assert "--workers above 1 needs TWOTOWER_REDIS_URL" in srv.text()


def test_preload_names_what_a_serving_process_imports() -> None:
    """The supervisor imports these before it forks (app.serve.preload) so that the processes share
    them; an ImportError is skipped there (optional speedups), so a renamed module would silently
    stop being shared: every name must import here, where the serving extras are installed."""
    import importlib

    from app.serve import LATE_IMPORTS

    for name in LATE_IMPORTS:
        importlib.import_module(name)
