"""The reindex worker: jobs (coalesced per version), a lock per version, builds in a child process.

A build re-encodes the whole catalog and trains an index: seconds of CPU that must not starve the
event loop, so it runs as `python -m app.cli reindex` in its own process (its memory is returned
when it exits, and a crash cannot take the API down). The parent holds and renews the version's
lock; the child checks it (fencing) right before it publishes, so a build that outlived its lock is
never made current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from app.features import FeatureStore
from app.metrics import Metrics
from app.settings import Settings
from models.errors import StoreUnavailable

log = logging.getLogger(__name__)
ACTIVE_TTL_S = 3600.0
TERMINAL = ("succeeded", "failed")


def new_job(version: str) -> dict[str, Any]:
    return {
        "job_id": uuid.uuid4().hex,
        "status": "queued",
        "model_version": version,
        "index_build": None,
        "items": 0,
        "error": None,
        "created_at": time.time(),
        "updated_at": time.time(),
    }


async def submit(store: FeatureStore, version: str) -> dict[str, Any]:
    """Queue a build of `version`, or return the job already queued or running for it."""
    job = new_job(version)
    for _ in range(3):
        existing = await store.claim_active(version, job["job_id"], ACTIVE_TTL_S)
        if existing is None:
            await store.put_job(job)
            await store.enqueue(job["job_id"])
            return job
        found = await store.get_job(existing)
        if found is not None and found["status"] not in TERMINAL:
            if not _abandoned(found):
                return found
            # Its worker died or froze: close the job, or no build of this version runs for an hour.
            found.update(status="failed", error="abandoned: its worker stopped renewing")
            found["updated_at"] = time.time()
            await store.put_job(found)
        await store.clear_active(version, existing)  # a stale marker (its job ended or expired)
    raise StoreUnavailable(f"could not queue a build of {version}")


def _abandoned(job: dict[str, Any]) -> bool:
    """A running job not renewed for two lock TTLs (its worker renews every third of one)."""
    lease = job.get("lease_s")
    return job["status"] == "running" and lease is not None and time.time() - job["updated_at"] > 2 * lease


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
        config = self.settings.model_dump(mode="json", exclude={"admin_token"})
        cmd = [sys.executable, "-m", "app.cli", "reindex", "--model-version", version, "--json-progress"]
        cmd += ["--fence-token", token]
        self.current = proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**_child_env(), "TWOTOWER_CONFIG_JSON": json.dumps(config)},
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(proc.stderr.read())
        build_id: str | None = None
        try:
            async for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
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


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TWOTOWER_ADMIN_TOKEN"}
