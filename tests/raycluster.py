"""A real Ray cluster of local nodes for the Ray engine's tests, stopped by the pids it started.

`ray stop` stops every Ray on the machine (other test runs, other users'): never used here. Each
node is a `ray start --block` process; stopping one kills that process and everything under it
(the raylet, its workers, the GCS of the head) by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import free_port

RAY = str(Path(sys.executable).with_name("ray"))
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # A killed node is marked dead after ~10 s of missed health checks instead of Ray's ~15-25 s
    # (3 s x 5, plus a timeout): the node-lost test waits for it. Not shorter: on this busy box a
    # live raylet can be slow to answer for a few seconds, and a false death fails every test.
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "10",
}


class LocalCluster:
    """A head and `workers` more nodes on this machine, `cpus` CPUs each."""

    def __init__(self, tmp: Path, workers: int = 1, cpus: int = 1) -> None:
        self.tmp = tmp  # Ray's socket paths must stay short: keep tmp short
        self.workers = workers
        self.cpus = cpus
        self.port = free_port()
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalCluster:
        head = [RAY, "start", "--head", "--block", f"--port={self.port}", f"--temp-dir={self.tmp}"]
        self.nodes.append(self._spawn(head, "head"))
        self._wait_nodes(1)
        for i in range(self.workers):
            self.nodes.append(self._spawn([RAY, "start", "--block", f"--address={self.address}"], f"node{i}"))
        self._wait_nodes(1 + self.workers)
        return self

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        args = [*cmd, f"--num-cpus={self.cpus}", "--include-dashboard=false", "--disable-usage-stats"]
        if "--head" not in cmd:
            args.remove("--include-dashboard=false")
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115  # closed in stop()
        self.logs.append(log)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=ENV)

    def _wait_nodes(self, count: int, timeout_s: float = 90.0) -> None:
        """Until the cluster lists `count` live nodes (each raylet registered with the GCS)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.nodes):
                raise RuntimeError(f"a ray node exited; see {self.tmp}/*.log")
            raylets = [c for p in self.nodes for c in _tree(p.pid) if "raylet" in " ".join(_cmdline(c))[:300]]
            if len(raylets) >= count and self._registered() >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"ray cluster did not reach {count} nodes in {timeout_s}s")

    def _registered(self) -> int:
        """Alive nodes per the GCS: counted from `ray list nodes`-free state, the raylet sockets."""
        sessions = sorted(self.tmp.glob("session_2*"))
        if not sessions:
            return 0
        return len(list((sessions[-1] / "sockets").glob("raylet*")))

    def add_node(self) -> int:
        """One more node joined to the running cluster; returns its index (for kill_node)."""
        name = f"node{len(self.nodes) - 1}"
        self.nodes.append(self._spawn([RAY, "start", "--block", f"--address={self.address}"], name))
        self._wait_nodes(len(self.nodes))
        return len(self.nodes) - 1

    def kill_node(self, index: int) -> None:
        """SIGKILL one node's whole process tree (a node lost)."""
        _kill_tree(self.nodes[index].pid)

    def stop(self) -> None:
        for p in reversed(self.nodes):
            _kill_tree(p.pid)
        for p in self.nodes:
            p.wait(timeout=30)
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    """A head and one more node, 1 CPU each, shared by a test module's cluster tests (starting one
    takes 5-15 s of a busy 2-core box). A test that kills a node adds its own (`add_node`)."""
    pytest.importorskip("ray")
    # Ray's unix socket paths must stay under ~100 bytes: a short directory of our own.
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as tmp:
        cluster = LocalCluster(Path(tmp), workers=1, cpus=1).start()
        try:
            yield cluster
        finally:
            cluster.stop()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _kill_tree(pid: int) -> None:
    for p in reversed(_tree(pid)):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
