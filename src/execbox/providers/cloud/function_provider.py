"""What the function-service providers (aws, gcp, azure) share: a Provider that only takes whole requests
(``RequestRunner``), the call's size and time bounds, blocking SDK calls in a thread that a cancel never loses,
and the reading of an HTTP face's answer (Cloud Run and Container Apps both front the handler's POST /run).

Each vendor module only says how the call is sent and how its SDK's failures read: not sent (the error of its
kind, the router may try another provider) or sent with no complete answer (``function.unknown``)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, RequestError, SandboxError
from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.providers.base import Instance, InstanceSpec, Provider
from execbox.providers.cloud import function

T = TypeVar("T")
log = logging.getLogger(__name__)


class FunctionProvider(Provider):
    """A function service running execbox's handler: whole requests only, none kept (no sandboxes)."""

    supports_persistent = False
    transport_bytes: int  # the largest call body the service takes
    where: str  # the service, for messages

    def __init__(self) -> None:
        self._abandoned: set[asyncio.Future[Any]] = set()

    async def start(self, spec: InstanceSpec) -> Instance:
        # the engine sends one-shot requests to run_request; persistent sandboxes are refused before here
        raise SandboxError(f"provider {self.name!r} ({self.where}) runs whole requests and keeps no sandboxes")

    def call_body(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> bytes:
        """The HandlerCall's JSON, refused here (never sent) when the service would not take it."""
        body = function.HandlerCall.of(request, limits, execution_id).to_json()
        if len(body) > self.transport_bytes:
            raise RequestError(f"provider {self.name!r}: the request is {len(body)} bytes as sent, more than the "
                               f"{self.transport_bytes} {self.where} takes in one call")
        return body

    @staticmethod
    def wait_s(limits: Limits, extra_s: float) -> float:
        """How long the answer may take: the compile and run steps' wall times and the settings' extra."""
        return limits.compile_wall_time_s + limits.wall_time_s + extra_s

    def unknown(self, why: str) -> OutcomeUnknown:
        return function.unknown(self.name, self.where, why)

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` (a blocking SDK call) in a thread. A cancel is raised at once and never loses the call:
        one not yet started is dropped before anything is sent; one under way is kept here until it ends (its
        outcome logged) and ``aclose`` waits for it."""
        abandoned = threading.Event()

        def guarded() -> T:
            if abandoned.is_set():
                raise asyncio.CancelledError  # cancelled while queued: nothing was sent
            return fn()

        job = asyncio.ensure_future(asyncio.to_thread(guarded))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            abandoned.set()
            self._abandoned.add(job)
            job.add_done_callback(self._ended)
            raise

    def _ended(self, job: asyncio.Future[Any]) -> None:
        self._abandoned.discard(job)
        if not job.cancelled() and (e := job.exception()) is not None and not isinstance(e, asyncio.CancelledError):
            log.warning("provider %r: a call given up by its caller ended with %r", self.name, e)

    async def aclose(self) -> None:
        if self._abandoned:
            await asyncio.gather(*self._abandoned, return_exceptions=True)


def retry_after(value: str | None) -> float | None:
    """Retry-After's seconds (a number or an HTTP date; None: absent or unreadable)."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def http_answer(provider: str, where: str, status: int, body: bytes, headers: Mapping[str, str],
                auth_fix: str) -> ExecutionResult:
    """The result in the HTTP face's answer, or the error it stands for. The handler's own answers carry a
    HandlerAnswer at any status (``function.answered`` reads it: a refusal, or the code run). Without one, the
    service's front end spoke: 401/403 its auth (``auth_fix`` says what to do), 429 its capacity, another 4xx a
    refusal; a 5xx may come after it forwarded the call, so the code may have run."""
    doc = _json(body)
    if status == 200:
        return function.answered(doc, provider, where)
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return function.answered(doc, provider, where)  # the handler's refusal or failure, as it said
    said = f"provider {provider!r}: {where} answered HTTP {status}{_detail(body)}"
    if status in (401, 403):
        raise ProviderUnavailable(f"{said}: {auth_fix}")
    if status == 429:
        raise AtCapacity(f"{said} (too many requests)", retry_after(headers.get("retry-after")))
    if status == 413:
        raise RequestError(f"{said}: the request is too large for it")
    if 400 <= status < 500:
        raise ProviderUnavailable(f"{said}: check the URL (the handler answers POST /run)")
    raise function.unknown(provider, where, f"answered HTTP {status}{_detail(body)} without a handler answer")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _detail(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return f" ({text})" if text else ""
