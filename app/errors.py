"""One place that maps the project's exceptions to HTTP status codes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def encodable(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8: a lone surrogate (valid in JSON text,
    `"\\ud800"`, but not in UTF-8) becomes the visible escape `\\ud800`. An error echoes what the
    client sent (a feature name, a version), and a body that cannot be encoded would be a 500."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return value


class ErrorJSON(JSONResponse):
    """Every error body: JSON that can always be encoded (see `encodable`)."""

    def render(self, content: Any) -> bytes:
        return super().render(encodable(content))


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
        return ErrorJSON({"detail": feature_error_detail(exc)}, status_code=422)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if status >= 500 and status != 503:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return ErrorJSON({"detail": str(exc)}, status_code=status, headers=headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422; an input echoing NaN or Infinity (JSON cannot carry it) is left out, not a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    try:
        return ErrorJSON({"detail": errors}, status_code=422)
    except ValueError:
        return ErrorJSON(
            {"detail": [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in errors]},
            status_code=422,
        )


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own HTTPException answer, through ErrorJSON (a detail may echo client input)."""
    assert isinstance(exc, StarletteHTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return ErrorJSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def error_response(request: Request, exc: TwoTowerError | StarletteHTTPException) -> Response:
    """The answer the app's handlers give `exc` (for app/api/hot.py, which runs outside them)."""
    if isinstance(exc, TwoTowerError):
        return await _twotower_error(request, exc)
    return await _http_error(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TwoTowerError, _twotower_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
