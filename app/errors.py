"""One place that maps the project's exceptions to HTTP status codes."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.service import feature_error_detail
from models.errors import (
    BuildRefused,
    FeatureError,
    IndexNotReady,
    StorageFull,
    StoreUnavailable,
    TwoTowerError,
    UnknownItem,
    UnknownVersion,
)

log = logging.getLogger(__name__)
RETRY_AFTER_S = "5"


def _status(exc: TwoTowerError) -> int:
    if isinstance(exc, FeatureError):
        return 422
    if isinstance(exc, UnknownVersion | UnknownItem):
        return 404
    if isinstance(exc, StorageFull):
        return 507  # Insufficient Storage: retrying will not help until space is freed
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


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422; an input echoing NaN or Infinity (JSON cannot carry it) is left out, not a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    try:
        return JSONResponse({"detail": errors}, status_code=422)
    except ValueError:
        return JSONResponse(
            {"detail": [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in errors]},
            status_code=422,
        )


def install(app: FastAPI) -> None:
    app.add_exception_handler(TwoTowerError, _twotower_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
