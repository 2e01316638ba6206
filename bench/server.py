"""The service under test as a real child process: `python -m app.cli serve --no-worker` on a free port."""

from __future__ import annotations

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


def proc_rss_mb(pid: int) -> dict[str, float]:
    """Current and peak resident memory of a process, MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


class ServiceProcess:
    """One API process with the given settings (environment `TWOTOWER_*`), stopped on exit.

    with ServiceProcess({"TWOTOWER_INDEX_STORE": "/tmp/x"}, log=Path("/tmp/x.log")) as svc:
        httpx.post(f"{svc.url}/recall", json={"user_id": "1"})
    """

    def __init__(
        self, env: Mapping[str, str], log: Path, ready_timeout_s: float = 300.0, workers: int = 1
    ) -> None:
        self.env = dict(env)
        self.workers = workers  # serving processes (`--workers`; more than 1 needs TWOTOWER_REDIS_URL)
        self.log = log
        self.port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServiceProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        env = {**base, "TWOTOWER_LOG_LEVEL": "WARNING", "TWOTOWER_SHUTDOWN_DRAIN_S": "0", **self.env}
        cmd = [sys.executable, "-m", "app.cli", "serve", "--no-worker", "--host", "127.0.0.1"]
        cmd += ["--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=5) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the service exited ({self.proc.returncode}):\n{self.tail()}")
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the service was not ready in {self.ready_timeout_s}s:\n{self.tail()}"
                    )
                time.sleep(0.2)

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
        return proc_cpu_s(self.pid)

    def memory(self) -> dict[str, float]:
        return proc_rss_mb(self.pid)

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
