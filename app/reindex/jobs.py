"""Reindex jobs: one record per build request, coalesced per version while queued or running."""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.state import FeatureStore
from models.errors import StoreUnavailable

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
