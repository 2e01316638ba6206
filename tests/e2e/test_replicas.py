"""Two API replicas, one worker and Redis, all real processes: a reindex asked of one replica is
built once by the worker and served by both, with no failed request during the swap."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from models.manifest import ModelManifest
from tests.app.conftest import TOKEN
from tests.conftest import free_port
from tests.data import write_dataset

pytestmark = pytest.mark.slow
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def twotower(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.out = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args], env=env, stdout=self.out, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def wait_ready(url: str, proc: Proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready:\n{proc.log.read_text()[-3000:]}")


@pytest.fixture
def cluster(
    tmp_path: Path, redis_url: str, model_store: Path, manifest: ModelManifest
) -> Iterator[tuple[list[str], dict[str, str]]]:
    data = tmp_path / "data"
    write_dataset(data, manifest, 30, 300, seed=3)
    env = {
        **os.environ,
        "TWOTOWER_REDIS_URL": redis_url,
        "TWOTOWER_MODEL_STORE": str(model_store),
        "TWOTOWER_INDEX_STORE": str(tmp_path / "index"),
        "TWOTOWER_DATA_DIR": str(data),
        "TWOTOWER_ADMIN_TOKEN": TOKEN,
        "TWOTOWER_POLL_INTERVAL_S": "0.3",
        "TWOTOWER_SHUTDOWN_DRAIN_S": "0",
        "TWOTOWER_LOCK_TTL_S": "5",
    }
    out = twotower("load", "--data", str(data), env=env)
    assert out.returncode == 0, out.stderr
    out = twotower("reindex", env=env)
    assert out.returncode == 0, out.stderr
    procs: list[Proc] = []
    urls = []
    try:
        for i in range(2):
            port = free_port()
            procs.append(Proc(["serve", "--port", str(port), "--no-worker"], env, tmp_path / f"api{i}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        procs.append(Proc(["worker"], env, tmp_path / "worker.log"))
        for url, proc in zip(urls, procs, strict=False):
            wait_ready(url, proc)
        yield urls, env
    finally:
        for p in procs:
            p.stop()


def test_reindex_on_one_replica_served_by_both(cluster: tuple[list[str], dict[str, str]]) -> None:
    urls, _ = cluster
    body = {"user_id": "1", "k": 20}
    first = [httpx.post(f"{u}/recall", json=body).json() for u in urls]
    old_build = first[0]["index_build"]
    assert first[1]["index_build"] == old_build
    assert first[0]["cold_start"] is False  # features came from Redis

    results: list[tuple[int, str | None, tuple[tuple[str, float], ...]]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                r = c.post(f"{url}/recall", json=body)
                j = r.json() if r.status_code == 200 else {}
                items = tuple((it["item_id"], round(it["score"], 5)) for it in j.get("items", []))
                results.append((r.status_code, j.get("index_build"), items))

    threads = [threading.Thread(target=load, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    try:
        r = httpx.post(f"{urls[0]}/admin/reindex", headers=ADMIN, json={})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while True:  # job status lives in Redis: the other replica can answer for it
            job = httpx.get(f"{urls[1]}/admin/reindex/{job_id}", headers=ADMIN).json()
            if job["status"] in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        new_build = job["index_build"]
        assert new_build != old_build
        deadline = time.monotonic() + 10
        for u in urls:
            while httpx.post(f"{u}/recall", json=body).json()["index_build"] != new_build:
                assert time.monotonic() < deadline, f"{u} did not pick up {new_build}"
                time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert results and all(status == 200 for status, _, _ in results), {s for s, _, _ in results}
    builds = {b for _, b, _ in results}
    assert builds <= {old_build, new_build} and new_build in builds
    # every response's items are exactly those of the build it names (never a half-swapped state)
    per_build: dict[str | None, set[tuple[tuple[str, float], ...]]] = {}
    for _, b, items in results:
        per_build.setdefault(b, set()).add(items)
    assert all(len(v) == 1 for v in per_build.values()), {b: len(v) for b, v in per_build.items()}
    versions = httpx.get(f"{urls[1]}/admin/versions", headers=ADMIN).json()
    assert versions["versions"][0]["index_build"] == new_build
