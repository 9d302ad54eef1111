"""A loopback E2B: the REST API (``POST /v2/sandboxes``, ``DELETE /sandboxes/{id}``) and envd (``/health``,
``/files``, the Connect services ``process.Process`` and ``filesystem.Filesystem``) on one uvicorn server,
which the real ``e2b`` SDK is pointed at through its ``api_url`` and ``sandbox_url`` options.

The Connect side is served by the SDK's own generated ASGI stubs (``ProcessASGIApplication``,
``FilesystemASGIApplication``), so the wire format (envelopes, JSON codec, end-of-stream errors) is the one the
SDK's client speaks. A "sandbox" is this host: its commands run for real (the StartRequest's cmd and args, in
the fake's temp root when no cwd is given), its files are the host paths the SDK names (the tests point the
provider's workdir into a temp dir). Process ends are reported as envd does: a signal's end is exit code -1
with Go's ``signal: <name>`` as the error.

``mode`` makes it misbehave: "unauthorized" (401 on the REST API), "rate_limited" (429 with Retry-After),
"busy" (503), "drop_exec" (a Start is read, counted, then the connection is dropped mid-answer, unrun),
"drop_exec_unanswered" (the same, with not a byte of answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_pb
from e2b.envd.filesystem.filesystem_connect import Filesystem, FilesystemASGIApplication
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import Process, ProcessASGIApplication
from protobuf import Oneof
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

API_KEY = "e2b_fake_key_for_tests"
ENVD_VERSION = "0.6.5"
NOT_FOUND = "The sandbox was not found"  # the proxy's words (e2b.exceptions.SANDBOX_NOT_FOUND_MESSAGE)
_SIGNAL_NAMES = {int(s): signal.strsignal(s) or s.name for s in signal.Signals}


@dataclass
class FakeSandbox:
    id: str
    token: str
    body: dict[str, Any]
    alive: bool = True


@dataclass
class E2bFake:
    root: Path
    api_key: str = API_KEY
    mode: str = "ok"
    retry_after_s: int = 7
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    create_attempts: int = 0  # every POST /v2/sandboxes, refused or not
    creates: list[dict[str, Any]] = field(default_factory=list)  # the bodies of the creates that succeeded
    kills: list[str] = field(default_factory=list)
    kill_attempts: int = 0
    busy_kills: int = 0  # the next this many DELETEs answer 503
    starts: list[dict[str, Any]] = field(default_factory=list)  # every Start that arrived (exec attempts)
    orphans: list[int] = field(default_factory=list)  # process groups whose stream was abandoned, killed at exit
    url: str = ""
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    # --- lifecycle
    async def __aenter__(self) -> E2bFake:
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
        for pid in self.orphans:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def live(self) -> list[str]:
        return [s.id for s in self.sandboxes.values() if s.alive]

    # --- the ASGI app: Connect paths to the SDK's stubs, the rest to starlette
    def _app(self) -> Any:
        rest = Starlette(routes=[
            Route("/v2/sandboxes", self._create, methods=["POST"]),
            Route("/sandboxes/{sandbox_id}", self._kill, methods=["DELETE"]),
            Route("/health", self._health, methods=["GET"]),
            Route("/files", self._files, methods=["GET", "POST"]),
        ])
        process = ProcessASGIApplication(_Process(self))
        filesystem = FilesystemASGIApplication(_Filesystem(self))

        async def app(scope: Any, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if path.startswith("/process.Process/"):
                if denied := self._envd_denial(_headers(scope)):
                    return await denied(scope, receive, send)
                if path.endswith("/Start"):
                    return await self._start(process, scope, receive, send)
                return await process(scope, receive, send)
            if path.startswith("/filesystem.Filesystem/"):
                if denied := self._envd_denial(_headers(scope)):
                    return await denied(scope, receive, send)
                return await filesystem(scope, receive, send)
            return await rest(scope, receive, send)
        return app

    async def _start(self, process: Any, scope: Any, receive: Any, send: Any) -> None:
        """Count the Start; in "drop_exec" mode read it, begin the answer and drop the connection."""
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.starts.append(json.loads(bytes(body[5:])))  # one Connect envelope: flags, length, JSON
        if self.mode == "drop_exec_unanswered":  # closed with no answer at all (uvicorn's transport, reached
            receive.__self__.transport.close()  # through its bound receive: ASGI has no verb for this)
            return
        if self.mode == "drop_exec":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/connect+json")]})
            await send({"type": "http.response.body", "body": b"\x00\x00", "more_body": True})
            raise ConnectionAbortedError("the fake drops the connection after the exec arrived")
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()
        await process(scope, replay, send)

    # --- the REST API
    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self.api_key or self.mode == "unauthorized":
            return JSONResponse({"code": 401, "message": "Invalid API key"}, status_code=401)
        if self.mode == "rate_limited":
            return JSONResponse({"code": 429, "message": "Rate limit exceeded"}, status_code=429,
                                headers={"Retry-After": str(self.retry_after_s)})
        if self.mode == "busy":
            return JSONResponse({"code": 503, "message": "No capacity"}, status_code=503)
        return None

    async def _create(self, request: Request) -> Response:
        self.create_attempts += 1
        if refused := self._refusal(request):
            return refused
        body = await request.json()
        self.creates.append(body)
        box = FakeSandbox(f"fake{uuid.uuid4().hex[:12]}", uuid.uuid4().hex, body)
        self.sandboxes[box.id] = box
        return JSONResponse({"templateID": body["templateID"], "sandboxID": box.id, "clientID": "fake",
                             "envdVersion": ENVD_VERSION, "envdAccessToken": box.token, "domain": None},
                            status_code=201)

    async def _kill(self, request: Request) -> Response:
        self.kill_attempts += 1
        if refused := self._refusal(request):
            return refused
        if self.busy_kills > 0:
            self.busy_kills -= 1
            return JSONResponse({"code": 503, "message": "try again"}, status_code=503)
        box = self.sandboxes.get(request.path_params["sandbox_id"])
        if box is None or not box.alive:
            return JSONResponse({"code": 404, "message": "sandbox not found"}, status_code=404)
        box.alive = False
        self.kills.append(box.id)
        return Response(status_code=204)

    # --- envd over HTTP
    def sandbox_of(self, headers: Any) -> FakeSandbox | None:
        box = self.sandboxes.get(headers.get("e2b-sandbox-id", ""))
        return box if box is not None and box.alive else None

    def _envd_denial(self, headers: Any) -> Response | None:
        box = self.sandbox_of(headers)
        if box is None:
            return PlainTextResponse(NOT_FOUND, status_code=502)
        if headers.get("x-access-token") != box.token:
            return JSONResponse({"code": 401, "message": "invalid access token"}, status_code=401)
        return None

    async def _health(self, request: Request) -> Response:
        return self._envd_denial(request.headers) or Response(status_code=204)

    async def _files(self, request: Request) -> Response:
        if denied := self._envd_denial(request.headers):
            return denied
        if request.method == "GET":
            path = self._path(request.query_params["path"])
            if path.is_dir():
                return JSONResponse({"code": 400, "message": f"path '{path}' is a directory"}, status_code=400)
            if not path.is_file():
                return JSONResponse({"code": 404, "message": f"path '{path}' does not exist"}, status_code=404)
            return Response(path.read_bytes(), media_type="application/octet-stream")
        written = []
        if request.headers.get("content-type", "").startswith("application/octet-stream"):
            written.append(self._write(request.query_params["path"], await request.body()))
        else:
            async with request.form() as form:
                for _, part in form.multi_items():
                    assert not isinstance(part, str)
                    written.append(self._write(request.query_params.get("path") or part.filename or "",
                                               await part.read()))
        return JSONResponse(written)

    def _path(self, path: str) -> Path:
        return Path(path) if path.startswith("/") else self.root / path

    def _write(self, name: str, data: bytes) -> dict[str, str]:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"name": path.name, "type": "file", "path": str(path)}


class _Process(Process):
    """envd's process service: Start runs the command for real and streams its output and end."""

    def __init__(self, fake: E2bFake) -> None:
        self.fake = fake

    async def start(self, request: process_pb.StartRequest, ctx: RequestContext[Any, Any]
                    ) -> AsyncIterator[process_pb.StartResponse]:
        config = request.process or process_pb.ProcessConfig()
        env = {**os.environ, "HOME": str(self.fake.root), **dict(config.envs)}
        proc = await asyncio.create_subprocess_exec(
            config.cmd, *config.args, cwd=config.cwd if config.has_field("cwd") else self.fake.root, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        events: asyncio.Queue[process_pb.ProcessEvent.DataEvent | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, which: str) -> None:
            while chunk := await stream.read(32768):
                events.put_nowait(process_pb.ProcessEvent.DataEvent(output=Oneof(which, chunk)))  # type: ignore[arg-type]
            events.put_nowait(None)

        assert proc.stdout is not None and proc.stderr is not None
        pumps = [asyncio.create_task(pump(proc.stdout, "stdout")), asyncio.create_task(pump(proc.stderr, "stderr"))]
        try:
            yield _event(Oneof("start", process_pb.ProcessEvent.StartEvent(pid=proc.pid)))
            ended = 0
            while ended < 2:
                if (data := await events.get()) is None:
                    ended += 1
                else:
                    yield _event(Oneof("data", data))
            code = await proc.wait()
            status = f"exit status {code}" if code >= 0 else f"signal: {_SIGNAL_NAMES[-code].lower()}"
            yield _event(Oneof("end", process_pb.ProcessEvent.EndEvent(
                exit_code=max(code, -1), exited=code >= 0, status=status, error=status if code else None)))
        finally:  # an abandoned stream leaves its process running, as envd does (SendSignal stops it)
            for task in pumps:
                task.cancel()
            if proc.returncode is None:
                self.fake.orphans.append(proc.pid)

    async def send_signal(self, request: process_pb.SendSignalRequest, ctx: RequestContext[Any, Any]
                          ) -> process_pb.SendSignalResponse:
        selector = request.process.selector if request.process else None
        if not isinstance(selector, Oneof) or selector.field != "pid":
            raise ConnectError(Code.INVALID_ARGUMENT, "a pid is needed")
        try:
            os.killpg(int(selector.value), signal.SIGKILL)
        except ProcessLookupError:
            raise ConnectError(Code.NOT_FOUND, "process not found") from None
        return process_pb.SendSignalResponse()


def _event(event: Any) -> process_pb.StartResponse:
    return process_pb.StartResponse(event=process_pb.ProcessEvent(event=event))


class _Filesystem(Filesystem):
    def __init__(self, fake: E2bFake) -> None:
        self.fake = fake

    async def make_dir(self, request: filesystem_pb.MakeDirRequest, ctx: RequestContext[Any, Any]
                       ) -> filesystem_pb.MakeDirResponse:
        path = self.fake._path(request.path)
        if path.exists():
            raise ConnectError(Code.ALREADY_EXISTS, f"directory '{path}' already exists")
        path.mkdir(parents=True)
        return filesystem_pb.MakeDirResponse(entry=filesystem_pb.EntryInfo(name=path.name, path=str(path)))


def _headers(scope: Any) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
