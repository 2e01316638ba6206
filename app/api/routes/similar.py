"""POST /similar: item-to-item neighbours from the same version's index."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.limits import check_exclusions, check_id, resolve_k
from app.api.responses import FastJSON
from app.schemas import SimilarRequest, SimilarResponse
from app.service import Service
from app.settings import Limits

router = APIRouter(tags=["retrieval"])
ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "body that cannot be parsed (not UTF-8, or nested too deep)"},
    404: {"description": "unknown model version or alias, or an item not in the index sent without features"},
    413: {"description": "request body too large"},
    422: {"description": "invalid field, feature, filter or limit"},
    503: {"description": "the version has no index yet"},
}


async def answer(service: Service, limits: Limits, body: SimilarRequest) -> dict[str, Any]:
    """The response body of one /similar (also served by app/api/hot.py, without the framework)."""
    k = resolve_k(limits, body.k)
    check_exclusions(limits, body.exclude_item_ids)
    check_id(limits, body.item_id, "item_id")
    res = await service.similar(
        body.model_version, body.item_id, body.features, k, body.exclude_item_ids, body.filter
    )
    return {
        "model_version": res.version,
        "index_build": res.build,
        "items": [{"item_id": i, "score": s} for i, s in res.items],
    }


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS)
async def similar(body: SimilarRequest, service: ServiceDep, settings: SettingsDep) -> Response:
    """Top-k items nearest one item (its stored vector, or the item tower on `features`), never itself."""
    return FastJSON(await answer(service, settings.limits, body))
