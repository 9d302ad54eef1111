"""The FastAPI app factory: one port for the native API, the Piston and Codapi drop-ins, /health and /metrics.

Errors are translated here, once, by the wire schema's table (execbox.wire.ERROR_STATUS); each API answers
in its own error shape (Piston's ``{"message"}``, Codapi's result with ``ok: false``, the native ``{"detail"}``).
Nothing a client sends produces a 5xx or a stack trace: the sandbox failing is the only 5xx (500, or 503 when
retrying may help).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from execbox import __version__
from execbox.errors import ExecboxError, OutcomeUnknown, UnknownLanguageError
from execbox.server.routes import admin, codapi, native, piston, run_code, sandboxes
from execbox.server.service import Service
from execbox.server.settings import ServerSettings
from execbox.wire import CODE_RUN_HEADER, status_of

log = logging.getLogger("execbox.server")

# Each API's error shape, by path prefix; the native shape is the default.
ErrorShape = Callable[[str, Any], dict[str, Any]]


def native_error(message: str, extra: Any) -> dict[str, Any]:
    return {"detail": message, **(extra or {})}


ERROR_SHAPES: dict[str, ErrorShape] = {piston.PREFIX: piston.error_shape, codapi.PREFIX: codapi.error_shape}


def error_response(request: Request, status: int, message: str, extra: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    shape = next((f for prefix, f in ERROR_SHAPES.items() if request.url.path.startswith(prefix)), native_error)
    return JSONResponse(shape(message, extra), status_code=status, headers=headers)


def dev_key(settings: ServerSettings) -> str | None:
    """The dev key from data_dir/dev-api-key, created (0600) on first use; None when turned off."""
    if not settings.dev_key:
        return None
    path = settings.data_dir / "dev-api-key"
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ebx_dev_{secrets.token_urlsafe(24)}\n")
    return Path(path).read_text().strip()


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over ``max_bytes``: at once from Content-Length, or as soon as a streamed body passes
    it (the route's 400 for an unreadable body is replaced by the 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._reply(scope, send)
            return
        seen, over, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._reply(scope, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _BodyTooLarge:
            if not started:
                await self._reply(scope, send)

    async def _reply(self, scope: Scope, send: Send) -> None:
        request = Request(scope)
        response = error_response(request, 413, f"request body over the limit of {self.max_bytes} bytes")
        await response(scope, _empty, send)


async def _empty() -> Message:
    return {"type": "http.disconnect"}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input (it may be megabytes, or a secret)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings, dev_key(settings))
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="execbox", version=__version__, lifespan=lifespan,
                  description="Run untrusted code in many languages with hard limits. Authenticate with "
                              "`X-API-Key: KEY` or `Authorization: Bearer KEY` (everything but /health).")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    for module in (native, piston, codapi, sandboxes, run_code, admin):
        app.include_router(module.router)

    @app.exception_handler(ExecboxError)
    async def _execbox_error(request: Request, exc: ExecboxError) -> JSONResponse:
        status, retry = status_of(exc)  # the wire schema's table, which the client reads back
        extra: dict[str, Any] = {"supported": exc.supported} if isinstance(exc, UnknownLanguageError) else {}
        if attempts := getattr(exc, "provider_attempts", None):  # which providers were tried, and how each failed
            extra["provider_attempts"] = [a.model_dump(mode="json") for a in attempts]
        if status >= 500 and retry is None:  # a loaded server (503 + Retry-After) is not a failure
            log.error("sandbox failure", extra={"fields": {"path": request.url.path, "error": str(exc)}})
        headers = {"Retry-After": str(retry)} if retry is not None else {}
        if request.url.path == "/api/v1/execute" and not isinstance(exc, OutcomeUnknown):
            headers[CODE_RUN_HEADER] = "no"  # refused before the hand-over: a front may try elsewhere
        return error_response(request, status, str(exc), extra, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        if any(request.url.path.startswith(p) for p in ERROR_SHAPES):  # Piston and Codapi answer 400
            first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
            where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
            return error_response(request, 400, f"{where}: {first['msg']}")
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"fields": {"path": request.url.path}})
        return error_response(request, 500, "internal server error (logged)")

    return app


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("execbox")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
