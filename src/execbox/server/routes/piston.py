"""Piston v2 drop-in: POST /api/v2/execute and GET /api/v2/runtimes, with Piston's shapes and errors
(400 ``{"message"}``). Piston's times are milliseconds, its memory limits bytes (-1: the server's)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import signal as signals
from typing import Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox.engine import StageEvent
from execbox.errors import ExecboxError, RequestError
from execbox.languages import Language
from execbox.models import ExecutionRequest, File, Limits, StepResult
from execbox.models import Status as S
from execbox.providers.base import LiveInput
from execbox.server.deps import PrincipalDep, ServiceDep

PREFIX = "/api/v2/"
log = logging.getLogger("execbox.server")


def error_shape(message: str, extra: Any) -> dict[str, Any]:
    return {"message": message}


class _Message(BaseModel):
    message: str


router = APIRouter(tags=["piston"], responses={
    400: {"model": _Message, "description": "Bad request, unknown runtime."},
    401: {"model": _Message}, 413: {"model": _Message}, 429: {"model": _Message},
    500: {"model": _Message}, 503: {"model": _Message}})


class PistonFile(BaseModel):
    model_config = ConfigDict(extra="ignore")  # Piston ignores what it does not know
    name: str | None = None
    content: str
    encoding: Literal["utf8", "base64", "hex"] = "utf8"

    def data(self) -> str | bytes:
        try:
            if self.encoding == "base64":
                return base64.b64decode(self.content, validate=True)
            if self.encoding == "hex":
                return bytes.fromhex(self.content)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"file {self.name or ''!r}: content is not valid {self.encoding}") from e
        return self.content


class PistonExecute(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"language": "python", "version": "*", "files": [{"name": "main.py", "content": "print(input())"}],
         "stdin": "hello", "args": [], "run_timeout": 3000, "run_memory_limit": -1}]})
    language: str = Field(max_length=64)
    version: str = "*"
    files: list[PistonFile] = Field(min_length=1, max_length=256)
    stdin: str = ""
    args: list[str] = []
    compile_timeout: float | None = Field(None, gt=0, description="milliseconds")
    run_timeout: float | None = Field(None, gt=0, description="milliseconds")
    compile_cpu_time: float | None = Field(None, gt=0, description="milliseconds")
    run_cpu_time: float | None = Field(None, gt=0, description="milliseconds")
    compile_memory_limit: int | None = Field(None, ge=-1, description="bytes; -1: no limit but the server's")
    run_memory_limit: int | None = Field(None, ge=-1, description="bytes; -1: no limit but the server's")


class PistonStage(BaseModel):
    stdout: str
    stderr: str
    output: str
    code: int | None
    signal: str | None
    message: str | None = None
    status: str | None = None
    cpu_time: int | None = Field(None, description="milliseconds")
    wall_time: int | None = Field(None, description="milliseconds")
    memory: int | None = Field(None, description="bytes")


class PistonResult(BaseModel):
    language: str
    version: str
    run: PistonStage
    compile: PistonStage | None = None


class PistonRuntime(BaseModel):
    language: str
    version: str
    aliases: list[str]
    runtime: str | None = None


# Piston's status letters (its isolate heritage): runtime error, signal, timeout, output/error length, internal
_STATUS = {S.RUNTIME_ERROR: "RE", S.COMPILE_ERROR: "RE", S.TIMEOUT: "TO", S.MEMORY_LIMIT: "SG", S.KILLED: "SG",
           S.OUTPUT_LIMIT: "OL", S.INTERNAL_ERROR: "XX"}


def _stage(step: StepResult) -> PistonStage:
    sig = None
    if step.signal:
        try:
            sig = signals.Signals(step.signal).name
        except ValueError:
            sig = f"SIG{step.signal}"
    elif step.status in (S.TIMEOUT, S.MEMORY_LIMIT, S.OUTPUT_LIMIT):
        sig = "SIGKILL"  # execbox killed it, as Piston would
    status = _STATUS.get(step.status)
    if status == "RE" and sig:
        status = "SG"
    if status == "OL" and step.stderr_truncated and not step.stdout_truncated:
        status = "EL"
    return PistonStage(
        stdout=step.stdout, stderr=step.stderr, output=step.stdout + step.stderr, code=step.exit_code, signal=sig,
        message=step.message, status=status,
        cpu_time=None if step.cpu_time_s is None else round(step.cpu_time_s * 1000),
        wall_time=round(step.wall_time_s * 1000),
        memory=None if step.max_rss_mb is None else int(step.max_rss_mb * 1024 * 1024))


def _mb(limit: int | None) -> int | None:
    return None if limit is None or limit < 0 else max(8, math.ceil(limit / (1024 * 1024)))


# execbox's limit -> the Piston field it comes from (to name the field a client sent in an error)
_LIMIT_FIELDS = {"wall_time_s": "run_timeout", "cpu_time_s": "run_cpu_time", "compile_wall_time_s": "compile_timeout",
                 "memory_mb": "run_memory_limit"}


def _limits(body: PistonExecute) -> Limits | None:
    limits: dict[str, Any] = {}
    if body.run_timeout is not None:
        limits["wall_time_s"] = body.run_timeout / 1000
    if body.run_cpu_time is not None:
        limits["cpu_time_s"] = body.run_cpu_time / 1000
    if body.compile_timeout is not None:
        limits["compile_wall_time_s"] = body.compile_timeout / 1000
    if (mem := _mb(body.run_memory_limit)) is not None:
        limits["memory_mb"] = mem
    if not limits:
        return None
    try:
        return Limits(**limits)
    except ValidationError as e:  # out of execbox's range (e.g. a run_timeout of days): name Piston's field
        err = e.errors(include_url=False)[0]
        field = _LIMIT_FIELDS.get(str(err["loc"][0]) if err["loc"] else "", "limits")
        raise RequestError(f"{field}: out of range ({err['msg']} in execbox's units)") from None


def _request(body: PistonExecute, lang: Language) -> ExecutionRequest:
    files = []
    for i, f in enumerate(body.files):
        name = f.name
        if name is None and i == 0:  # any language's entry; java's may hold a class of any name (java.toml)
            name = lang.entry
        files.append(File(name=name or f"file{i}.code", content=f.data()))
    return ExecutionRequest(language=lang.name, files=files, stdin=body.stdin, args=body.args, limits=_limits(body))


def _language(service: Any, name: str, version: str) -> Language:
    try:
        lang: Language = service.engine.languages.get(name)
        service.engine.check_version(lang, version)
    except RequestError as e:
        raise RequestError(f"{name}-{version} runtime is unknown") from e
    return lang


@router.post("/api/v2/execute", response_model=PistonResult)
async def execute(body: PistonExecute, service: ServiceDep, principal: PrincipalDep) -> JSONResponse:
    """Piston's execute: the first file is the entry file."""
    service.admit(principal)
    lang = _language(service, body.language, body.version)
    try:
        request = _request(body, lang)
    except ValidationError as e:  # e.g. a file name Piston would take but that is unsafe here
        raise RequestError("; ".join(err["msg"] for err in e.errors(include_url=False))) from None
    service.check(request, principal)
    result = await service.execute(principal, request)
    compiled = _stage(result.compile) if result.compile else None
    # Piston runs nothing after a failed compile and answers with the compile stage as ``run`` too
    run = compiled if compiled is not None and result.status == S.COMPILE_ERROR else _stage(result)
    out = PistonResult(language=lang.name, version=result.version or "", run=run, compile=compiled)
    return JSONResponse(out.model_dump(exclude={"compile"} if out.compile is None else set()))


# Piston names the runtime package that provides a language (node's javascript, mono's csharp)
_RUNTIME = {"javascript": "node", "typescript": "node", "csharp": "mono"}


@router.get("/api/v2/runtimes", response_model=list[PistonRuntime])
async def runtimes(service: ServiceDep, principal: PrincipalDep) -> list[PistonRuntime]:
    """The installed languages in Piston's shape."""
    return [PistonRuntime(language=lang.name, version=lang.version() or "", aliases=lang.aliases,
                          runtime=_RUNTIME.get(lang.name))
            for lang in service.engine.languages if lang.available]


# --- /api/v2/connect: Piston's interactive runs over a WebSocket -------------------------------------------
# Client: {"type": "init", <the execute body>} first (within INIT_TIMEOUT_S), then any number of
# {"type": "data", "stream": "stdin", "data": "..."} and {"type": "signal", "signal": "SIGINT"}.
# Server: {"type": "runtime", language, version}, then per stage {"type": "stage", "stage"}, {"type": "data",
# "stream", "data"} as output comes, {"type": "exit", "stage", "code", "signal"}; the socket is closed with
# 4999 "Job Completed". Errors: {"type": "error", "message"} and close 4002; Piston's other close codes below.
# The key goes in the handshake's headers (X-API-Key or Authorization: Bearer), as everywhere else.
INIT_TIMEOUT_S = 1.0
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_PENDING_STDIN_BYTES = 1024 * 1024
_SIGNALS = {s.name: int(s) for s in signals.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_")}


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@router.websocket("/api/v2/connect")
async def connect(ws: WebSocket) -> None:
    """Piston's interactive run: stdin and signals in, output and exits out, as they happen."""
    service = ws.app.state.service
    auth = ws.headers.get("x-api-key") or ws.headers.get("authorization", "").removeprefix("Bearer ").strip()
    principal = service.keys.lookup(auth) if auth else None
    if principal is None:  # refused in the handshake: the client sees HTTP 403
        await ws.close(code=1008, reason="missing or invalid API key")
        return
    await ws.accept()
    live = LiveInput()
    try:
        body = await _init(ws)
        service.admit(principal)
        lang = _language(service, body.language, body.version)
        try:
            request = _request(body, lang)
        except ValidationError as e:
            raise RequestError("; ".join(err["msg"] for err in e.errors(include_url=False))) from None
        service.check(request, principal)
        await ws.send_json({"type": "runtime", "language": lang.name, "version": lang.version() or ""})

        async def emit(event: StageEvent) -> None:
            if event.kind == "data":
                await ws.send_json({"type": "data", "stream": event.stream,
                                    "data": event.data.decode("utf-8", "replace")})
            elif event.kind == "stage":
                await ws.send_json({"type": "stage", "stage": event.stage})
            else:
                assert event.step is not None
                stage = _stage(event.step)
                await ws.send_json({"type": "exit", "stage": event.stage, "code": stage.code,
                                    "signal": stage.signal, "status": stage.status, "message": stage.message})

        live.write(body.stdin.encode())  # the init's stdin comes first
        reader = asyncio.create_task(_read_client(ws, live))
        run = asyncio.create_task(service.execute(principal, request, live=(live, emit)))
        done, _ = await asyncio.wait({reader, run}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done:  # the client went away or broke the protocol: the run is killed
            while not run.done():  # again until it ends: a cancel landing in the server's send may be swallowed
                run.cancel()
                await asyncio.wait({run}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                run.result()
            reader.result()  # raises the _Close, if any
            return
        reader.cancel()
        run.result()
        await ws.close(4999, "Job Completed")
    except _Close as e:
        await _close(ws, e.code, e.reason)
    except ExecboxError as e:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.send_json({"type": "error", "message": str(e)})
        await _close(ws, 4002, "Notified Error")
    except WebSocketDisconnect:
        pass
    except Exception:  # a client that went away mid-send, or a bug: logged, never a traceback to the client
        log.exception("interactive run failed")
        await _close(ws, 1011, "internal error (logged)")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await ws.close(code, reason)


async def _message(ws: WebSocket) -> dict[str, Any]:
    frame = await ws.receive()
    if frame["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(frame.get("code", 1000))
    text = frame.get("text")
    if text is None:
        raise RequestError("messages are JSON text frames")
    if len(text) > MAX_MESSAGE_BYTES:
        raise RequestError(f"a message may be at most {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = json.loads(text)
    except ValueError:
        raise RequestError("a message must be a JSON object") from None
    if not isinstance(msg, dict):
        raise RequestError("a message must be a JSON object")
    return msg


async def _init(ws: WebSocket) -> PistonExecute:
    try:
        msg = await asyncio.wait_for(_message(ws), INIT_TIMEOUT_S)
    except TimeoutError:
        raise _Close(4001, "Initialization Timeout") from None
    if msg.get("type") != "init":
        raise _Close(4003, "Not yet Initialized")
    try:
        return PistonExecute.model_validate(msg)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        raise RequestError(f"{'.'.join(str(p) for p in first['loc']) or 'init'}: {first['msg']}") from None


async def _read_client(ws: WebSocket, live: LiveInput) -> None:
    """The client's messages while the run goes on; returns when it disconnects."""
    try:
        while True:
            msg = await _message(ws)
            kind = msg.get("type")
            if kind == "init":
                raise _Close(4000, "Already Initialized")
            if kind == "data":
                if msg.get("stream") != "stdin" or not isinstance(msg.get("data"), str):
                    raise _Close(4004, "Can only write to stdin")
                live.write(msg["data"].encode())
                while live.pending_bytes > MAX_PENDING_STDIN_BYTES:  # the program reads slower than the client
                    await asyncio.sleep(0.01)  # writes: stop reading, and TCP slows the client down
            elif kind == "signal":
                if msg.get("signal") not in _SIGNALS:
                    raise _Close(4005, "Invalid signal")
                live.signal(_SIGNALS[msg["signal"]])
    except WebSocketDisconnect:
        live.close()
