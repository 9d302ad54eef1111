"""A loopback Cloudflare sandbox bridge: the routes of cloudflare/sandbox-sdk's bridge Worker
(``packages/sandbox/src/bridge/routes.ts``) on one uvicorn server, which the cloudflare provider's httpx
client is pointed at through its ``base_url``.

As the bridge does: ``POST /v1/sandbox`` only names a sandbox, its container is allocated by the first call on
``/v1/sandbox/:id/*`` (where a full account answers 503 ``capacity_exceeded``); ``exec`` answers Server-Sent
Events (``stdout``/``stderr`` as base64 of the output decoded as UTF-8, then ``exit`` or ``error``); files are
raw bytes confined to the workspace root (403 outside, 404 ``workspace_read_not_found``, 413 over 32 MiB);
``hydrate`` extracts a tar into the root; ``DELETE`` is 204; errors are ``{"error", "code"}``, a wrong bearer
token 401 ``unauthorized``.

A "container" is this host: exec runs its argv for real (in the workspace root, its own process group), files
are host paths. The workspace root is ``<root>/workspace`` rather than /workspace (the tests' settings point
workspace_root, workdir and scratch_dir there); all the fake's sandboxes share it.

``mode`` makes it misbehave: "unauthorized" (401 on every route), "rate_limited" (Cloudflare's edge: 429 with
Retry-After on every route), "at_capacity" (503 capacity_exceeded when a container would be allocated),
"drop_exec" (an exec is read, counted, its answer begun, then the connection dropped, unrun),
"drop_exec_unanswered" (the same with not a byte of answer), "stall" (an exec is counted and never answered),
"bridge_timeout" (the exec's own timeout_ms passes at once: the error event the SDK's session gives). The
exec modes spare the first ``faults_after`` execs (a sandbox's creation runs one: its mkdir).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import io
import json
import os
import posixpath
import re
import secrets
import signal
import socket
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "cf-bridge-fake-key"
MAX_WRITE_BYTES = 32 * 1024 * 1024
_SANDBOX_ID = re.compile(r"^[a-z2-7]{1,128}$")
_EXEC_PATH = re.compile(r"^/v1/sandbox/([^/]+)/exec$")


def error(message: str, code: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


@dataclass
class FakeSandbox:
    id: str
    container: bool = False  # allocated by the sandbox's first call
    destroyed: bool = False
    groups: set[int] = field(default_factory=set)  # its processes' groups (killed with it)


@dataclass
class CloudflareFake:
    root: Path
    api_key: str | None = API_KEY
    mode: str = "ok"
    retry_after_s: int = 7
    faults_after: int = 0
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    create_attempts: int = 0  # every POST /v1/sandbox, refused or not
    execs: list[dict[str, Any]] = field(default_factory=list)  # every exec body that arrived
    writes: list[str] = field(default_factory=list)  # the paths PUT
    hydrates: list[list[str]] = field(default_factory=list)  # the member names of each tar extracted
    deletes: list[str] = field(default_factory=list)
    url: str = ""
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    async def __aenter__(self) -> CloudflareFake:
        self.workspace.mkdir(parents=True, exist_ok=True)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self._app(), lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task
        for box in self.sandboxes.values():
            self._kill_processes(box)

    def live(self) -> list[str]:
        """The sandboxes whose container is allocated and not destroyed."""
        return [b.id for b in self.sandboxes.values() if b.container and not b.destroyed]

    # --- the app: the exec route's misbehaviours need the raw ASGI connection, the rest is starlette
    def _app(self) -> Any:
        routes = Starlette(routes=[
            Route("/health", lambda _: JSONResponse({"ok": True}), methods=["GET"]),
            Route("/v1/sandbox", self._create, methods=["POST"]),
            Route("/v1/sandbox/{id}", self._delete, methods=["DELETE"]),
            Route("/v1/sandbox/{id}/exec", self._exec, methods=["POST"]),
            Route("/v1/sandbox/{id}/running", self._running, methods=["GET"]),
            Route("/v1/sandbox/{id}/hydrate", self._hydrate, methods=["POST"]),
            Route("/v1/sandbox/{id}/file/{path:path}", self._file, methods=["GET", "PUT"]),
        ])

        async def app(scope: Any, receive: Any, send: Any) -> None:
            exec_of = _EXEC_PATH.match(scope["path"]) if scope["type"] == "http" else None
            if exec_of and self._exec_fault() in ("drop_exec", "drop_exec_unanswered", "stall"):
                request = Request(scope, receive)
                if isinstance(refused := self._gate(request, exec_of.group(1)), Response):
                    return await refused(scope, receive, send)
                self.execs.append(json.loads(await request.body()))
                if self.mode == "stall":
                    await asyncio.Event().wait()  # until the client gives up (uvicorn cancels it at shutdown)
                if self.mode == "drop_exec_unanswered":  # closed with no answer at all (uvicorn's transport,
                    receive.__self__.transport.close()  # reached through its bound receive: ASGI has no verb)
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream")]})
                await send({"type": "http.response.body", "body": b"event: stdout\ndata: aGk=\n\n", "more_body": True})
                raise ConnectionAbortedError("the fake drops the connection after the exec arrived")
            return await routes(scope, receive, send)
        return app

    def _exec_fault(self) -> str:
        """The mode, for an exec arriving now ("ok" for the first ``faults_after``)."""
        return self.mode if len(self.execs) >= self.faults_after else "ok"

    def _gate(self, request: Request, sandbox_id: str | None, *, allocate: bool = True) -> Response | FakeSandbox:
        """What the edge and the bridge's middlewares answer before a route: its sandbox when they let it by."""
        if self.mode == "rate_limited":  # a rate limiting rule in front of the Worker (Cloudflare error 1015)
            return PlainTextResponse("error code: 1015", status_code=429,
                                     headers={"Retry-After": str(self.retry_after_s)})
        if sandbox_id is not None and not _SANDBOX_ID.match(sandbox_id):
            return error("Invalid sandbox ID format", "invalid_request", 400)
        auth = request.headers.get("authorization", "")
        if self.api_key and (auth[7:] if auth.lower().startswith("bearer ") else "") != self.api_key:
            return error("Unauthorized", "unauthorized", 401)
        if self.mode == "unauthorized":
            return error("Unauthorized", "unauthorized", 401)
        if sandbox_id is None:
            return FakeSandbox("")
        box = self.sandboxes.get(sandbox_id)
        if box is None or box.destroyed:  # any name is a sandbox to the bridge; a destroyed one's is fresh
            box = self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id)
        if allocate and not box.container:
            if self.mode == "at_capacity":
                return error("Maximum number of running container instances exceeded: instance limit reached",
                             "capacity_exceeded", 503)
            box.container = True
        return box

    async def _create(self, request: Request) -> Response:
        self.create_attempts += 1
        if isinstance(gate := self._gate(request, None), Response):
            return gate
        sandbox_id = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
        self.sandboxes[sandbox_id] = FakeSandbox(sandbox_id)
        return JSONResponse({"id": sandbox_id})

    async def _delete(self, request: Request) -> Response:
        if isinstance(box := self._gate(request, request.path_params["id"], allocate=False), Response):
            return box
        self.deletes.append(box.id)
        if box.container:
            self._kill_processes(box)
            box.container, box.destroyed = False, True
        return Response(status_code=204)

    async def _running(self, request: Request) -> Response:
        if isinstance(box := self._gate(request, request.path_params["id"]), Response):
            return box
        return JSONResponse({"running": True})

    def _resolve(self, path: str) -> Path | None:
        """The bridge's resolveWorkspacePath, with this fake's root for /workspace."""
        resolved = posixpath.normpath("/" + path)
        root = str(self.workspace)
        return Path(resolved) if resolved == root or resolved.startswith(root + "/") else None

    async def _file(self, request: Request) -> Response:
        if isinstance(box := self._gate(request, request.path_params["id"]), Response):
            return box
        path = self._resolve(request.path_params["path"])
        if path is None:
            return error("path must resolve to a location within /workspace", "invalid_request", 403)
        if request.method == "GET":
            if not path.exists():
                return error(f"File not found: {path}", "workspace_read_not_found", 404)
            try:
                return Response(path.read_bytes(), media_type="application/octet-stream")
            except OSError as e:
                return error(f"read failed: {e}", "exec_transport_error", 502)
        data = await request.body()
        if len(data) > MAX_WRITE_BYTES:
            return error(f"payload too large: {len(data)} bytes", "payload_too_large", 413)
        path.parent.mkdir(parents=True, exist_ok=True)  # Bun.write makes the parents
        path.write_bytes(data)
        self.writes.append(str(path))
        return JSONResponse({"ok": True})

    async def _hydrate(self, request: Request) -> Response:
        if isinstance(box := self._gate(request, request.path_params["id"]), Response):
            return box
        data = await request.body()
        if not data:
            return error("Empty tar payload", "invalid_request", 400)
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                names = tar.getnames()
                tar.extractall(self.workspace, filter="data")
        except (tarfile.TarError, OSError) as e:
            return error(f"tar extract failed: {e}", "workspace_archive_write_error", 502)
        self.hydrates.append(names)
        return JSONResponse({"ok": True})

    async def _exec(self, request: Request) -> Response:
        if isinstance(box := self._gate(request, request.path_params["id"]), Response):
            return box
        try:
            body = await request.json()
        except ValueError:
            return error("Invalid JSON body", "invalid_request", 400)
        if not isinstance(body.get("argv"), list) or not body["argv"]:
            return error("argv must be a non-empty array", "invalid_request", 400)
        fault = self._exec_fault()
        self.execs.append(body)
        return StreamingResponse(self._run(box, body, fault), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _run(self, box: FakeSandbox, body: dict[str, Any], fault: str) -> AsyncIterator[bytes]:
        if fault == "bridge_timeout":
            yield _sse("error", json.dumps({"error": f"Command timeout after {body.get('timeout_ms')}ms",
                                            "code": "exec_error"}))
            return
        proc = await asyncio.create_subprocess_exec(
            *body["argv"], cwd=self.workspace, env={**os.environ, "HOME": str(self.root)},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        box.groups.add(proc.pid)
        events: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, which: str) -> None:
            text = codecs.getincrementaldecoder("utf-8")(errors="replace")  # the SDK's output is text
            while chunk := await stream.read(32768):
                if decoded := text.decode(chunk):
                    events.put_nowait(_sse(which, base64.b64encode(decoded.encode()).decode()))
            if rest := text.decode(b"", final=True):
                events.put_nowait(_sse(which, base64.b64encode(rest.encode()).decode()))
            events.put_nowait(None)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.create_task(pump(proc.stdout, "stdout")), asyncio.create_task(pump(proc.stderr, "stderr"))]
        try:
            ended = 0
            while ended < 2:
                if (event := await events.get()) is None:
                    ended += 1
                else:
                    yield event
            code = await proc.wait()
            yield _sse("exit", json.dumps({"exit_code": code if code >= 0 else 128 - code}))  # bash's 128+N
        finally:  # an abandoned stream leaves the command running, as the bridge does (DELETE stops it)
            for task in pumps:
                task.cancel()

    def _kill_processes(self, box: FakeSandbox) -> None:
        for group in box.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        box.groups.clear()


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()
