"""The reindex worker: takes jobs off the queue, holds the version's lock, runs the build child.

The parent holds and renews the version's lock; the child checks it (fencing) right before it
publishes, so a build that outlived its lock is never made current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.metrics import Metrics
from app.reindex import child, cpu
from app.reindex.jobs import ACTIVE_TTL_S, MAX_ATTEMPTS, TERMINAL, submit
from app.settings import Settings
from app.state import FeatureStore, make_store
from models.errors import StoreUnavailable

log = logging.getLogger(__name__)


class Worker:
    """Runs queued jobs one at a time. `on_built(version)` lets the API load the build at once.

    Survives any single failure: a job whose run raises is failed with the reason (or handed back,
    if the store was unreachable), the loop backs off and goes on. Liveness: the gauge
    `twotower_worker_last_loop_timestamp_seconds`, and a status record in the store (heartbeat)
    that `GET /admin/worker` lists.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        metrics: Metrics,
        versions: Callable[[], list[str]],
        on_built: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.versions = versions
        self.on_built = on_built
        self.current: asyncio.subprocess.Process | None = None
        self.cycle: cpu.DutyCycle | None = None  # the running build's CPU cap, if any
        self.lease_s = settings.lock_ttl_s
        host = socket.gethostname()
        self.status: dict[str, Any] = {
            "worker_id": f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            "host": host,
            "pid": os.getpid(),
            "state": "starting",
            "job_id": None,
            "started_at": time.time(),
            "last_loop_at": time.time(),
            "seen_at": time.time(),
            "lease_s": self.lease_s,
            "jobs_done": 0,
            "failures": 0,
            "last_error": None,
        }
        self.owner: str = self.status["worker_id"]  # the lease holder's name in the queue
        self._beat_at = 0.0
        self._lost: set[str] = set()  # jobs whose lease ran out under this worker

    async def run(self) -> None:
        """Forever: hand back expired leases, take a job, run it; enqueue every version on the period."""
        period = self.settings.reindex_interval_s
        next_periodic = time.monotonic() + period if period > 0 else float("inf")
        streak = 0  # failures in a row: the backoff grows with it
        while True:
            self.status.update(state="idle", job_id=None, last_loop_at=time.time())
            self.metrics.worker_last_loop.set(time.time())
            await self._beat()
            try:
                if time.monotonic() >= next_periodic:
                    next_periodic = time.monotonic() + period
                    for v in self.versions():
                        await submit(self.store, v)
                for back in await self.store.reap_jobs():
                    log.warning("job %s handed back: its worker's lease ran out", back)
                job_id = await self.store.take_job(self.owner, self.lease_s)
            except StoreUnavailable as exc:
                log.warning("worker: %s", exc)
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            except Exception as exc:  # the loop must outlive any one failure
                streak += 1
                self._failed(exc, "worker loop")
                await asyncio.sleep(self._backoff(streak))
                continue
            if job_id is None:
                await asyncio.sleep(min(0.2, self.settings.poll_interval_s))
                continue
            try:
                await self.execute(job_id)
                streak = 0
            except StoreUnavailable as exc:
                streak += 1
                self.status["last_error"] = str(exc)
                log.error("worker: job %s interrupted: %s", job_id, exc)
                await asyncio.sleep(self._backoff(streak))
            except Exception as exc:
                streak += 1
                self._failed(exc, f"job {job_id}")
                await self._beat(force=True)
                await asyncio.sleep(self._backoff(streak))

    def _backoff(self, streak: int) -> float:
        return float(min(30.0, self.settings.poll_interval_s * 2 ** min(streak, 6)))

    def _failed(self, exc: BaseException, what: str) -> None:
        self.status.update(state="backing off", job_id=None)
        self.status["failures"] += 1
        self.status["last_error"] = f"{what}: {type(exc).__name__}: {exc}"
        self.metrics.worker_failures.inc()
        log.error("worker: %s failed, going on", what, exc_info=exc)

    async def _beat(self, force: bool = False) -> None:
        """Publish this worker's status (at most every third of a lease unless `force`)."""
        now = time.monotonic()
        if not force and now - self._beat_at < self.lease_s / 3:
            return
        self._beat_at = now
        self.status["seen_at"] = time.time()
        with contextlib.suppress(StoreUnavailable):
            await self.store.put_worker(dict(self.status), ttl_s=max(60.0, 10 * self.lease_s))

    async def _update(self, job: dict[str, Any], **changes: Any) -> None:
        job.update(changes, updated_at=time.time())
        await self.store.put_job(job)

    async def _update_owned(self, job: dict[str, Any], **changes: Any) -> None:
        """`_update` while the job's lease is still ours (renewing it on the way): a worker that
        stalled past its lease and resumed must not write over the record of whoever runs it now."""
        if job["job_id"] in self._lost:
            return
        if not await self.store.renew_job(job["job_id"], self.owner, self.lease_s):
            self._lost.add(job["job_id"])
            log.error("lease on job %s lost: it was handed back", job["job_id"])
            return
        await self._update(job, **changes)

    async def execute(self, job_id: str) -> None:
        """Run one job taken off the queue (its lease is ours). Any exception but a store outage
        fails the job with the reason and is raised again; on a store outage or a cancel the job is
        handed back (or, if the store cannot be reached, its lease runs out and a reaper does it)."""
        self.status.update(state="starting", job_id=job_id)
        job = await self.store.get_job(job_id)
        if job is None or job["status"] in TERMINAL:
            await self.store.finish_job(job_id, self.owner)
            return
        version = job["model_version"]
        job["attempts"] = int(job.get("attempts") or 0) + 1
        if job["attempts"] > MAX_ATTEMPTS:
            await self._end(job, "failed", error=f"abandoned: its worker stopped {MAX_ATTEMPTS} times")
            return
        token = uuid.uuid4().hex
        held = {"lock": False, "stop": False}
        beat = asyncio.create_task(self._heartbeat(job, token, held))
        ended = False
        try:
            await self._update(job)
            self.status["state"] = "waiting for the lock"
            while not await self.store.acquire_lock(version, token, self.settings.lock_ttl_s):
                # Another worker builds this version: wait for it rather than build twice.
                await asyncio.sleep(min(1.0, self.settings.lock_ttl_s / 4))
                if job_id in self._lost:  # handed back while we waited: someone else runs it now
                    self._lost.discard(job_id)
                    ended = True
                    return
            held["lock"] = True
            self.status["state"] = "building"
            await self._update_owned(job, status="running", lease_s=self.settings.lock_ttl_s)
            build_id, error = await self._build(job, token)
            await _stop(beat, held)  # and wait, so that no heartbeat lands after the final status
            ended = True
            if build_id is not None:
                await self._end(job, "succeeded", index_build=build_id)
                with contextlib.suppress(StoreUnavailable):
                    await self.store.set_active_build(version, build_id)
                if self.on_built is not None:
                    try:
                        await self.on_built(version)
                    except Exception as exc:  # the build is published; replicas load it on their poll
                        self._failed(exc, f"loading build {build_id} of {version}")
            else:
                await self._end(job, "failed", error=error)
        except (StoreUnavailable, asyncio.CancelledError):
            held["stop"] = True  # as in _stop: a swallowed cancel must not leave it renewing
            beat.cancel()
            if not ended:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._hand_back(job), self.settings.redis_timeout_s * 4)
            raise
        except Exception as exc:
            await _stop(beat, held)  # and wait: no heartbeat after the final status
            if not ended:
                ended = True
                with contextlib.suppress(StoreUnavailable):
                    await self._end(job, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            held["stop"] = True
            beat.cancel()
            if held["lock"]:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release_lock(version, token)
            self.metrics.build_progress.labels(version).set(0)

    async def _end(self, job: dict[str, Any], status: str, **changes: Any) -> None:
        """Record the final status, then drop the lease and the version's active marker. Not if the
        lease is no longer ours: the job was handed back while this worker stalled, and its record
        belongs to whoever runs it now."""
        if job["job_id"] in self._lost or not await self.store.renew_job(
            job["job_id"], self.owner, self.lease_s
        ):
            self._lost.discard(job["job_id"])
            log.error(
                "job %s was handed back meanwhile: this run's outcome (%s) is dropped", job["job_id"], status
            )
            return
        await self._update(job, status=status, **changes)
        self.metrics.builds.labels(job["model_version"], status).inc()
        self.status["jobs_done"] += 1
        await self.store.finish_job(job["job_id"], self.owner)
        await self.store.clear_active(job["model_version"], job["job_id"])

    async def _hand_back(self, job: dict[str, Any]) -> None:
        if await self.store.hand_back(job["job_id"], self.owner):
            await self._update(job, status="queued")
            log.warning("job %s handed back to the queue", job["job_id"])

    async def _heartbeat(self, job: dict[str, Any], token: str, held: dict[str, bool]) -> None:
        """While the job runs: renew its lease, the version's lock once held, the active marker,
        the job's `updated_at` and this worker's status."""
        version = job["model_version"]
        while not held["stop"]:
            await asyncio.sleep(self.lease_s / 3)
            if held["stop"]:
                return
            try:
                await self._update_owned(job)  # renews the lease; tells `submit` this job is alive
                if held["lock"] and not await self.store.renew_lock(version, token, self.settings.lock_ttl_s):
                    held["lock"] = False
                    log.error("lock on %s lost: the build will not be published", version)
                if job["job_id"] not in self._lost:
                    await self.store.claim_active(version, job["job_id"], ACTIVE_TTL_S)
            except StoreUnavailable as exc:
                log.warning("lease of job %s not renewed: %s", job["job_id"], exc)
            await self._beat(force=True)

    async def _build(self, job: dict[str, Any], token: str) -> tuple[str | None, str | None]:
        """Run one build in a child process; returns (build_id, None) or (None, error)."""
        version = job["model_version"]
        self.current = proc = await asyncio.create_subprocess_exec(
            *child.command(version, token, allow_shrink=bool(job.get("allow_shrink"))),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child.environment(self.settings),
            preexec_fn=child.die_with_parent,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        build_id: str | None = None
        ix = self.settings.index
        self.cycle = cpu.cap(proc.pid, ix.build_cpu_share)
        starved = cpu.guard(proc.pid, ix.build_sched, ix.build_min_share, ix.build_nice)
        try:
            async for line in proc.stdout:
                msg = child.parse_line(line)
                if msg is None:
                    continue
                if "items" in msg:
                    self.metrics.build_progress.labels(version).set(msg["items"])
                    with contextlib.suppress(StoreUnavailable):
                        await self._update_owned(job, items=msg["items"])
                if "build_id" in msg:
                    build_id = msg["build_id"]
            code = await proc.wait()
            err = (await stderr_task).decode(errors="replace").strip()
        except asyncio.CancelledError:
            # Shutting down mid-build: stop the child and reap it, so no pipe or zombie is left.
            if proc.returncode is None:
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(proc.wait(), stderr_task), 10)
            raise
        finally:
            self.current = None
            if self.cycle is not None:
                self.cycle.stop()  # and resumes the child: a stopped one would never exit
            if starved is not None:
                starved.stop()
        if code == 0 and build_id is not None:
            return build_id, None
        last = err.splitlines()[-1] if err else f"exit code {code}"
        log.error("build of %s failed (exit %s): %s", version, code, last)
        return None, last

    def stop(self) -> None:
        """Terminate a running build (its temporary directory is cleaned by the next build)."""
        if self.cycle is not None:
            self.cycle.stop()  # a stopped child would hold the SIGTERM until resumed
        if self.current is not None and self.current.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.current.terminate()


async def _stop(beat: asyncio.Task[None], held: dict[str, bool]) -> None:
    """End the heartbeat and wait for it. A flag as well as the cancel: redis-py can swallow a
    cancellation that lands inside a command (seen: the job stayed "running" with its build
    published, its lease renewed for ever). `RedisStore._call` now raises such a cancel again; the
    flag still ends the loop at its next step should any other await drop one."""
    held["stop"] = True
    beat.cancel()
    await asyncio.wait([beat])


async def run_worker(settings: Settings) -> None:
    """`twotower worker`: the worker alone, until SIGTERM or SIGINT."""
    from models.manifest import list_versions

    metrics = Metrics()
    store = make_store(settings, on_error=lambda op: metrics.store_errors.labels(op).inc())
    worker = Worker(
        settings,
        store,
        metrics,
        lambda: settings.model_versions or list_versions(Path(settings.model_store)),
    )
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    log.info("worker started (store: %s)", store.kind)
    try:
        await task
    except asyncio.CancelledError:
        worker.stop()
    finally:
        await store.close()
