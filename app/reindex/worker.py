"""The reindex worker: takes jobs off the queue, holds the version's lock, runs the build child.

The parent holds and renews the version's lock; the child checks it (fencing) right before it
publishes, so a build that outlived its lock is never made current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.metrics import Metrics
from app.reindex import child
from app.reindex.jobs import ACTIVE_TTL_S, TERMINAL, submit
from app.settings import Settings
from app.state import FeatureStore, make_store
from models.errors import StoreUnavailable

log = logging.getLogger(__name__)


class Worker:
    """Runs queued jobs one at a time. `on_built(version)` lets the API load the build at once."""

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

    async def run(self) -> None:
        """Forever: take a job from the queue, run it; enqueue every version on the period."""
        period = self.settings.reindex_interval_s
        next_periodic = time.monotonic() + period if period > 0 else float("inf")
        while True:
            try:
                if time.monotonic() >= next_periodic:
                    next_periodic = time.monotonic() + period
                    for v in self.versions():
                        await submit(self.store, v)
                job_id = await self.store.dequeue()
            except StoreUnavailable as exc:
                log.warning("worker: %s", exc)
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            if job_id is None:
                await asyncio.sleep(min(0.2, self.settings.poll_interval_s))
                continue
            try:
                await self.execute(job_id)
            except StoreUnavailable as exc:
                log.error("worker: job %s interrupted: %s", job_id, exc)

    async def _update(self, job: dict[str, Any], **changes: Any) -> None:
        job.update(changes, updated_at=time.time())
        await self.store.put_job(job)

    async def execute(self, job_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is None or job["status"] in TERMINAL:
            return
        version = job["model_version"]
        token = uuid.uuid4().hex
        while not await self.store.acquire_lock(version, token, self.settings.lock_ttl_s):
            # Another worker builds this version: wait for it rather than build twice.
            await asyncio.sleep(min(1.0, self.settings.lock_ttl_s / 4))
        renew = asyncio.create_task(self._renew(version, token, job))
        try:
            await self._update(job, status="running", lease_s=self.settings.lock_ttl_s)
            build_id, error = await self._build(job, token)
            renew.cancel()  # and wait, so that no heartbeat lands after the final status
            await asyncio.wait([renew])
            if build_id is not None:
                await self._update(job, status="succeeded", index_build=build_id)
                self.metrics.builds.labels(version, "succeeded").inc()
                with contextlib.suppress(StoreUnavailable):
                    await self.store.set_active_build(version, build_id)
                if self.on_built is not None:
                    await self.on_built(version)
            else:
                await self._update(job, status="failed", error=error)
                self.metrics.builds.labels(version, "failed").inc()
        finally:
            renew.cancel()
            with contextlib.suppress(StoreUnavailable):
                await self.store.release_lock(version, token)
                await self.store.clear_active(version, job_id)
            self.metrics.build_progress.labels(version).set(0)

    async def _renew(self, version: str, token: str, job: dict[str, Any]) -> None:
        while True:
            await asyncio.sleep(self.settings.lock_ttl_s / 3)
            try:
                if not await self.store.renew_lock(version, token, self.settings.lock_ttl_s):
                    log.error("lock on %s lost: the build will not be published", version)
                    return
                await self.store.claim_active(version, job["job_id"], ACTIVE_TTL_S)
                await self._update(job)  # the heartbeat that tells `submit` this job is alive
            except StoreUnavailable as exc:
                log.warning("lock on %s not renewed: %s", version, exc)

    async def _build(self, job: dict[str, Any], token: str) -> tuple[str | None, str | None]:
        """Run one build in a child process; returns (build_id, None) or (None, error)."""
        version = job["model_version"]
        self.current = proc = await asyncio.create_subprocess_exec(
            *child.command(version, token),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child.environment(self.settings),
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        build_id: str | None = None
        try:
            async for line in proc.stdout:
                msg = child.parse_line(line)
                if msg is None:
                    continue
                if "items" in msg:
                    self.metrics.build_progress.labels(version).set(msg["items"])
                    with contextlib.suppress(StoreUnavailable):
                        await self._update(job, items=msg["items"])
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
        if code == 0 and build_id is not None:
            return build_id, None
        last = err.splitlines()[-1] if err else f"exit code {code}"
        log.error("build of %s failed (exit %s): %s", version, code, last)
        return None, last

    def stop(self) -> None:
        """Terminate a running build (its temporary directory is cleaned by the next build)."""
        if self.current is not None and self.current.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.current.terminate()


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
