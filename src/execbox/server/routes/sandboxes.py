"""Persistent sandboxes over HTTP: /api/v1/sandboxes/...

A sandbox belongs to the key that created it; to any other key it does not exist (404 on every route).
Each key is an owner of the service's one ``SandboxManager``; limits are capped by the key's policy once, at
create, and each exec may only tighten them. A sandbox idle longer than its TTL is destroyed (404 afterwards);
the server stopping destroys every live sandbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from execbox.errors import ExecboxError
from execbox.models import MAX_LABELS, ExecutionResult, check_file_name, parse_labels
from execbox.sandbox import AsyncSandbox
from execbox.server.auth import Principal
from execbox.server.deps import PrincipalDep, ServiceDep
from execbox.server.routes.native import ERRORS
from execbox.server.service import Service
from execbox.wire import (
    LABEL_HELP,
    CreateBody,
    ErrorBody,
    ExecBody,
    ExecuteResponse,
    Listing,
    OutputData,
    SandboxInfo,
    SandboxList,
    SandboxRunBody,
    Written,
    execute_response,
)

log = logging.getLogger("execbox.server")
PREFIX = "/api/v1/sandboxes"

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such sandbox (destroyed, expired or another key's) or file."}}
router = APIRouter(prefix=PREFIX, tags=["sandboxes"], responses={**ERRORS, **NOT_FOUND})


def _info(sb: AsyncSandbox) -> SandboxInfo:
    now_wall, now_mono = time.time(), time.monotonic()
    last_used = now_wall - (now_mono - sb.last_used_at)
    return SandboxInfo(id=sb.id, language=sb.language, provider=sb.provider, labels=sb.labels,
                       created_at=sb.created_at, last_used_at=last_used, ttl_s=sb.ttl_s,
                       idle_expires_at=last_used + sb.ttl_s, max_lifetime_s=sb.max_lifetime_s,
                       expires_at=sb.created_at + sb.max_lifetime_s, limits=sb.limits)


def _log_exec(principal: Principal, sb: AsyncSandbox, result: ExecutionResult, streamed: bool) -> None:
    log.info("sandbox exec", extra={"fields": {
        "sandbox_id": sb.id, "execution_id": result.execution_id, "key": principal.name, "status": result.status.value,
        "exit_code": result.exit_code, "wall_time_s": result.wall_time_s, "streamed": streamed}})


def _get(service: Service, principal: Principal, sandbox_id: str) -> AsyncSandbox:
    service.admit(principal)
    return service.sandboxes.get(sandbox_id, owner=principal.name)


# --------------------------------------------------------------------------------------------- lifecycle

@router.post("", response_model=SandboxInfo, status_code=201)
async def create(body: CreateBody, service: ServiceDep, principal: PrincipalDep) -> SandboxInfo:
    """Create a sandbox owned by your key. 429 (with Retry-After) when your key or the server has as many
    live sandboxes as allowed: destroy one, or wait for one to idle out."""
    service.admit(principal)
    return _info(await service.open_sandbox(principal, body))


@router.post("/get_or_create", response_model=SandboxInfo)
async def get_or_create(body: CreateBody, service: ServiceDep, principal: PrincipalDep) -> SandboxInfo:
    """Your live sandbox whose labels include `labels` (the most recently used), or else a new one made from
    this body as by POST /api/v1/sandboxes. Concurrent calls with the same labels create only one sandbox;
    the others get it. A sandbox found is returned as it is (its language and limits are not the body's)."""
    service.admit(principal)
    return _info(await service.open_sandbox(principal, body, reuse=True))


@router.get("", response_model=SandboxList)
async def list_sandboxes(service: ServiceDep, principal: PrincipalDep,
                         label: Annotated[list[str], Query(description=LABEL_HELP, max_length=MAX_LABELS)] = [],  # noqa: B006
                         ) -> SandboxList:
    """Your live sandboxes, most recently used first, filtered by labels."""
    service.admit(principal)
    found = service.sandboxes.list(parse_labels(label), owner=principal.name)
    return SandboxList(sandboxes=[_info(sb) for sb in found])


@router.get("/{sandbox_id}", response_model=SandboxInfo)
async def get(sandbox_id: str, service: ServiceDep, principal: PrincipalDep) -> SandboxInfo:
    """One of your sandboxes."""
    return _info(_get(service, principal, sandbox_id))


@router.delete("/{sandbox_id}", status_code=204, response_class=Response)
async def destroy(sandbox_id: str, service: ServiceDep, principal: PrincipalDep) -> Response:
    """Kill everything in the sandbox and remove it."""
    sb = _get(service, principal, sandbox_id)
    await sb.destroy()
    log.info("sandbox destroyed", extra={"fields": {"sandbox_id": sandbox_id, "key": principal.name}})
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------- running

@router.post("/{sandbox_id}/exec", response_model=ExecuteResponse)
async def exec_(sandbox_id: str, body: ExecBody, service: ServiceDep, principal: PrincipalDep) -> dict[str, Any]:
    """Run a command and wait for its result (the shape of POST /api/v1/execute). Files and background
    processes persist between commands; a command running over its limits is killed, the sandbox lives on."""
    sb = _get(service, principal, sandbox_id)
    body.check_cwd()
    async with service.capacity.slot():
        result = await sb.exec(body.command, stdin=body.stdin, env=body.env, cwd=body.cwd,
                               limits=body.exec_limits())
    _log_exec(principal, sb, result, streamed=False)
    return execute_response(result)


@router.post("/{sandbox_id}/run", response_model=ExecuteResponse)
async def run(sandbox_id: str, body: SandboxRunBody, service: ServiceDep,
              principal: PrincipalDep) -> dict[str, Any]:
    """Compile and run a program in the sandbox, as POST /api/v1/execute does in a fresh one (the same answer):
    its files (and what the compile step built) stay in the workdir; the run's limits are the sandbox's,
    tightened by the body's. The program failing is a result, never an HTTP error."""
    sb = _get(service, principal, sandbox_id)
    request = body.to_request(sb.language)
    async with service.capacity.slot():
        result = await sb._run_request(request)
    _log_exec(principal, sb, result, streamed=False)
    return execute_response(result)


HEARTBEAT_S = 15.0
_streams: set[asyncio.Task[None]] = set()  # running streamed commands (a reference, so none is collected)


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


SSE_DOC = ("Server-Sent Events: `stdout` and `stderr` events (data `{\"data\": text}`) as the output comes, then "
           "one `exit` event whose data is the result (the shape of POST /api/v1/execute), or one `error` event "
           "(data `{\"detail\": why}`) when the sandbox failed or went away meanwhile; a `: keep-alive` comment "
           "after 15 s without output.")


SSE = {"text/event-stream": {"schema": {  # one event (Open API 3.1: the schema of a stream describes its events)
    "type": "object", "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["stdout", "stderr", "exit", "error"]},
                   "data": {"type": "string", "contentMediaType": "application/json"}}}}}


@router.post("/{sandbox_id}/exec/stream", response_class=StreamingResponse,
             responses={200: {"description": SSE_DOC, "content": SSE}})
async def exec_stream(sandbox_id: str, body: ExecBody, service: ServiceDep,
                      principal: PrincipalDep) -> StreamingResponse:
    """Run a command, streaming its output as Server-Sent Events. Closing the connection kills the command."""
    sb = _get(service, principal, sandbox_id)
    body.check_cwd()
    service.capacity.admit()

    queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # bounded by the output cap

    async def produce() -> None:
        try:
            async with service.capacity.slot(counted=False):  # admitted above
                async for ev in sb.stream(body.command, stdin=body.stdin, env=body.env, cwd=body.cwd,
                                          limits=body.exec_limits()):
                    if ev.type == "exit" and ev.result is not None:
                        _log_exec(principal, sb, ev.result, streamed=True)
                        queue.put_nowait(_event("exit", execute_response(ev.result)))
                    else:
                        queue.put_nowait(_event(ev.type, OutputData(data=ev.data).model_dump()))
        except ExecboxError as e:  # the headers are sent: the failure is the stream's last event
            queue.put_nowait(_event("error", ErrorBody(detail=str(e)).model_dump(exclude_none=True)))
        finally:
            queue.put_nowait(None)

    async def events() -> AsyncIterator[bytes]:
        # The command runs in a task of its own: the response being cancelled (the client went away) cancels
        # it once, and its cleanup (killing the command) runs to the end outside the response's cancel scope.
        task = asyncio.create_task(produce())
        _streams.add(task)
        task.add_done_callback(_streams.discard)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"  # a comment: keeps proxies and read timeouts from closing it
                    continue
                if item is None:
                    return
                yield item
        finally:
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --------------------------------------------------------------------------------------------- files

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/{sandbox_id}/files", response_model=Listing)
async def list_files(sandbox_id: str, service: ServiceDep, principal: PrincipalDep,
                     directory: Annotated[str, Query(alias="dir", max_length=4096,
                                                     description="Directory, relative to the workdir.")] = ".",
                     ) -> Listing:
    """The entries of a workdir directory, sorted by name (symlinks reported, never followed)."""
    sb = _get(service, principal, sandbox_id)
    return Listing(dir=directory or ".", entries=await sb.files.list(directory or "."))


@router.put("/{sandbox_id}/files/{path:path}", response_model=Written,
            openapi_extra={"requestBody": {"required": True, "content": BINARY,
                                           "description": "The file's bytes, as they are."}})
async def write_file(sandbox_id: str, path: str, request: Request, service: ServiceDep,
                     principal: PrincipalDep) -> Written:
    """Create or replace a file with the raw body (parent directories are made). At most the server's
    max_body_bytes and the sandbox's disk (413)."""
    sb = _get(service, principal, sandbox_id)
    name = check_file_name(path)
    disk = sb.limits.disk_mb * 1024 * 1024
    if int(request.headers.get("content-length") or 0) > disk:
        raise HTTPException(413, f"file over the sandbox's disk of {sb.limits.disk_mb} MiB")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > disk:
            raise HTTPException(413, f"file over the sandbox's disk of {sb.limits.disk_mb} MiB")
    await sb.files.write(name, bytes(data))
    return Written(path=posixpath.normpath(name), size_bytes=len(data))


@router.get("/{sandbox_id}/files/{path:path}", response_class=Response,
            responses={200: {"description": "The file's bytes.", "content": BINARY}})
async def read_file(sandbox_id: str, path: str, service: ServiceDep, principal: PrincipalDep) -> Response:
    """A file's bytes (404 when it does not exist or is not a regular file)."""
    sb = _get(service, principal, sandbox_id)
    return Response(await sb.files.read(path), media_type="application/octet-stream")


@router.delete("/{sandbox_id}/files/{path:path}", status_code=204, response_class=Response)
async def remove_file(sandbox_id: str, path: str, service: ServiceDep, principal: PrincipalDep) -> Response:
    """Remove a file, symlink or directory tree (404 when nothing was there)."""
    sb = _get(service, principal, sandbox_id)
    if not await sb.files.remove(path):
        raise HTTPException(404, f"no file {path!r} in sandbox {sandbox_id}")
    return Response(status_code=204)
