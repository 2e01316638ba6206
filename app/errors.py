"""One place that maps the project's exceptions to HTTP status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.service import feature_error_detail
from models.errors import (
    BuildRefused,
    FeatureError,
    IndexNotReady,
    StoreUnavailable,
    TwoTowerError,
    UnknownVersion,
)

log = logging.getLogger(__name__)
RETRY_AFTER_S = "5"


def _status(exc: TwoTowerError) -> int:
    if isinstance(exc, FeatureError):
        return 422
    if isinstance(exc, UnknownVersion):
        return 404
    if isinstance(exc, IndexNotReady | StoreUnavailable):
        return 503
    if isinstance(exc, BuildRefused):
        return 409
    return 500


async def _twotower_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TwoTowerError)
    status = _status(exc)
    if isinstance(exc, FeatureError):
        return JSONResponse({"detail": feature_error_detail(exc)}, status_code=422)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if status >= 500 and status != 503:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TwoTowerError, _twotower_error)
