"""The hot routes (POST /recall, /similar, /score) answered without the framework's per-request work.

Profiled under load (bench/README.md, "hot path"), FastAPI's routing, dependency solving,
middleware stack, request and response objects cost about as much CPU as the tower and the search
together. `TwoTowerAPI` (app/main.py) hands these routes to `HotRoutes` before any of that, which
answers the common case itself: body read under the size limit, `json.loads`, the very same
pydantic request model, the route's own `answer` function, bytes from pydantic-core's `to_json`,
the request counted and timed in the same metrics.

Anything unusual goes to the FastAPI routes with the body replayed: a content type other than
JSON, a body that does not parse or is not an object, any field the model refuses. So every 4xx
a client can get is the one the framework gives (the same `detail`, naming the field), the routes
keep documenting the contract in OpenAPI, and the error paths are not duplicated here. Errors
raised by the routes' own checks and by the service go through the app's own handlers
(`app.errors.error_response`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.routes import recall, score, similar
from app.errors import error_response
from app.metrics import Metrics
from app.middleware import read_body, replaying
from app.schemas import RecallRequest, ScoreRequest, SimilarRequest
from app.service import Service
from app.settings import Limits
from models.errors import TwoTowerError

Answer = Callable[[Service, Limits, Any], Awaitable[dict[str, Any]]]
ROUTES: dict[str, tuple[type[BaseModel], Answer]] = {
    "/recall": (RecallRequest, recall.answer),
    "/similar": (SimilarRequest, similar.answer),
    "/score": (ScoreRequest, score.answer),
}
_JSON = b"application/json"
_HEADERS = [(b"content-type", _JSON)]


def _json_content(scope: Scope) -> bool:
    """What FastAPI parses as JSON, narrowed to the common case: application/json (with parameters).
    Anything else (no content type: FastAPI's strict default refuses it) takes the framework's path."""
    ctype = next((v for k, v in scope["headers"] if k == b"content-type"), None)
    return ctype is not None and ctype.split(b";", 1)[0].strip().lower() == _JSON


def is_hot(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ROUTES


class HotRoutes:
    """The hot routes as one ASGI app; `app` is the full stack, for everything else."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        # Prometheus children resolved once: `labels()` per request was a measurable cost.
        self._ok = {path: metrics.requests.labels(path, "POST", "200") for path in ROUTES}
        self._latency = {path: metrics.latency.labels(path) for path in ROUTES}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_hot(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        started = time.perf_counter()
        try:
            await self._answer(path, scope, receive, send, started)
        except Exception:
            # A bug: uvicorn answers 500 and logs it; counted as the framework's stack would.
            self._count(path, 500, started)
            raise

    async def _answer(self, path: str, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        body = await read_body(scope, receive, send, self.max_bytes)
        if not isinstance(body, bytes):
            if body:  # 0: the client left, nothing was answered
                self._count(path, body, started)
            return
        model, answer = ROUTES[path]
        request: BaseModel | None = None
        if body and _json_content(scope):
            try:
                obj = json.loads(body)
                if type(obj) is dict:
                    request = model.model_validate(obj)
            except (ValueError, RecursionError, ValidationError):  # UnicodeDecodeError is a ValueError
                request = None
        if request is None:
            # The framework's own answer (its 400/422 naming the field), counted by RequestMetrics.
            await self.app(scope, replaying(body, receive), send)
            return
        state = scope["app"].state
        try:
            payload = await answer(state.service, state.settings.limits, request)
        except (TwoTowerError, HTTPException) as exc:
            response = await error_response(Request(scope), exc)
            await response(scope, receive, send)
            self._count(path, response.status_code, started)
            return
        data = to_json(payload)
        headers = [*_HEADERS, (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        self._ok[path].inc()
        self._latency[path].observe(time.perf_counter() - started)

    def _count(self, path: str, status: int, started: float) -> None:
        self.metrics.requests.labels(path, "POST", str(status)).inc()
        self.metrics.latency.labels(path).observe(time.perf_counter() - started)
