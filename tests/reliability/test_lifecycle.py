"""The server's life under load: a dozen reindex-and-swap cycles (memory back near its baseline, no
failed request), and SIGTERM (readiness 503 first, in-flight requests complete)."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.manifest import ModelManifest
from tests.data import write_dataset
from tests.reliability.procs import Load, Server, deadline_loop, fmt_counts, mib, read_response, summary

pytestmark = pytest.mark.slow

CYCLES = 12  # 10 after the baseline: a leaked snapshot each would be ~70 MB, past SLACK
N_ITEMS = 10_000  # ~7 MB per snapshot (vectors, index, ids, id map): a leak of a few shows in RSS
SLACK = 48 * 2**20


def test_reindex_cycles_under_load(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    manifest: ModelManifest,
    report: Callable[[str, str, str], None],
) -> None:
    data = tmp_path / "data"
    write_dataset(data, manifest, 30, N_ITEMS, seed=11)
    srv: Server = spawn("serve", {**base_env, "TWOTOWER_DATA_DIR": str(data)}, "api", worker=True)
    srv.wait_ready()
    requests = [
        ("/recall", {"user_id": "1", "k": 50}),
        ("/score", {"user_id": "2", "items": [{"item_id": str(i)} for i in range(1, 200)]}),
        ("/recall", {"features": {"age": 40, "history": ["1", "2"]}, "k": 20, "exclude_item_ids": ["3"]}),
    ]
    rss: list[int] = []
    builds: list[str] = []
    started = time.monotonic()
    with Load(srv.url, requests, threads=2, pause=0.005) as load:
        for _ in range(CYCLES):
            job = srv.reindex()
            assert job["status"] == "succeeded", job
            assert job["items"] == N_ITEMS
            srv.wait_build(job["index_build"])
            builds.append(job["index_build"])
            rss.append(srv.rss())
        load.wait_count(load.count() + 50)
    elapsed = time.monotonic() - started
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert len(set(builds)) == CYCLES
    baseline = rss[1]  # after two swaps of the full-size catalog: allocator pools are warm
    final = rss[-1]
    assert final - baseline < SLACK, f"RSS grew from {mib(baseline)} to {mib(final)}: {[mib(r) for r in rss]}"
    served = {o.build for o in load.outcomes}
    assert len(served) >= CYCLES // 2  # traffic really crossed the swaps

    report(
        f"{CYCLES} reindex-and-swap cycles ({N_ITEMS} items, worker builds) under load",
        f"RSS of the server returns near its baseline (< {mib(SLACK)} above it: no leaked snapshots); "
        "zero failed requests",
        f"{CYCLES} builds swapped in {elapsed:.0f} s; server RSS {mib(baseline)} after cycle 2, "
        f"{mib(min(rss))}..{mib(max(rss))} over the run, {mib(final)} after cycle {CYCLES} "
        f"({(final - baseline) / 2**20:+.0f} MiB); {fmt_counts(counts)} across {len(served)} builds",
    )


def test_sigterm_under_load_drains(
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    report: Callable[[str, str, str], None],
) -> None:
    drain_s = 2.0
    srv: Server = spawn("serve", {**base_env, "TWOTOWER_SHUTDOWN_DRAIN_S": str(drain_s)}, "api")
    srv.wait_ready()
    body = json.dumps({"user_id": "1", "k": 10}).encode()
    half = len(body) // 2
    # A request in flight across the whole shutdown: headers and half its body now, the rest later.
    slow = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    try:
        slow.sendall(
            b"POST /recall HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:half]
        )
        with Load(srv.url, [("/recall", {"user_id": "2", "k": 10})], threads=2) as load:
            load.wait_count(50)
            sigterm_at = time.monotonic()
            srv.send(signal.SIGTERM)
            for _ in deadline_loop(drain_s, "readiness to turn 503", step=0.02):
                r = httpx.get(f"{srv.url}/readyz", timeout=2)
                if r.status_code == 503:
                    break
            not_ready_s = time.monotonic() - sigterm_at
            assert r.json()["detail"] == "shutting down"
            during = httpx.post(f"{srv.url}/recall", json={"user_id": "3", "k": 5}, timeout=5)
            assert during.status_code == 200  # still serving while the balancer takes it out
            for _ in deadline_loop(drain_s + 10, "the listener to close", step=0.05):
                try:
                    socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
                except OSError:
                    break
            closed_s = time.monotonic() - sigterm_at
            assert srv.alive()  # the in-flight request holds the shutdown
            slow.sendall(body[half:])
            status, _, payload = read_response(slow)
        exit_code = srv.proc.wait(15)
    finally:
        slow.close()
    assert status == 200 and len(json.loads(payload)["items"]) == 10, payload
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete: that exit status is graceful.
    assert exit_code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.text()
    outcomes = load.outcomes
    counts = summary(outcomes)
    answered = [o for o in outcomes if o.status is not None]
    assert all(o.status == 200 for o in answered), counts
    # Refused connections only once the listener had closed, never during the drain.
    early = [o for o in outcomes if o.status is None and o.started < sigterm_at + drain_s - 0.2]
    assert not early, early[:3]
    srv.wait_log(r"draining for 2\.0s before closing")

    report(
        f"SIGTERM under load (shutdown_drain_s={drain_s:.0f}), with a request whose body is still arriving",
        "readiness goes 503 first and the server keeps serving during the drain; in-flight requests "
        "complete; a graceful exit",
        f"/readyz 503 `shutting down` {not_ready_s * 1000:.0f} ms after SIGTERM, /recall still 200; "
        f"listener closed after {closed_s:.1f} s; the in-flight request finished 200 after that; lifespan "
        f"shutdown complete, exit status {exit_code} (uvicorn re-raises SIGTERM); load "
        f"{fmt_counts(counts)} (connection errors only after the listener closed)",
    )
