"""Chaos, issue 11 cases 10 and 12 on one node (no Redis): `twotower reindex` beside `serve` takes the
build lock, a build child dies with its worker, and a sharply shrunk catalog is refused unless the
operator says otherwise. Real processes: `twotower serve` with its worker, `twotower reindex`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.reindex.build import BUILD_LOCK
from models.manifest import ModelManifest
from tests.data import write_dataset
from tests.reliability.chaos import NOT_NICE, assert_nothing_half_written, current_build
from tests.reliability.procs import (
    ADMIN,
    ROOT,
    Load,
    Proc,
    Server,
    deadline_loop,
    fmt_counts,
    summary,
    wait_gone,
)

pytestmark = pytest.mark.slow

N_BIG = 4000


def build_children(proc: Proc) -> list[psutil.Process]:
    out = []
    for p in proc.children():
        try:
            if "reindex" in p.cmdline():
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def big_catalog(tmp_path: Path, manifest: ModelManifest, rel_data: Path) -> Path:
    """A data dir with the users of `rel_data` and N_BIG items (a build long enough to catch)."""
    data = tmp_path / "data"
    shutil.copytree(rel_data, data)
    big = tmp_path / "big"
    write_dataset(big, manifest, 30, N_BIG, seed=7)
    shutil.copy(big / "items.jsonl", data / "items.jsonl")
    return data


def flock_holders(path: Path) -> set[int]:
    """Pids holding an flock on `path`, from /proc/locks (`N: FLOCK ADVISORY WRITE pid maj:min:inode ...`)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return set()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "FLOCK" and f[5] == inode:
            out.add(int(f[4]))
    return out


def start_build(srv: Server, holding: Path | None = None) -> tuple[str, psutil.Process]:
    """POST /admin/reindex and stop (SIGSTOP) its build child as soon as it is seen, or, with
    `holding`, as soon as it holds an flock on that file; returns the job id and the child."""
    job_id = str(srv.post("/admin/reindex", headers=ADMIN, json={}).json()["job_id"])
    for _ in deadline_loop(60, "the build child" + (f" holding {holding}" if holding else ""), step=0.002):
        kids = build_children(srv)
        if kids and (holding is None or kids[0].pid in flock_holders(holding)):
            kids[0].send_signal(signal.SIGSTOP)
            return job_id, kids[0]
    raise AssertionError("unreachable")


def test_reindex_by_hand_waits_for_the_workers_build(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    manifest: ModelManifest,
    rel_data: Path,
    index_root: Path,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    """Case 10: `twotower reindex` started while the worker's build of the same version runs."""
    data = big_catalog(tmp_path, manifest, rel_data)
    env = {**base_env, **NOT_NICE, "TWOTOWER_DATA_DIR": str(data), "TWOTOWER_INDEX__BATCH_SIZE": "32"}
    srv: Server = spawn("serve", env, "api", worker=True)
    srv.wait_ready()
    with Load(srv.url, [("/recall", {"user_id": "1", "k": 10})], threads=1) as load:
        # The worker's build child holds still, mid-way, holding the version's build lock.
        job_id, child = start_build(srv, holding=index_root / version / BUILD_LOCK)
        by_hand = Proc(["reindex", "--model-version", version], env, tmp_path / "by-hand.log")
        try:
            by_hand.wait_log("waiting for the build lock", timeout=60)
            time.sleep(1.0)
            assert by_hand.alive(), by_hand.tail()  # still waiting: nothing of its own published
            child.send_signal(signal.SIGCONT)
            job = srv.wait_job(job_id, timeout=90)
            assert job["status"] == "succeeded", job
            assert by_hand.proc.wait(120) == 0, by_hand.tail()
        finally:
            by_hand.stop()
        mine = by_hand.wait_log(r"build \S+ is current").split("build ")[1].split()[0]
        assert mine > job["index_build"] and current_build(index_root, version) == mine
        srv.wait_build(mine, timeout=30)
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert_nothing_half_written(index_root)
    report(
        "One node, no Redis: `twotower reindex` started while the worker's build of the same version "
        "is paused mid-way",
        "the hand-run build waits for the file lock; both publish in turn; nothing half-written",
        f"the hand-run build waited while the worker's was paused, then built after it; the worker's "
        f"{job['index_build']} then {mine} were published in turn; the replica serves {mine}; load "
        f"{fmt_counts(counts)}",
    )


def test_build_child_dies_with_its_worker(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    manifest: ModelManifest,
    rel_data: Path,
    index_root: Path,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    """Case 10: the worker (here the API process that runs it) SIGKILLed mid-build, alone."""
    data = big_catalog(tmp_path, manifest, rel_data)
    env = {**base_env, **NOT_NICE, "TWOTOWER_DATA_DIR": str(data), "TWOTOWER_INDEX__BATCH_SIZE": "32"}
    srv: Server = spawn("serve", env, "api1", worker=True)
    srv.wait_ready()
    good = current_build(index_root, version)
    # The child stalled where it writes nothing to its worker (a stopped child stands for the index
    # training or the file writes: an orphan there would never hit the closed pipe, and go on to
    # publish); then its parent alone is killed, as an OOM kill of the API would.
    _, child = start_build(srv)
    srv.send(signal.SIGKILL)
    srv.proc.wait()
    killed = time.monotonic()
    try:
        wait_gone([child], timeout=10)
    finally:
        if child.is_running():
            child.kill()  # an orphan: no fixture knows it
    gone_s = time.monotonic() - killed
    assert current_build(index_root, version) == good
    again: Server = spawn("serve", env, "api2", worker=True)
    again.wait_ready()
    job = again.reindex()
    assert job["status"] == "succeeded" and job["items"] == N_BIG, job
    again.wait_build(job["index_build"])
    assert_nothing_half_written(index_root)
    report(
        "One node: the process running the worker SIGKILLed mid-build while its build child was stalled "
        "(SIGSTOP, standing for a phase that writes nothing to the worker)",
        "the build child dies with it; nothing half-written; the next build succeeds",
        f"build child gone {gone_s:.1f} s after its parent; CURRENT unchanged; after a restart the next "
        f"build ({N_BIG} items) succeeded and is served",
    )


def test_shrunk_catalog_is_refused_without_override(
    tmp_path: Path,
    spawn: Callable[..., Any],
    base_env: dict[str, str],
    rel_data: Path,
    index_root: Path,
    version: str,
    report: Callable[[str, str, str], None],
) -> None:
    """Case 12: the catalog lost most of its items since the last build (a half-done load)."""
    data = tmp_path / "data"
    shutil.copytree(rel_data, data)
    lines = (data / "items.jsonl").read_text().splitlines(keepends=True)
    (data / "items.jsonl").write_text("".join(lines[: len(lines) // 4]))  # 300 -> 75 items
    env = {**base_env, **NOT_NICE, "TWOTOWER_DATA_DIR": str(data)}
    good = current_build(index_root, version)
    by_hand = subprocess.run(
        [sys.executable, "-m", "app.cli", "reindex", "--model-version", version],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert by_hand.returncode == 2 and "catalog shrank" in by_hand.stderr, by_hand.stderr[-2000:]
    assert current_build(index_root, version) == good
    srv: Server = spawn("serve", env, "api", worker=True)
    srv.wait_ready()
    with Load(srv.url, [("/recall", {"user_id": "1", "k": 10})], threads=1) as load:
        refused = srv.reindex()
        assert refused["status"] == "failed", refused
        assert "catalog shrank from 300 items" in refused["error"] and "allow_shrink" in refused["error"]
        assert current_build(index_root, version) == good and srv.build() == good
        r = srv.post("/admin/reindex", headers=ADMIN, json={"allow_shrink": True})
        assert r.status_code == 202, r.text
        forced = srv.wait_job(r.json()["job_id"])
        assert forced["status"] == "succeeded" and forced["items"] == len(lines) // 4, forced
        srv.wait_build(forced["index_build"])
    counts = summary(load.outcomes)
    assert set(counts) == {"200"}, counts
    assert_nothing_half_written(index_root)
    report(
        "The catalog shrank from 300 to 75 items since the current build (a reindex during a half-done load)",
        "refused (by hand and by the worker) with the reason; built only with an explicit override",
        f"`twotower reindex` exit 2; the job failed with {refused['error']!r}; with "
        f'{{"allow_shrink": true}} it built {forced["items"]} items and swapped in; '
        f"load {fmt_counts(counts)}",
    )
