"""execbox's handler for the function services (AWS Lambda, Cloud Run services, Container Apps): the far
side of ``execbox.providers.cloud.function``. It takes a ``HandlerCall``, runs its request with execbox's
Engine on the ``ProcessProvider`` (no namespaces there: rlimits, a session per program, a fresh workdir) and
answers a ``HandlerAnswer``; after each run the environment is reset (``reset``), one run at a time.

    handle(call) -> answer dict           the whole of it, for any transport
    aws_lambda.lambda_handler             the Lambda entry point (awslambdaric)
    http.app, ``python -m ...handler``    POST /run and GET /health on $PORT (Cloud Run, Container Apps)

``code_run`` in an error answer is the truth about the program: false for every refusal before it was handed
over (a bad payload, busy, a limit it cannot honour), true from then on, and for an execution_id this
environment has seen already (it may have run: it is never run twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from execbox.engine import Engine
from execbox.errors import CapacityError, ExecboxError, RequestError
from execbox.languages import LanguageRegistry, default_registry
from execbox.models import ExecutionResult, Limits, Policy
from execbox.providers.cloud.function import ErrorKind, HandlerAnswer, HandlerCall, HandlerError
from execbox.providers.cloud.handler.config import ConfigError, HandlerConfig
from execbox.providers.cloud.handler.reset import Reset, ResetUnsafe
from execbox.providers.cloud.process import ProcessProvider
from execbox.providers.registry import ProviderRegistry

log = logging.getLogger("execbox.handler")
BUSY_RETRY_S = 1.0
MIN_BUDGET_S = 1.0


class Refused(Exception):
    """An answer that is an error, with its kind and whether the program may have run."""

    def __init__(self, kind: ErrorKind, detail: str, code_run: bool, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.error = HandlerError(kind=kind, detail=detail, code_run=code_run, retry_after_s=retry_after_s)


def error_answer(kind: ErrorKind, detail: str, code_run: bool, retry_after_s: float | None = None) -> dict[str, Any]:
    return HandlerAnswer(error=HandlerError(kind=kind, detail=detail, code_run=code_run,
                                            retry_after_s=retry_after_s)).model_dump(mode="json", exclude_none=True)


class Handler:
    """One environment's handler: its settings, its provider, the ids it has run, its lock."""

    def __init__(self, env: Mapping[str, str] | None = None, languages: LanguageRegistry | None = None) -> None:
        self.unusable: str | None = None  # why it refuses every call (its health is then 503)
        try:
            self.config = HandlerConfig.from_env(env)
        except ConfigError as e:
            self.config = HandlerConfig.from_env({})
            self.unusable = str(e)
        c = self.config
        self.languages = languages or default_registry()
        # the programs' own uid where the handler can give them one (root: a container); else its own (Lambda)
        self.run_as = c.run_as if os.geteuid() == 0 else None
        self.provider = ProcessProvider(c.work_root, self.run_as)
        self.seen: set[str] = set()
        self._lock = threading.Lock()
        self.reset: Reset | None = None
        if self.unusable is None:
            self.unusable = self._set_up_reset()

    def _set_up_reset(self) -> str | None:
        c = self.config
        if c.reset is None:
            return ("this is not a function service (no Lambda, Cloud Run or Container Apps variables): set "
                    "EXECBOX_HANDLER_RESET=1 if this environment is the handler's alone (every other process of "
                    "the programs' uid is killed and /tmp emptied after each run), or =0 to run without the reset")
        if not c.reset:
            log.warning("EXECBOX_HANDLER_RESET=0: leftovers of one run (daemons, files in /tmp) reach the next")
            return None
        self.reset = Reset(self.run_as[0] if self.run_as else None, c.scrub_dirs)
        try:
            self.reset.prepare()
        except (ResetUnsafe, OSError) as e:
            return f"the environment reset cannot run here: {e}"
        if problems := self.reset():  # a cold start: nothing may be left from whatever ran before
            return f"the environment reset failed: {problems[0]}"
        return None

    def health(self) -> dict[str, Any]:
        c = self.config
        return {"ok": self.unusable is None, "problem": self.unusable, "service": c.service,
                "reset": bool(self.reset), "programs_uid": self.run_as[0] if self.run_as else os.getuid(),
                "egress": "open" if c.egress else "none",
                "busy": self._lock.locked(), "max_payload_bytes": c.max_payload_bytes,
                "maxima": c.maxima.model_dump(mode="json")}

    async def run(self, call: bytes | str | Mapping[str, Any], remaining_s: float | None = None) -> dict[str, Any]:
        """The answer to ``call`` (its JSON, or already decoded); ``remaining_s``: the time the service
        leaves this invocation (Lambda's), which bounds the run. Never raises."""
        try:
            parsed = self._parse(call)
            if self.unusable is not None:
                raise Refused("unavailable", self.unusable, False)
            if not self._lock.acquire(blocking=False):
                raise Refused("capacity", "is running another execution (its concurrency must be 1)", False,
                              BUSY_RETRY_S)
            try:
                return self._answer(await self._execute(parsed, remaining_s))
            finally:
                self._lock.release()
        except Refused as r:
            return HandlerAnswer(error=r.error).model_dump(mode="json", exclude_none=True)
        except Exception as e:  # a handler bug: whether the program started is what _execute knew
            log.exception("handler failure")
            return error_answer("internal", f"failed: {type(e).__name__}: {e}", True)

    def _parse(self, call: bytes | str | Mapping[str, Any]) -> HandlerCall:
        if isinstance(call, bytes | str):
            size = len(call.encode() if isinstance(call, str) else call)
            if size > self.config.max_payload_bytes:
                raise Refused("request", f"takes at most {self.config.max_payload_bytes} bytes ({size} sent)", False)
            try:
                call = json.loads(call)
            except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than json's recursion
                raise Refused("request", f"was sent something that is not JSON it can read: {e}", False) from None
        try:
            return HandlerCall.model_validate(call)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(map(str, first["loc"])) or "call"
            raise Refused("request", f"was sent a call it cannot use ({where}: {first['msg']})", False) from None

    def _policy(self, remaining_s: float | None) -> Policy:
        """The handler's maxima, the time left in this invocation (less the margin) among them."""
        maxima = self.config.maxima
        if remaining_s is not None:
            budget = self._budget(remaining_s)
            if budget < MIN_BUDGET_S:
                raise Refused("capacity", f"has {remaining_s:.1f} s left in this invocation, too little to run "
                              "anything (raise the function's timeout)", False)
            maxima = maxima.model_copy(update={k: min(getattr(maxima, k), budget)
                                               for k in ("wall_time_s", "cpu_time_s", "compile_wall_time_s")})
        return Policy(defaults=Limits(), maxima=maxima)

    def _budget(self, remaining_s: float) -> float:
        """The time a run may take of what is left (a tenth of a second down: limits read plainly)."""
        return math.floor((remaining_s - self.config.margin_s) * 10) / 10

    def _limits(self, policy: Policy, asked: Limits | None, remaining_s: float | None) -> Limits:
        limits = policy.apply(asked)
        if asked is not None and asked.network and not self.config.egress:  # not capped off: refused
            raise Refused("request", "runs on a service without egress: it cannot give programs the network", False)
        if not limits.network and self.config.egress:
            raise Refused("request", "runs on a service with egress (EXECBOX_HANDLER_EGRESS=open): it cannot cut "
                          "programs off the network", False)
        if remaining_s is not None:  # the compile step and the run both fit the invocation's time
            budget = self._budget(remaining_s)
            limits = limits.model_copy(update={"compile_wall_time_s": min(
                limits.compile_wall_time_s, max(budget - limits.wall_time_s, MIN_BUDGET_S))})
        return limits

    async def _execute(self, call: HandlerCall, remaining_s: float | None) -> ExecutionResult:
        if call.execution_id in self.seen:
            raise Refused("request", f"has already been sent execution {call.execution_id}; it may have run, so "
                          "it is not run again", True)
        policy = self._policy(remaining_s)
        try:
            request = call.request.to_request()
        except RequestError as e:
            raise Refused("request", f"was sent a request it cannot run: {e}", False) from None
        try:
            lang = self.languages.get(request.language)
        except RequestError as e:
            raise Refused("request", f"was sent a request it cannot run: {e}", False) from None
        if missing := lang.missing():  # another provider may have it: refused, not run and failed
            raise Refused("unavailable", f"has no {', '.join(missing)} in its image (for {lang.name})", False)
        fixed = Policy(defaults=Limits(), maxima=self._limits(policy, request.limits, remaining_s))
        handed_over = False

        def on_handover() -> None:
            nonlocal handed_over
            handed_over = True
            self.seen.add(call.execution_id)

        registry = ProviderRegistry(default="process", instances={"process": self.provider})
        engine = Engine(providers=registry, languages=self.languages, policy=fixed, chain=())
        try:
            return await engine.execute(request, fixed, call.execution_id, on_handover=on_handover)
        except Exception as e:
            raise self._refusal(e, handed_over) from e
        finally:
            if handed_over:
                await self._reset()

    @staticmethod
    def _refusal(e: Exception, handed_over: bool) -> Refused:
        if handed_over:
            return Refused("internal", f"failed after the program was handed over: {e}", True)
        if isinstance(e, RequestError):
            return Refused("request", f"refused the request: {e}", False)
        if isinstance(e, CapacityError):
            return Refused("capacity", f"is at capacity: {e}", False, e.retry_after_s)
        if isinstance(e, ExecboxError):
            return Refused("unavailable", f"could not start the program: {e}", False)
        return Refused("internal", f"failed before the program was handed over: {type(e).__name__}: {e}", False)

    async def _reset(self) -> None:
        """Reset the environment (when this handler resets it); a failed reset makes it refuse from now on."""
        if self.reset is None:
            return
        problems = await asyncio.to_thread(self.reset)
        if problems:
            self.unusable = f"the environment reset after a run failed ({problems[0]}): this environment is not reused"

    def _answer(self, result: ExecutionResult) -> dict[str, Any]:
        """The answer to send, its output trimmed when it would not fit the service's transport."""
        doc: dict[str, Any] = HandlerAnswer(result=result).model_dump(mode="json", exclude_none=True)
        limit = self.config.max_answer_bytes
        trimmed = False
        while len(json.dumps(doc).encode()) > limit:
            steps = [s for s in (doc["result"], doc["result"].get("compile")) if s]
            longest = max(((s, k) for s in steps for k in ("stdout", "stderr")), key=lambda sk: len(sk[0][sk[1]]))
            step, key = longest
            if not step[key]:
                break
            step[key] = step[key][: len(step[key]) // 2]
            step[f"{key}_truncated"] = trimmed = True
        notes = [f"output trimmed to fit the service's answer size ({limit} bytes)"] if trimmed else []
        if len(json.dumps(doc).encode()) > limit and "return_value" in doc["result"]:
            # main()'s value (up to 16 MiB) does not fit either: an answer the service refuses is no answer
            size = len(json.dumps(doc["result"].pop("return_value")).encode())
            doc["result"]["status"] = "runtime_error"
            notes.append(f"main()'s return value ({size} bytes) does not fit the service's answer size")
        if notes:
            doc["result"]["message"] = "; ".join([m for m in [doc["result"].get("message")] if m] + notes)
        return doc


_handler: Handler | None = None
_handler_lock = threading.Lock()


def handler() -> Handler:
    """This process's handler, made on first use (its environment read then)."""
    global _handler
    with _handler_lock:
        if _handler is None:
            _handler = Handler()
        return _handler


def handle(call: bytes | str | Mapping[str, Any], remaining_s: float | None = None) -> dict[str, Any]:
    """The answer to one call, from synchronous code (Lambda's runtime)."""
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return error_answer("internal", "handle() was called from a running event loop: await Handler.run()",
                            False)
    try:
        h = handler()
    except Exception as e:  # its setup failed (a language registry it cannot read): nothing ran
        log.exception("handler setup failed")
        return error_answer("unavailable", f"could not be set up: {type(e).__name__}: {e}", False)
    return asyncio.run(h.run(call, remaining_s))
