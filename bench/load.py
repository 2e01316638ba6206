"""HTTP load generation from separate processes: a lean HTTP/1.1 keep-alive client, and wrk when installed.

The client is a few dozen lines on asyncio streams (uvloop when available) instead of httpx: on a
2-core box every CPU cycle the load generator spends is taken from the service it measures, and
httpx costs several times more client CPU per request (the results record the client's own CPU).

Two modes. Closed loop (`rate == 0`): `concurrency` connections each send the next request as soon
as the previous answer arrives; latency runs from the send. Open loop (`rate > 0`): request i is due
at start + i / rate and goes out on the first free connection; when the client is behind schedule
(every connection busy) latency runs from the due time, so queueing is not hidden (no coordinated
omission); when a connection waited for the slot, from the actual send (timer jitter is not latency).

    spec = LoadSpec(port=8000, path="/recall", bodies_file="bodies.jsonl", concurrency=16, duration_s=5)
    result = run_load(spec)                    # in a child process: python -m bench.load SPEC OUT
    summary = summarize(result)                # p50/p95/p99 ms, req/s, failures
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_BUILD = b'"index_build"'
_ITEMS = b'"items"'


@dataclass(frozen=True)
class LoadSpec:
    port: int
    path: str
    bodies_file: str  # one JSON request body per line, sent in turn
    concurrency: int
    duration_s: float  # measured window after the warm-up; SIGTERM ends it early (the result is kept)
    rate: float = 0.0  # requests per second in total; 0 = closed loop
    warmup_s: float = 0.0
    record: bool = False  # keep each response's index_build and a digest of its items
    timeout_s: float = 30.0
    host: str = "127.0.0.1"


@dataclass
class LoadResult:
    """Every measured request: due/send time (monotonic, comparable across processes on Linux),
    latency (s) and HTTP status (0 = connection error or timeout)."""

    spec: dict[str, Any]
    t: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    req: list[int] = field(default_factory=list)  # which body (recorded runs only)
    build: list[int] = field(default_factory=list)  # index into `builds` (recorded runs only; -1 none)
    digest: list[int] = field(default_factory=list)  # crc32 of the items part of the body
    builds: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # first body per (req, build, digest)
    errors: dict[str, int] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)  # measured window (monotonic start, end)
    cpu_s: float = 0.0  # the client's own CPU time
    behind: int = 0  # open loop: requests that went out later than due

    @property
    def measured_s(self) -> float:
        return max(1e-9, self.window[1] - self.window[0])


# --- the client (runs in the child process) ----------------------------------------------------


class HTTPError(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    i = low.find(b"\r\ncontent-length:")
    if i < 0:
        raise HTTPError("response without content-length (chunked responses are not supported)")
    j = low.index(b"\r\n", i + 2)
    body = await reader.readexactly(int(low[i + 17 : j]))
    return status, body


def _request_bytes(spec: LoadSpec, body: bytes) -> bytes:
    head = (
        f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _run(spec: LoadSpec, bodies: list[bytes]) -> LoadResult:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    requests = [_request_bytes(spec, b) for b in bodies]
    res = LoadResult(spec=asdict(spec))
    build_ix: dict[bytes, int] = {}
    seen: set[tuple[int, int, int]] = set()
    errors: Counter[str] = Counter()
    counter = itertools.count()
    cpu0 = time.process_time()
    start = time.monotonic()
    measure_from = start + spec.warmup_s
    end = measure_from + spec.duration_s
    mono = time.monotonic

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while not stop.is_set():
            i = next(counter)
            if spec.rate > 0:
                due = start + i / spec.rate
                if due >= end:
                    break
                wait = due - mono()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if stop.is_set():
                        break
                    t0 = mono()
                else:
                    t0 = due
                    res.behind += 1
            else:
                t0 = mono()
                if t0 >= end:
                    break
            ix = i % len(requests)
            status, body = 0, b""
            try:
                async with asyncio.timeout(spec.timeout_s):
                    if writer is None:
                        reader, writer = await asyncio.open_connection(spec.host, spec.port)
                    assert reader is not None
                    writer.write(requests[ix])
                    status, body = await _read_response(reader)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, HTTPError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
            t1 = mono()
            if t0 < measure_from:
                continue
            res.t.append(t0)
            res.latency.append(t1 - t0)
            res.status.append(status)
            if spec.record:
                b, d = -1, 0
                p = body.find(_BUILD)
                if p >= 0:
                    start_q = body.index(b'"', body.index(b":", p + len(_BUILD))) + 1
                    name = body[start_q : body.index(b'"', start_q)]
                    b = build_ix.setdefault(name, len(build_ix))
                    d = zlib.crc32(body[body.find(_ITEMS) :])
                res.req.append(ix)
                res.build.append(b)
                res.digest.append(d)
                if (ix, b, d) not in seen and status == 200:
                    seen.add((ix, b, d))
                    res.samples.append({"req": ix, "build": b, "digest": d, "body": body.decode()})
        if writer is not None:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(spec.concurrency)))
    res.window = (measure_from, min(mono(), end) if stop.is_set() else end)
    res.builds = [k.decode() for k, _ in sorted(build_ix.items(), key=lambda kv: kv[1])]
    res.errors = dict(errors)
    res.cpu_s = time.process_time() - cpu0
    return res


def _child(spec_path: str, out_path: str) -> int:
    spec = LoadSpec(**json.loads(Path(spec_path).read_text()))
    bodies = [line.encode() for line in Path(spec.bodies_file).read_text().splitlines() if line.strip()]
    if not bodies:
        raise SystemExit(f"{spec.bodies_file}: no request bodies")
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(_run(spec, bodies))
    tmp = Path(out_path + ".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    os.replace(tmp, out_path)
    return 0


# --- the orchestrator side ---------------------------------------------------------------------


def write_bodies(path: Path, bodies: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    return path


class LoadProcess:
    """One load-generator child process; `wait()` returns its result."""

    def __init__(self, spec: LoadSpec, workdir: Path) -> None:
        self.spec = spec
        fd, name = tempfile.mkstemp(prefix="load-", suffix=".json", dir=workdir)
        os.close(fd)
        self.spec_path = Path(name)
        self.out_path = self.spec_path.with_suffix(".out.json")
        self.spec_path.write_text(json.dumps(asdict(spec)))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load", str(self.spec_path), str(self.out_path)], cwd=ROOT
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> LoadResult:
        budget = self.spec.warmup_s + self.spec.duration_s + self.spec.timeout_s + 30
        code = self.proc.wait(timeout=budget)
        if code != 0 or not self.out_path.exists():
            raise RuntimeError(f"load generator exited with code {code}")
        raw = json.loads(self.out_path.read_text())
        raw["window"] = tuple(raw["window"])
        self.out_path.unlink()
        self.spec_path.unlink()
        return LoadResult(**raw)


def merge(results: list[LoadResult]) -> LoadResult:
    """Several processes' results as one (recorded fields are not merged: one process records)."""
    if len(results) == 1:
        return results[0]
    out = LoadResult(spec=results[0].spec)
    for r in results:
        out.t += r.t
        out.latency += r.latency
        out.status += r.status
        out.cpu_s += r.cpu_s
        out.behind += r.behind
        for k, v in r.errors.items():
            out.errors[k] = out.errors.get(k, 0) + v
    out.window = (min(r.window[0] for r in results), max(r.window[1] for r in results))
    return out


def run_load(spec: LoadSpec, workdir: Path, processes: int = 1) -> LoadResult:
    """Run `spec` split over `processes` child processes (concurrency and rate are divided)."""
    if processes > 1:
        per = [
            LoadSpec(
                **{
                    **asdict(spec),
                    "concurrency": max(1, spec.concurrency // processes),
                    "rate": spec.rate / processes,
                }
            )
            for _ in range(processes)
        ]
    else:
        per = [spec]
    procs = [LoadProcess(s, workdir) for s in per]
    return merge([p.wait() for p in procs])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summarize(result: LoadResult, since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """Latency percentiles (ms) of successful requests, throughput and failures within [since, until)."""
    lo = result.window[0] if since is None else since
    hi = result.window[1] if until is None else until
    idx = [i for i, t in enumerate(result.t) if lo <= t < hi]
    ok = [result.latency[i] for i in idx if result.status[i] == 200]
    failed = sum(1 for i in idx if result.status[i] != 200)
    span = max(1e-9, hi - lo)
    return {
        "requests": len(idx),
        "failed": failed,
        "p50_ms": percentile(ok, 50) * 1e3,
        "p95_ms": percentile(ok, 95) * 1e3,
        "p99_ms": percentile(ok, 99) * 1e3,
        "max_ms": (max(ok) * 1e3) if ok else math.nan,
        "rps": len(ok) / span,
        "client_cpu_ms_per_req": result.cpu_s * 1e3 / max(1, len(result.t)),
        "errors": dict(result.errors),
    }


# --- wrk (optional cross-check) ----------------------------------------------------------------

_WRK_LUA = """
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,\\"non2xx\\":%d," ..
    "\\"p50_us\\":%d,\\"p90_us\\":%d,\\"p99_us\\":%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_available() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    port: int,
    path: str,
    bodies_file: Path,
    concurrency: int,
    duration_s: float,
    workdir: Path,
    threads: int = 1,
) -> dict[str, Any]:
    """Closed-loop load with wrk (one thread by default: the box has 2 cores); its own percentiles."""
    exe = wrk_available()
    if exe is None:
        raise RuntimeError("wrk is not installed")
    script = workdir / "bench.lua"
    script.write_text(_WRK_LUA)
    cmd = [
        exe,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{path}",
        "--",
        str(bodies_file),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"wrk printed no summary: {out[-500:]}")
    raw = json.loads(m.group(1))
    secs = raw["duration_us"] / 1e6
    return {
        "concurrency": concurrency,
        "threads": threads,
        "rps": (raw["requests"] - raw["non2xx"]) / secs,
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "failed": raw["errors"] + raw["non2xx"],
        "requests": raw["requests"],
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.load SPEC.json OUT.json")
    sys.exit(_child(sys.argv[1], sys.argv[2]))
