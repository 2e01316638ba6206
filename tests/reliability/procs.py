"""Real processes for the reliability scenarios: `twotower serve|worker`, raw HTTP, a load generator."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "rel-9f2c7e41d0b3a8655e1c"  # distinctive, so a grep of the logs finds any leak of it
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def clean_env(**settings: object) -> dict[str, str]:
    """The test's environment without any TWOTOWER_ variable of the caller, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"TWOTOWER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def deadline_loop(timeout: float, what: str, step: float = 0.05) -> Iterable[int]:
    """Yield until the caller breaks; fail with `what` once `timeout` seconds have passed."""
    end = time.monotonic() + timeout
    n = 0
    while True:
        yield n
        n += 1
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def wait_gone(procs: list[psutil.Process], timeout: float = 10) -> None:
    """Until every process has exited (a zombie counts: an orphan is reaped by init, not by us)."""

    def gone(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    for _ in deadline_loop(timeout, f"processes {[p.pid for p in procs]} to exit", step=0.02):
        if all(gone(p) for p in procs):
            return


class Proc:
    """One `python -m app.cli ...` child with its stdout+stderr in a log file; stopped in `stop()`."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.args = args
        self.log = log
        self.out = open(log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 3000) -> str:
        return self.text()[-n:]

    def wait_log(self, pattern: str, timeout: float = 30) -> str:
        """The first log line matching the regex `pattern`."""
        rx = re.compile(pattern)
        for _ in deadline_loop(timeout, f"log line /{pattern}/ in {self.log.name}"):
            for line in self.text().splitlines():
                if rx.search(line):
                    return line
            assert self.alive() or rx.search(self.text()), f"{self.args} exited:\n{self.tail()}"
        raise AssertionError("unreachable")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (after SIGCONT, in case a test paused it), then SIGKILL; reaps build children too."""
        kids = self.children()
        if self.alive():
            for p in [self.proc.pid, *(k.pid for k in kids)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for k in kids:  # a build child outliving its worker would hold the index store
            with contextlib.suppress(psutil.NoSuchProcess):
                k.kill()
        wait_gone(kids)
        self.out.close()
        return self.proc.returncode


class Server(Proc):
    """`twotower serve` on a free loopback port."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        worker: bool = False,
        preexec_fn: Callable[[], None] | None = None,
        workers: int = 1,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One serving process unless a test asks for more (the scenarios signal and pause that pid).
        args = ["serve", "--port", str(self.port), "--workers", str(workers)]
        args += [] if worker else ["--no-worker"]
        super().__init__(args, env, log, preexec_fn)

    def wait_up(self, timeout: float = 60, path: str = "/healthz") -> None:
        for _ in deadline_loop(timeout, f"{self.url}{path} to answer 200", step=0.1):
            assert self.alive(), f"the server exited ({self.proc.returncode}):\n{self.tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_up(timeout, "/readyz")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=kw.pop("timeout", 10), **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=kw.pop("timeout", 10), **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.put(f"{self.url}{path}", timeout=kw.pop("timeout", 10), **kw)

    def build(self) -> str:
        """The index build that /readyz reports."""
        return str(self.get("/readyz").json()["index_build"])

    def wait_build(self, build_id: str, timeout: float = 30) -> None:
        for _ in deadline_loop(timeout, f"{self.url} to serve build {build_id}"):
            r = self.get("/readyz")
            if r.status_code == 200 and r.json()["index_build"] == build_id:
                return

    def wait_job(self, job_id: str, timeout: float = 90) -> dict[str, Any]:
        for _ in deadline_loop(timeout, f"job {job_id} to finish", step=0.1):
            job: dict[str, Any] = self.get(f"/admin/reindex/{job_id}", headers=ADMIN).json()
            if job["status"] in ("succeeded", "failed"):
                return job
        raise AssertionError("unreachable")

    def reindex(self, timeout: float = 90) -> dict[str, Any]:
        """POST /admin/reindex and wait for the job to end."""
        r = self.post("/admin/reindex", headers=ADMIN, json={})
        assert r.status_code == 202, r.text
        return self.wait_job(r.json()["job_id"], timeout)


# --- raw HTTP: exact request targets and bodies, no client normalisation -------------------------


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed, or up to EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {buf[:200]!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    length = int(headers.get("content-length", "-1"))
    while length < 0 or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def raw_request(
    port: int, head: str, body: bytes = b"", timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line + headers, without the blank line) and `body` as they are."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        return read_response(sock)


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: int  # the index of the request in Load's list
    route: str
    started: float
    elapsed: float
    status: int | None  # None: no HTTP response (the error is in `error`)
    error: str | None
    build: str | None


class Load:
    """Threads sending requests in a loop until stopped; every outcome is recorded.

    `requests` are (route, json body) pairs, taken in turn; `timeout` is the hang detector.
    """

    def __init__(
        self,
        url: str,
        requests: list[tuple[str, dict[str, Any]]],
        threads: int = 2,
        timeout: float = 10,
        pause: float = 0.002,
    ) -> None:
        self.url = url
        self.requests = requests
        self.timeout = timeout
        self.pause = pause
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        return self.outcomes

    def _run(self, i: int) -> None:
        n = i
        with httpx.Client(base_url=self.url, timeout=self.timeout) as client:
            while not self._stop.is_set():
                kind = n % len(self.requests)
                route, body = self.requests[kind]
                n += 1
                t0 = time.monotonic()
                status: int | None = None
                error: str | None = None
                build: str | None = None
                try:
                    r = client.post(route, json=body)
                    status = r.status_code
                    if status == 200:
                        build = r.json().get("index_build")
                    elif status >= 500:
                        error = r.text[:300]
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.outcomes.append(
                        Outcome(kind, route, t0, time.monotonic() - t0, status, error, build)
                    )
                time.sleep(self.pause)

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_count(self, n: int, timeout: float = 30) -> None:
        for _ in deadline_loop(timeout, f"{n} load requests"):
            if self.count() >= n:
                return


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    """{"200": n, "503": n, "ReadTimeout": n, ...}"""
    out: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else (o.error or "?").split(":")[0]
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} x {k}" for k, n in counts.items())


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"
