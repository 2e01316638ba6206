"""POST /recall: the user tower once, then a search of the same version's index."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.limits import check_exclusions, check_id, resolve_k
from app.api.responses import FastJSON
from app.schemas import RecallRequest, RecallResponse
from app.service import Service
from app.settings import Limits

router = APIRouter(tags=["retrieval"])
ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "body that cannot be parsed (not UTF-8, or nested too deep)"},
    404: {"description": "unknown model version or alias"},
    413: {"description": "request body too large"},
    422: {"description": "invalid field, feature, filter or limit"},
    503: {"description": "the version has no index yet, or the feature store is down"},
}


async def answer(service: Service, limits: Limits, body: RecallRequest) -> dict[str, Any]:
    """The response body of one /recall (also served by app/api/hot.py, without the framework)."""
    k = resolve_k(limits, body.k)
    check_exclusions(limits, body.exclude_item_ids)
    check_id(limits, body.user_id, "user_id")
    res = await service.recall(
        body.model_version,
        body.user_id,
        body.features,
        k,
        body.exclude_item_ids,
        body.exclude_history,
        filter=body.filter,
    )
    return {
        "model_version": res.version,
        "index_build": res.build,
        "cold_start": res.cold_start,
        "items": [{"item_id": i, "score": s} for i, s in res.items],
    }


@router.post("/recall", response_model=RecallResponse, responses=ERRORS)
async def recall(body: RecallRequest, service: ServiceDep, settings: SettingsDep) -> Response:
    """Top-k items for one user from the index built by the same model version."""
    return FastJSON(await answer(service, settings.limits, body))
