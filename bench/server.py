"""The processes under test: twotower (`python -m app.cli serve --no-worker [--workers N]`) and the
glue peer (`uvicorn bench.glue:app --workers N`), each on a free port, stopped on exit."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc, no psutil needed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """`pid` and every descendant (uvicorn's worker processes), from /proc's children lists."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += proc_cpu_s(p)
        except OSError:
            pass
    return total


def proc_rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory of a process, MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


class ServiceProcess:
    """One twotower service with the given settings (environment `TWOTOWER_*`), stopped on exit.

    with ServiceProcess({"TWOTOWER_INDEX_STORE": "/tmp/x"}, log=Path("/tmp/x.log")) as svc:
        httpx.post(f"{svc.url}/recall", json={"user_id": "1"})

    `workers > 1` runs `serve --workers N` (that many serving processes on the port); CPU and
    memory then cover the whole process tree.
    """

    name = "twotower"
    ready_path = "/readyz"

    def __init__(
        self, env: Mapping[str, str], log: Path, ready_timeout_s: float = 300.0, workers: int = 1
    ) -> None:
        self.env = dict(env)
        self.log = log
        self.port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> tuple[list[str], dict[str, str]]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        env = {**base, "TWOTOWER_LOG_LEVEL": "WARNING", "TWOTOWER_SHUTDOWN_DRAIN_S": "0", **self.env}
        cmd = [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", "127.0.0.1"]
        # `--workers 1` too where `serve` takes it: with Redis its default is every core.
        if self.workers > 1 or serve_has_workers():
            cmd += ["--workers", str(self.workers)]
        return [*cmd, "--port", str(self.port)], env

    def start(self) -> ServiceProcess:
        cmd, env = self.command()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
                try:
                    if client.get(f"{self.url}{self.ready_path}").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    msg = f"{self.name} was not ready in {self.ready_timeout_s}s"
                    raise RuntimeError(f"{msg}:\n{self.tail()}")
                time.sleep(0.2)
        if self.workers > 1:
            self._settle(deadline)
        return self

    def _settle(self, deadline: float) -> None:
        """One worker answering says nothing of the others: wait until every worker process exists
        and the tree has gone idle (each has loaded its model and index)."""
        before = tree_cpu_s(self.pid)
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = tree_cpu_s(self.pid)
            if len(tree_pids(self.pid)) > self.workers and now - before < 0.05:
                return
            before = now
        raise RuntimeError(f"{self.name}: {self.workers} workers did not settle:\n{self.tail()}")

    def health(self) -> dict[str, Any]:
        with httpx.Client(timeout=5) as client:
            body: dict[str, Any] = client.get(f"{self.url}/readyz").json()
            return body

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with httpx.Client(timeout=30) as client:
            r = client.post(f"{self.url}{path}", json=dict(body))
            r.raise_for_status()
            out: dict[str, Any] = r.json()
            return out

    def cpu_s(self) -> float:
        return tree_cpu_s(self.pid)

    def memory(self) -> dict[str, float]:
        """Resident memory of the whole tree (current and peak summed over its processes), MiB."""
        out = {"rss_mb": 0.0, "peak_rss_mb": 0.0}
        for p in tree_pids(self.pid):
            try:
                for key, value in proc_rss_mb(p).items():
                    out[key] += value
            except OSError:
                pass
        return out

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class GlueProcess(ServiceProcess):
    """The glue peer (bench/glue.py) under `uvicorn --workers N`, on the same model and index files.

    with GlueProcess(model_dir, index_dir, data_dir, log, workers=2) as glue: ...
    """

    name = "glue peer"
    ready_path = "/healthz"

    def __init__(
        self,
        model_dir: Path,
        index_dir: Path,
        data_dir: Path,
        log: Path,
        workers: int = 1,
        sync: bool = False,
        ready_timeout_s: float = 300.0,
    ) -> None:
        env = {
            "GLUE_MODEL_DIR": str(model_dir),
            "GLUE_INDEX_DIR": str(index_dir),
            "GLUE_DATA_DIR": str(data_dir),
            "GLUE_SYNC": "1" if sync else "0",
            "OMP_NUM_THREADS": "1",  # the service's default: one Faiss thread per search
        }
        super().__init__(env, log, ready_timeout_s, workers)

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **self.env}
        cmd = [sys.executable, "-m", "uvicorn", "bench.glue:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        return cmd, env


@functools.cache
def serve_has_workers() -> bool:
    """Whether this checkout's `twotower serve` takes `--workers` (several serving processes)."""
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    return "--workers" in out.stdout


class RedisServer:
    """A redis-server of the bench's own on a free loopback port, without persistence, holding the
    users (features and histories) as `twotower load` writes them: several twotower processes share
    their state through Redis, so their feature lookups go there.

    with RedisServer(workdir, data_dir) as redis: env["TWOTOWER_REDIS_URL"] = redis.url
    """

    def __init__(self, workdir: Path, data_dir: Path) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.users = 0

    def __enter__(self) -> RedisServer:
        import shutil

        import redis

        from app.state.load import load_into_redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError("redis-server did not answer within 10 s") from None
                time.sleep(0.05)
        client.close()
        # The users only (what /recall reads): the same files with an empty catalog beside them.
        users_only = self.workdir / "data-users-only"
        users_only.mkdir(exist_ok=True)
        for f in self.data_dir.iterdir():
            if f.name.startswith("items."):
                (users_only / f.name).write_text("")
            elif not (users_only / f.name).exists():
                (users_only / f.name).symlink_to(f)
        try:
            self.users, _ = load_into_redis(self.url, users_only)
        except BaseException:
            self.__exit__(None, None, None)  # __exit__ is not called when __enter__ raises
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
