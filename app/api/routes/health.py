"""Liveness, readiness and Prometheus metrics for the orchestrator."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import ServiceDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers; no dependency is checked."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "not ready, with a reason"}})
async def readyz(service: ServiceDep) -> Response | Health:
    """200 once the default alias has its model and index loaded; 503 with a reason otherwise."""
    ready, reason = service.readiness()
    if not ready:
        return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": "5"})
    snap = service.registry.get(reason)
    return Health(status="ready", model_version=reason, index_build=snap.build_id if snap else None)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
