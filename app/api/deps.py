"""Dependencies shared by the routes, declared once as Annotated aliases.

All `async def`: FastAPI runs a plain `def` dependency in the thread pool, a thread hop per
dependency per request (measured: most of the framework overhead of /recall).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from app.service import Service
from app.settings import Settings
from app.state import FeatureStore


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> FeatureStore:
    store: FeatureStore = request.app.state.service.store
    return store


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[FeatureStore, Depends(get_store)]


async def require_admin(request: Request, settings: SettingsDep) -> None:
    """Bearer token, compared in constant time. No token configured: admin is disabled (403)."""
    if settings.admin_token is None or not settings.admin_token.get_secret_value():
        raise HTTPException(403, "admin is disabled: no admin token is configured")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
