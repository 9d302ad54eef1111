"""FastAPI dependencies shared by every API: the service and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from execbox.server.auth import ADMIN, Principal
from execbox.server.service import Service

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An execbox API key.")
_bearer = HTTPBearer(auto_error=False, description="An execbox API key as a bearer token.")


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_principal(request: Request, key: Annotated[str | None, Depends(_api_key)],
                        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    presented = key or (bearer.credentials if bearer else None)
    if not presented:
        raise HTTPException(401, "missing API key: send `X-API-Key: KEY` or `Authorization: Bearer KEY`",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = (await get_service(request)).keys.lookup(presented)
    if principal is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return principal


ServiceDep = Annotated[Service, Depends(get_service)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    """The caller, when its key has the admin scope (401 without a key, 403 for a key without it)."""
    if ADMIN not in principal.scopes:
        raise HTTPException(403, "this key has no admin scope")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
