"""Admin: catalog changes between rebuilds (upserts and deletes; see app/delta.py)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from app.api.deps import AdminDep, ServiceDep, SettingsDep
from app.schemas import ItemsAccepted, UpsertRequest

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses={
        401: {"description": "missing or wrong token"},
        403: {"description": "admin disabled"},
        503: {"description": "the change could not be recorded (store unreachable); nothing changed"},
    },
)


@router.put(
    "/items",
    status_code=202,
    response_model=ItemsAccepted,
    responses={
        400: {"description": "body that cannot be parsed"},
        422: {"description": "features that fail a served version's schema, an id too long, too many items"},
    },
)
async def upsert(body: UpsertRequest, service: ServiceDep, settings: SettingsDep) -> ItemsAccepted:
    """Add or replace items: encoded by every served version's item tower and searchable on every
    replica within 2 s, until a rebuild folds them in. All or nothing: one bad item refuses the call."""
    limit = settings.limits.max_upsert_items
    if not 1 <= len(body.items) <= limit:
        raise HTTPException(422, [{"loc": ["body", "items"], "msg": f"1..{limit} items", "type": "range"}])
    for i, item in enumerate(body.items):
        service.check_item(item.item_id, item.features, f"items.{i}.features")
    changes = [{"op": "upsert", "item_id": it.item_id, "features": it.features} for it in body.items]
    await service.change_items(changes)
    return ItemsAccepted(accepted=len(changes))


@router.delete(
    "/items/{item_id}",
    status_code=202,
    response_class=Response,
    responses={422: {"description": "an id longer than limits.max_id_length"}},
)
async def delete(item_id: str, service: ServiceDep, settings: SettingsDep) -> Response:
    """Remove an item: never returned by this replica once this answers, nor by any other within
    2 s. An unknown id is accepted too (idempotent)."""
    limit = settings.limits.max_id_length
    if not 1 <= len(item_id) <= limit:
        raise HTTPException(
            422, [{"loc": ["path", "item_id"], "msg": f"1..{limit} characters", "type": "range"}]
        )
    await service.change_items([{"op": "delete", "item_id": item_id}])
    return Response(status_code=202)
