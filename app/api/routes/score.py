"""POST /score: coarse ranking of one user against a batch of candidates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Response

from app.api.deps import ServiceDep, SettingsDep
from app.api.limits import check_id
from app.api.responses import FastJSON
from app.api.routes.recall import ERRORS
from app.schemas import ScoreRequest, ScoreResponse
from app.service import Service
from app.settings import Limits

router = APIRouter(tags=["retrieval"])


async def answer(service: Service, limits: Limits, body: ScoreRequest) -> dict[str, Any]:
    """The response body of one /score (also served by app/api/hot.py, without the framework)."""
    if len(body.items) > limits.max_score_items:
        msg = f"at most {limits.max_score_items} items"
        raise HTTPException(422, [{"loc": ["body", "items"], "msg": msg, "type": "limit"}])
    check_id(limits, body.user_id, "user_id")
    for i, it in enumerate(body.items):
        check_id(limits, it.item_id, "items", i, "item_id")
    res = await service.score(
        body.model_version, body.user_id, body.features, [(it.item_id, it.features) for it in body.items]
    )
    return {
        "model_version": res.version,
        "index_build": res.build,
        "scores": [
            {"item_id": it.item_id, "score": s, "missing": s is None}
            for it, s in zip(body.items, res.scores, strict=True)
        ],
    }


@router.post("/score", response_model=ScoreResponse, responses=ERRORS)
async def score(body: ScoreRequest, service: ServiceDep, settings: SettingsDep) -> Response:
    """Scores in request order: stored vectors, item tower for items with features, null otherwise."""
    return FastJSON(await answer(service, settings.limits, body))
