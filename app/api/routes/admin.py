"""Admin: reindex jobs, versions, aliases. Every route needs the bearer token."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException

from app.api.deps import AdminDep, ServiceDep
from app.reindex.jobs import submit
from app.schemas import (
    AliasRequest,
    AliasResponse,
    Job,
    JobRef,
    ReindexAccepted,
    ReindexRequest,
    ReplicaInfo,
    VersionInfo,
    Versions,
    Workers,
    WorkerStatus,
)
from models.errors import IndexNotReady

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={401: {"description": "missing or wrong token"}, 403: {"description": "admin disabled"}},
)


@router.post(
    "/reindex",
    status_code=202,
    response_model=ReindexAccepted,
    responses={
        400: {"description": "body that cannot be parsed"},
        404: {"description": "unknown version"},
        409: {"description": "a build without allow_shrink is already queued or running"},
    },
)
async def reindex(service: ServiceDep, body: ReindexRequest | None = None) -> ReindexAccepted:
    """Queue a rebuild of one version (or every served one); a build already queued or running is returned."""
    if body is not None and body.model_version is not None:
        tags = [service.resolve(body.model_version).tag]
    else:
        tags = sorted(service.versions)
    if not tags:
        raise HTTPException(404, "no model version is served")
    allow_shrink = body is not None and body.allow_shrink
    jobs = [await submit(service.store, tag, allow_shrink=allow_shrink) for tag in tags]
    refs = [JobRef(job_id=j["job_id"], status=j["status"], model_version=j["model_version"]) for j in jobs]
    return ReindexAccepted(job_id=refs[0].job_id, status=refs[0].status, jobs=refs)


@router.get("/reindex/{job_id}", response_model=Job, responses={404: {"description": "unknown job"}})
async def job(job_id: str, service: ServiceDep) -> Job:
    """One job's status."""
    found = await service.store.get_job(job_id)
    if found is None:
        raise HTTPException(404, f"unknown job {job_id!r}")
    return Job.model_validate(found, from_attributes=False)


@router.get("/worker", response_model=Workers)
async def workers(service: ServiceDep) -> Workers:
    """Every reindex worker heard from lately (in this process or apart), with its state."""
    now = time.time()
    found = sorted(await service.store.workers(), key=lambda w: (w.get("host", ""), w.get("pid", 0)))
    return Workers(
        workers=[
            WorkerStatus(
                **{k: w.get(k) for k in WorkerStatus.model_fields if k != "alive"},
                alive=now - float(w["seen_at"]) <= 3 * float(w.get("lease_s", 30)),
            )
            for w in found
        ]
    )


@router.get("/versions", response_model=Versions)
async def versions(service: ServiceDep) -> Versions:
    """Every known version with its aliases, current build, item count and state; what each live
    replica serves."""
    out = []
    for tag, served in sorted(service.versions.items()):
        snap = service.registry.get(tag)
        out.append(
            VersionInfo(
                model_version=tag,
                aliases=sorted(a for a, v in service.aliases.items() if v == tag),
                index_build=snap.build_id if snap else None,
                items=snap.size if snap else 0,
                state="ready" if snap else "no_index",
                dim=served.manifest.dim,
                metrics=dict(served.manifest.metrics),
            )
        )
    replicas = [ReplicaInfo.model_validate(r) for r in await service.live_replicas()]
    return Versions(versions=out, aliases=dict(service.aliases), replicas=replicas)


@router.put(
    "/aliases/{alias}",
    response_model=AliasResponse,
    responses={
        400: {"description": "body that cannot be parsed"},
        404: {"description": "unknown version"},
        409: {"description": "the version has no ready index here, or on some live replica (named)"},
        503: {"description": "the alias could not be recorded (store unreachable); nothing changed"},
        507: {"description": "the index store's disk is full; nothing changed"},
    },
)
async def move_alias(alias: str, body: AliasRequest, service: ServiceDep) -> AliasResponse:
    """Point an alias at a version every live replica serves with a ready index (409 otherwise)."""
    if not alias or len(alias) > 64 or alias in service.versions:
        raise HTTPException(422, [{"loc": ["path", "alias"], "msg": "1-64 characters, not a version tag"}])
    try:
        await service.move_alias(alias, body.model_version)
    except IndexNotReady as exc:  # 409 here, not the 503 a retrieval route gives
        raise HTTPException(409, str(exc)) from exc
    return AliasResponse(alias=alias, model_version=service.aliases[alias])
