"""The admin API (/api/v1/admin): provider instances, the default and the fallback chain, breakers, and a
provider's test. Every route needs a key with the admin scope (403 for another key, 401 without one).
Changes are validated, stored (secrets encrypted) and applied at once, without a restart
(execbox.server.provider_admin)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Response
from starlette.exceptions import HTTPException

from execbox.errors import NotFoundError, RequestError
from execbox.providers.registry import INSTANCE_NAME
from execbox.server.deps import AdminDep, ServiceDep
from execbox.server.provider_admin import ConfigConflict
from execbox.wire import BreakerInfo, ErrorBody
from execbox.wire_admin import (
    AdminProviders,
    ChainBody,
    ChainInfo,
    InstanceBody,
    InstanceInfo,
    ProviderTest,
)

PREFIX = "/api/v1/admin"
_E = {"model": ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_E, "description": "The body is not JSON."},
    401: {**_E, "description": "Missing or invalid API key."},
    403: {**_E, "description": "The key has no admin scope."},
    404: {**_E, "description": "No such provider."},
    409: {**_E, "description": "The default or the fallback chain names it."},
    413: {**_E, "description": "Body over the server's maximum."},
    422: {**_E, "description": "Invalid; `detail` names the field or the provider."},
}
router = APIRouter(prefix=PREFIX, tags=["admin"], responses=ERRORS)


@contextmanager
def _answers() -> Iterator[None]:
    """The admin's errors as statuses: 404 unknown, 409 conflict, 422 invalid (the message names what)."""
    try:
        yield
    except NotFoundError as e:
        raise HTTPException(404, str(e)) from e
    except ConfigConflict as e:
        raise HTTPException(409, str(e)) from e
    except RequestError as e:
        raise HTTPException(422, str(e)) from e


def _name(name: str) -> str:
    if not INSTANCE_NAME.fullmatch(name):
        raise HTTPException(422, f"provider name {name!r}: 1-63 lowercase letters, digits, '-' or '_'")
    return name


@router.get("/providers", response_model=AdminProviders)
async def list_providers(service: ServiceDep, admin: AdminDep) -> AdminProviders:
    """The kinds (available here or not, their settings' schema and capabilities) and the instances (settings
    with secrets masked, default, place in the chain, breaker)."""
    return service.admin.view()


@router.put("/providers/{name}", response_model=InstanceInfo)
async def put_provider(name: str, body: InstanceBody, service: ServiceDep, admin: AdminDep) -> InstanceInfo:
    """Add or replace an instance; the next request gets it (a replaced one keeps serving the sandboxes it
    started until they end). A secret sent as "********" keeps the stored value."""
    with _answers():
        return service.admin.put(_name(name), body.kind, body.settings)


@router.delete("/providers/{name}", status_code=204, response_class=Response)
async def delete_provider(name: str, service: ServiceDep, admin: AdminDep) -> Response:
    """Remove an instance (409 while it is the default or in the chain)."""
    with _answers():
        service.admin.delete(name)
    return Response(status_code=204)


@router.post("/providers/{name}/test", response_model=ProviderTest)
async def test_provider(name: str, service: ServiceDep, admin: AdminDep) -> ProviderTest:
    """Run a program that prints 1 on this provider alone (5 s, 128 MiB; its sandbox removed after). A
    provider's failure is the answer (`ok: false`, `message` says what failed), never an HTTP error."""
    with _answers():
        return await service.admin.test(service.engine, name)


@router.post("/providers/{name}/reset", response_model=BreakerInfo)
async def reset_provider(name: str, service: ServiceDep, admin: AdminDep) -> BreakerInfo:
    """Close the provider's circuit breaker now (its fault count back to 0)."""
    with _answers():
        return service.admin.reset(name)


@router.put("/chain", response_model=ChainInfo)
async def put_chain(body: ChainBody, service: ServiceDep, admin: AdminDep) -> ChainInfo:
    """Set the default provider (optional), the fallback chain and (optional) the breaker and retry
    thresholds; the next request follows them."""
    with _answers():
        return service.admin.set_chain(body.default, body.chain, body.routing)
