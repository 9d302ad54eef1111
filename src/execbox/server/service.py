"""What the routes share: the engine, the store, admission control, async jobs, metrics and the log line of
every execution. Each API (native, Piston, Codapi) translates its body and calls ``Service.execute``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from execbox.engine import Emit, Engine
from execbox.errors import AtCapacity, CapacityError, ProviderUnavailable, RequestError, SandboxError
from execbox.languages import default_registry
from execbox.models import ExecutionRequest, ExecutionResult, Status
from execbox.providers.base import LiveInput
from execbox.routing import BreakerState
from execbox.sandbox import AsyncSandbox, SandboxManager
from execbox.server.auth import KeyRing, Principal
from execbox.server.idempotency import Idempotency
from execbox.server.limits import Capacity, RateLimiter
from execbox.server.metrics import Metrics
from execbox.server.provider_admin import ProviderAdmin
from execbox.server.settings import ServerSettings
from execbox.store import COMPLETED, QUEUED, SQLiteStore
from execbox.wire import CreateBody, ExecuteBody

log = logging.getLogger("execbox.server")
EXPIRE_EVERY_S = 60
CIRCUIT_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def internal_error(request: ExecutionRequest, provider: str, message: str) -> ExecutionResult:
    """The result of a run the sandbox could not carry out (the sandbox's fault, reported as data)."""
    return ExecutionResult(execution_id=uuid.uuid4().hex, language=request.language, provider=provider,
                           status=Status.INTERNAL_ERROR, message=message)


class Service:
    def __init__(self, settings: ServerSettings, dev_key: str | None = None) -> None:
        self.settings = settings
        self.store = SQLiteStore(settings.db_path)
        static = KeyRing.static_names(settings.env_keys)
        if dev_key:
            static[dev_key] = "dev:1"
        self.keys = KeyRing(self.store, static, settings.rate_limit_per_min)
        self.admin = ProviderAdmin(settings, self.store)  # providers and chain: the store's, seeded from settings
        self.providers, self.router = self.admin.registry, self.admin.router
        self.engine = Engine(providers=self.providers, languages=default_registry(), policy=settings.policy,
                             router=self.router)
        self.rates = RateLimiter()
        self.idempotency = Idempotency(settings.job_ttl_s)  # POST /api/v1/execute's Idempotency-Key
        self.capacity = Capacity(settings.max_concurrency, settings.max_queue, settings.queue_timeout_s)
        self.metrics = Metrics()
        self.metrics.queued.set_function(lambda: self.capacity.waiting)  # read when scraped: never stale
        self._jobs: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._sandboxes: SandboxManager | None = None

    # --- lifecycle
    async def start(self) -> None:
        # version probes run a compiler each: once, now, off the event loop, not in a request
        await asyncio.to_thread(lambda: [lang.version() for lang in self.engine.languages])
        for record in self.store.unfinished():  # jobs of a server that stopped: they run again, oldest first
            self._jobs.put_nowait(record.id)
        self.metrics.pending_jobs.set(self._jobs.qsize())
        self._tasks = [asyncio.create_task(self._job_worker()) for _ in range(self.settings.max_concurrency)]
        self._tasks.append(asyncio.create_task(self._expire_loop()))
        s = self.settings
        self._sandboxes = SandboxManager(self.engine, max_sandboxes=s.max_sandboxes,
                                         max_per_owner=s.max_sandboxes_per_key, default_ttl_s=s.sandbox_ttl_s,
                                         max_lifetime_s=s.sandbox_max_lifetime_s)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._sandboxes is not None:  # live sandboxes die with the server
            await self._sandboxes.aclose()
        await self.providers.aclose()
        self.store.close()

    # --- requests
    def admit(self, principal: Principal, cost: int = 1) -> None:
        self.rates.take(principal.name, principal.rate_limit_per_min, cost)

    def check(self, request: ExecutionRequest, principal: Principal | None = None) -> None:
        """RequestError for what would fail before running (unknown language, version, provider, files...),
        counted in sandbox_errors_total as bad_request."""
        try:
            self.known_providers(request.provider, request.fallback)
            self.engine.check(request, self.engine.policy.capped(principal.caps if principal else None))
        except RequestError:
            self.metrics.errors.labels(language=request.language, provider=request.provider or
                                       self.providers.default, status="bad_request").inc()
            raise

    def known_providers(self, pinned: str | None, fallback: Sequence[str] | None) -> None:
        """RequestError unless the provider a request pins (or the default) and its fallback all exist."""
        for name in [pinned or self.providers.default, *(fallback or ())]:
            if name not in self.provider_names():
                raise RequestError(f"unknown provider {name!r}; known: {', '.join(self.provider_names())}")

    def provider_names(self) -> list[str]:
        """The providers a request may name: the mock (which runs nothing) only when it is the default, in the
        chain or configured by name."""
        used = {self.providers.default, *self.router.chain, *self.admin.stored_names()}
        return [n for n in self.providers.names() if self.providers.kind_of(n).name != "mock" or n in used]

    async def execute(self, principal: Principal, request: ExecutionRequest, *, session_id: str | None = None,
                      bounded: bool = True, admitted: bool = False, execution_id: str | None = None,
                      live: tuple[LiveInput, Emit] | None = None, on_handover: Callable[[], object] | None = None,
                      ) -> ExecutionResult:
        """Run one request under the caller's caps, within the server's capacity; record and count it.
        With ``live`` (input, emit) it runs interactively (see ``Engine.execute``). ``bounded``: waits at most
        ``queue_timeout_s`` for a slot (async jobs pass False); ``admitted``: counted already (a batch's items,
        which then wait their turn)."""
        policy = self.engine.policy.capped(principal.caps)
        provider = request.provider or self.providers.default
        labels = {"language": request.language, "provider": provider}
        start = time.monotonic()
        try:
            alone = bounded and not admitted  # counted against the line and timed, or waits its turn
            async with self.capacity.slot(counted=alone, timed=alone):
                with self.metrics.in_progress(provider):
                    result = await self.engine.execute(request, policy, execution_id, live=live,
                                                       on_handover=on_handover)
        except RequestError as e:
            self._log_failure(principal, labels, "bad_request", e, start)
            raise
        except ProviderUnavailable as e:
            self._log_failure(principal, labels, "unavailable", e, start)
            raise
        except SandboxError as e:
            self._log_failure(principal, labels, "internal_error", e, start)
            raise
        elapsed = time.monotonic() - start
        labels["language"] = result.language
        self.metrics.executions.labels(status=result.status.value, **labels).inc()
        self.metrics.duration.labels(status=result.status.value, **labels).observe(elapsed)
        log.info("execution", extra={"fields": {
            "execution_id": result.execution_id, "key": principal.name, "language": result.language,
            "provider": result.provider, "status": result.status.value, "wall_time_s": result.wall_time_s,
            "cpu_time_s": result.cpu_time_s, "duration_ms": round(elapsed * 1000, 2), "session_id": session_id}})
        if session_id is not None:
            self.store.add_execution(result.execution_id, principal.name, session_id, COMPLETED,
                                     result=result.model_dump(mode="json"), ttl_s=self.settings.job_ttl_s)
        return result

    def refresh_gauges(self) -> None:
        """sandbox_active_containers of providers that keep sandboxes (the docker pool): what exists now; the
        circuit breakers' states."""
        for name, breaker in self.router.breakers().items():
            self.metrics.circuit.labels(name).set(CIRCUIT_GAUGE[breaker.state])
        for name, provider in self.providers.loaded().items():
            if (n := provider.active_sandboxes()) is not None:
                self.metrics.pooled.add(name)
                self.metrics.active.labels(name).set(n)

    def _log_failure(self, principal: Principal, labels: dict[str, str], status: str, e: Exception,
                     start: float) -> None:
        self.metrics.errors.labels(status=status, **labels).inc()
        level = logging.INFO if status == "bad_request" else logging.ERROR
        log.log(level, "execution failed", extra={"fields": {
            "key": principal.name, **labels, "status": status, "error": str(e),
            "duration_ms": round((time.monotonic() - start) * 1000, 2)}})

    # --- persistent sandboxes: one manager, each key an owner (another key's sandbox is a NotFoundError)
    @property
    def sandboxes(self) -> SandboxManager:
        if self._sandboxes is None:
            raise SandboxError("the service is not started")
        return self._sandboxes

    async def open_sandbox(self, principal: Principal, body: CreateBody, *, reuse: bool = False) -> AsyncSandbox:
        """A sandbox owned by ``principal`` made from ``body``, its limits capped by the key's policy as
        executions' are and its idle TTL by ``sandbox_max_ttl_s``. With ``reuse``, the key's live sandbox whose
        labels include ``body.labels`` if there is one (concurrent calls with the same labels create one:
        SandboxManager.get_or_create)."""
        self.known_providers(body.provider, body.fallback)
        ttl_s = None if body.ttl_s is None else min(body.ttl_s, self.settings.sandbox_max_ttl_s)
        options: dict[str, Any] = {
            "language": body.language, "env": body.env, "max_lifetime_s": body.max_lifetime_s, "ttl_s": ttl_s,
            "limits": self.engine.policy.capped(principal.caps).apply(body.limits), "provider": body.provider,
            "fallback": body.fallback,
            "owner": principal.name}
        if reuse:
            sb = await self.sandboxes.get_or_create(body.labels, **options)
        else:
            sb = await self.sandboxes.create(labels=body.labels, **options)
        log.info("sandbox get_or_create" if reuse else "sandbox created", extra={"fields": {
            "sandbox_id": sb.id, "key": principal.name, "language": sb.language, "labels": sb.labels}})
        return sb

    # --- async jobs: the store is the queue, so a restarted server runs what was queued
    def submit(self, principal: Principal, body: ExecuteBody) -> str:
        self.check(body.to_request(), principal)
        if self.store.count_unfinished() >= self.settings.max_pending_jobs:
            raise AtCapacity(f"{self.settings.max_pending_jobs} jobs are pending already", 5)
        if self.store.count_unfinished(principal.name) >= self.settings.max_pending_jobs_per_key:
            raise CapacityError(f"this key has {self.settings.max_pending_jobs_per_key} jobs pending already "
                                "(the most a key may have): wait for some to finish", 5)
        job_id = uuid.uuid4().hex
        self.store.add_execution(job_id, principal.name, body.session_id, QUEUED, request=json.dumps(
            {"principal": principal.name, "body": body.model_dump(mode="json", exclude_unset=True)}))
        self._jobs.put_nowait(job_id)
        self.metrics.pending_jobs.inc()
        return job_id

    async def _job_worker(self) -> None:
        while True:
            job_id = await self._jobs.get()
            try:
                await self._run_job(job_id)
            except Exception:  # a job must never take its worker down
                log.exception("job failed", extra={"fields": {"execution_id": job_id}})
            finally:
                self.metrics.pending_jobs.dec()

    async def _run_job(self, job_id: str) -> None:
        record = self.store.job(job_id)
        if record is None or record.state == COMPLETED or record.request is None:
            return
        saved: dict[str, Any] = json.loads(record.request or "{}")
        principal = self.keys.principal_named(saved["principal"])
        body = ExecuteBody.model_validate(saved["body"])
        attempts = self.store.mark_running(job_id)
        request = body.to_request()
        provider = request.provider or self.providers.default
        if record.handed_over:  # a server died after handing its code over: it may have run; never again
            self._finish_job(job_id, internal_error(
                request, provider, "outcome unknown: the server stopped after this job's code was handed to the "
                "provider; it may have run, so it is not run again"))
            log.error("job outcome unknown", extra={"fields": {"execution_id": job_id}})
            return
        if attempts > self.settings.max_job_attempts:  # it kills its server before its code is even sent
            self._finish_job(job_id, internal_error(
                request, provider, f"the server stopped while running this job {attempts - 1} times: it is not "
                "run again"))
            log.error("job abandoned", extra={"fields": {"execution_id": job_id, "attempts": attempts - 1}})
            return
        handed_over = False

        def hand_over() -> None:
            nonlocal handed_over
            handed_over = True
            self.store.mark_handed_over(job_id)

        try:
            result = await self.execute(principal, request, bounded=False, session_id=None, execution_id=job_id,
                                        on_handover=hand_over)
        except asyncio.CancelledError:
            if handed_over:  # the server is stopping mid-run: the run is cut short, and not run again
                self._finish_job(job_id, ExecutionResult(
                    execution_id=job_id, language=request.language, provider=provider, status=Status.KILLED,
                    message="the server stopped while this job ran: it was killed and is not run again"))
            else:  # not started: it runs after the restart, uncounted
                self.store.requeue(job_id)
            raise
        except Exception as e:  # reported as data (the client polls for a result); never a job stuck running
            result = internal_error(request, provider, str(e))
        self._finish_job(job_id, result)

    def _finish_job(self, job_id: str, result: ExecutionResult) -> None:
        result = result.model_copy(update={"execution_id": job_id})
        self.store.complete(job_id, result.model_dump(mode="json"), self.settings.job_ttl_s)

    async def _expire_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.store.expire()
            await asyncio.sleep(EXPIRE_EVERY_S)
