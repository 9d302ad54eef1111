"""The native API: /api/v1/..., /health and /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from execbox.errors import RequestError
from execbox.models import ExecutionResult, Limits
from execbox.server.deps import PrincipalDep, ServiceDep, get_principal
from execbox.server.idempotency import KEY_HELP, fingerprint
from execbox.server.service import internal_error
from execbox.store import ExecutionRecord
from execbox.wire import (
    BreakerInfo,
    ErrorBody,
    ExecuteBody,
    ExecuteResponse,
    JobStatus,
    LanguageInfo,
    ProviderInfo,
    Providers,
    Queued,
    SessionExecutions,
    SessionId,
    execute_response,
)

log = logging.getLogger("execbox.server")

PREFIX = "/api/v1/"
_E = {"model": ErrorBody}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**_E, "description": "The request cannot run (unknown language lists the supported ones)."},
    401: {**_E, "description": "Missing or invalid API key."},
    413: {**_E, "description": "Body over the server's maximum."},
    422: {**_E, "description": "Schema error; `detail` names each field."},
    429: {**_E, "description": "Rate limit of the key exceeded; see Retry-After."},
    500: {**_E, "description": "The sandbox failed (not the program: that is a result)."},
    503: {**_E, "description": "At capacity or the provider is down; see Retry-After."},
}
router = APIRouter(responses=ERRORS)


@router.post("/api/v1/execute", response_model=ExecuteResponse, tags=["execute"])
async def execute(body: ExecuteBody, service: ServiceDep, principal: PrincipalDep,
                  idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128,
                                                                description=KEY_HELP)] = None) -> dict[str, Any]:
    """Run code and wait for the result. The program failing is a result (`status`), never an HTTP error.
    With an `Idempotency-Key`, it runs at most once per key: a repeat gets the first one's answer."""
    service.admit(principal)
    request = body.to_request()
    service.check(request, principal)

    def run() -> Awaitable[ExecutionResult]:
        return service.execute(principal, request, session_id=body.session_id)

    if idempotency_key is None:
        return execute_response(await run())
    digest = fingerprint(body.model_dump(mode="json", exclude_unset=True))
    return execute_response(await service.idempotency.run(principal.name, idempotency_key, digest, run))


@router.post("/api/v1/execute/async", response_model=Queued, status_code=202, tags=["execute"])
async def execute_async(body: ExecuteBody, service: ServiceDep, principal: PrincipalDep) -> Queued:
    """Queue an execution and return at once; poll GET /api/v1/execute/status/{execution_id}. Jobs are kept
    in the store: a server restarted with jobs queued runs them."""
    service.admit(principal)
    return Queued(execution_id=service.submit(principal, body))


def _status(record: ExecutionRecord) -> JobStatus:
    result = None
    if record.result is not None:
        r = record.result
        result = {"success": r["status"] == "ok", "output": r["stdout"],
                  "error": r["stderr"] or r.get("message") or None, "execution_time": r["wall_time_s"], **r}
    return JobStatus.model_validate({"execution_id": record.id, "status": record.state, "result": result})


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {**_E, "description": "Unknown, expired or another key's."}}


@router.get("/api/v1/execute/status/{execution_id}", response_model=JobStatus, tags=["execute"],
            responses=NOT_FOUND)
async def execute_status(execution_id: str, service: ServiceDep, principal: PrincipalDep) -> JobStatus:
    """An async execution's state, and its result once completed. Another key's execution is a 404."""
    record = service.store.execution(execution_id, principal.name)
    if record is None:
        raise HTTPException(404, f"no execution {execution_id!r} (unknown, expired or not yours)")
    return _status(record)


@router.post("/api/v1/execute/batch", response_model=list[ExecuteResponse], tags=["execute"])
async def execute_batch(service: ServiceDep, principal: PrincipalDep,
                        bodies: Annotated[list[ExecuteBody], Body(min_length=1, max_length=10_000)],
                        ) -> list[dict[str, Any]]:
    """Run several requests concurrently (within the server's capacity); results come in request order.
    Every request is checked before any runs, so a bad one costs nothing."""
    if len(bodies) > service.settings.max_batch:
        raise RequestError(f"a batch holds at most {service.settings.max_batch} requests; got {len(bodies)}")
    requests = []
    for i, body in enumerate(bodies):
        try:
            request = body.to_request()
            service.check(request, principal)
        except RequestError as e:
            raise RequestError(f"request {i}: {e}") from e
        requests.append(request)
    service.admit(principal, cost=len(bodies))
    service.capacity.admit(len(bodies))
    # the whole batch's output is bounded, not each item's: every item gets its share of the budget
    share = max(1024, service.settings.batch_output_bytes // len(bodies))
    caps = {**(principal.caps.model_dump(include=principal.caps.model_fields_set) if principal.caps else {})}
    caps["output_bytes"] = min(caps.get("output_bytes", share), share)
    batch_principal = dataclasses.replace(principal, caps=Limits(**caps))

    async def one(body: ExecuteBody, request: Any) -> dict[str, Any]:
        try:
            result = await service.execute(batch_principal, request, session_id=body.session_id, admitted=True)
        except Exception as e:  # one failure does not lose the others' results
            result = internal_error(request, request.provider or service.providers.default, str(e))
        return execute_response(result)

    return list(await asyncio.gather(*(one(b, r) for b, r in zip(bodies, requests, strict=True))))


@router.get("/api/v1/execute/languages", response_model=dict[str, list[LanguageInfo]], tags=["info"])
async def languages(service: ServiceDep, principal: PrincipalDep) -> dict[str, list[LanguageInfo]]:
    """Every language, its installed version and whether it can run here."""
    out = [LanguageInfo(name=lang.name, aliases=lang.aliases, extensions=lang.extensions, version=lang.version(),
                        available=lang.available, compiled=lang.compile is not None,
                        commands=["run", "test"] if lang.test else ["run"])
           for lang in service.engine.languages]
    return {"languages": out}


def provider_infos(service: Any) -> list[ProviderInfo]:
    """Every provider a request may name: its kind, whether it can run here (creating it, which probes the
    host or engine; a remote one is not contacted), its place in the chain, its breaker and capabilities."""
    infos = []
    order = service.router.order(None, None)
    for name in service.provider_names():
        message = None
        try:
            service.providers.get(name)
        except Exception as e:  # any failure to set up means unavailable, with why
            message = str(e)
        infos.append(ProviderInfo(
            name=name, kind=service.providers.kind_of(name).name, status="unavailable" if message else "available",
            is_default=name == service.providers.default, message=message,
            chain_position=order.index(name) if name in order else None,
            breaker=BreakerInfo.of(service.router.breaker(name)),
            capabilities=service.providers.capabilities(name)))
    return infos


@router.get("/api/v1/providers", response_model=Providers, tags=["info"])
async def providers(service: ServiceDep, principal: PrincipalDep) -> Providers:
    """The isolation providers, whether each can run here, and which is the default."""
    return Providers(providers=provider_infos(service))


@router.get("/api/v1/sessions/{session_id}/executions", response_model=SessionExecutions, tags=["execute"])
async def session_executions(session_id: SessionId, service: ServiceDep, principal: PrincipalDep,
                             ) -> SessionExecutions:
    """The executions that named this session_id (yours only), oldest first."""
    records = service.store.session_executions(principal.name, session_id)
    return SessionExecutions(session_id=session_id, executions=[_status(r) for r in records])


@router.get("/health", tags=["info"], responses={503: {"description": "A component is down."}})
async def health(service: ServiceDep) -> JSONResponse:
    """Component checks (store, providers, languages); no key needed. 503 when the service cannot run code."""
    components: dict[str, Any] = {}
    try:
        service.store.ping()
        components["store"] = {"status": "ok"}
    except Exception:  # the details (paths, SQL) are the operator's, in the log; /health is public
        log.exception("health: the store does not answer")
        components["store"] = {"status": "down", "message": "the store does not answer (see the server log)"}
    infos = provider_infos(service)
    # ok while some provider of the chain can run code; the breakers say which are being skipped
    chain = sorted((p for p in infos if p.chain_position is not None), key=lambda p: p.chain_position or 0)
    usable = [p for p in chain if p.status == "available" and p.breaker.state != "open"]
    components["providers"] = {"status": "ok" if usable else "down", "default": service.providers.default,
                               "chain": [p.name for p in chain],
                               "available": [p.name for p in infos if p.status == "available"],
                               "breakers": {p.name: p.breaker.state for p in infos if p.breaker.state != "closed"}}
    langs = [lang.name for lang in service.engine.languages if lang.available]
    components["languages"] = {"status": "ok" if langs else "down", "available": len(langs)}
    ok = all(c["status"] == "ok" for c in components.values())
    return JSONResponse({"status": "ok" if ok else "down", "components": components}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["info"], dependencies=[Depends(get_principal)],
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics (needs a key, like everything but /health)."""
    service.refresh_gauges()
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
