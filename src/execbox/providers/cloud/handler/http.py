"""The HTTP face of the handler, for Cloud Run services and Container Apps (HTTP ingress): a Starlette app.

    POST /run      a HandlerCall as the body; the HandlerAnswer as the response (JSON either way)
    GET  /health   200 when it can run programs, 503 with the reason when it cannot

With EXECBOX_HANDLER_TOKEN set, /run wants ``Authorization: Bearer <token>`` (compared in constant time).
On Cloud Run with IAM (--no-allow-unauthenticated), the caller's Google ID token then goes in
``X-Serverless-Authorization``, which Cloud Run checks and strips, leaving ``Authorization`` to the handler.

Status codes follow the answer (200 a result; 400 a request refused; 503 busy or unavailable, with
Retry-After when known; 500 a failure after the program was handed over); the body is always the answer.
"""

from __future__ import annotations

import hmac
import math

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from execbox.providers.cloud.handler import Handler, error_answer, handler

STATUS = {"request": 400, "capacity": 503, "unavailable": 503, "internal": 500}


def authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, read no further than ``limit`` bytes (None: it is larger)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def create_app(h: Handler | None = None) -> Starlette:
    """The app over ``h`` (default: this process's handler, made at the first request)."""

    def current() -> Handler:
        return h if h is not None else handler()

    async def run(request: Request) -> JSONResponse:
        hd = current()
        if not authorized(request, hd.config.token):
            return JSONResponse(error_answer("unavailable", "refused the caller's token (EXECBOX_HANDLER_TOKEN)",
                                             False), status_code=401)
        body = await _body(request, hd.config.max_payload_bytes)
        if body is None:
            return JSONResponse(error_answer("request", f"takes at most {hd.config.max_payload_bytes} bytes",
                                             False), status_code=413)
        answer = await hd.run(body)
        error = answer.get("error")
        if error is None:
            return JSONResponse(answer)
        headers = {}
        if (retry := error.get("retry_after_s")) is not None:
            headers["Retry-After"] = str(math.ceil(retry))
        return JSONResponse(answer, status_code=STATUS[error["kind"]], headers=headers)

    async def health(request: Request) -> JSONResponse:
        state = current().health()
        return JSONResponse(state, status_code=200 if state["ok"] else 503)

    return Starlette(routes=[Route("/run", run, methods=["POST"]), Route("/health", health, methods=["GET"])])


app = create_app()
