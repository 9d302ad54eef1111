"""Where a request runs: the pinned provider, or the default and then the fallback chain, each one only if
it can honour the request and its circuit is closed; a circuit breaker per instance; a jittered retry.

The one rule that makes fallback safe: **the next provider is tried only when the previous one failed before
the user's code was handed to it** (it could not be created, started, reached; it refused, was at capacity,
or its circuit was open). Once the code is handed over, a failure is ``OutcomeUnknown`` and is never retried
here; the program's own outcome (a timeout, a memory limit, an exit code) is a result, never a failure.
``Router.first`` is that loop, used for executions and for sandboxes alike.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from execbox.errors import (
    AuthenticationError,
    CapacityError,
    CircuitOpen,
    ExecboxError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
)
from execbox.models import ProviderAttempt
from execbox.providers.base import Provider
from execbox.providers.registry import ProviderRegistry

T = TypeVar("T")


class RoutingSettings(BaseModel):
    """The chain's thresholds (server settings ``breaker_*`` and ``retry_*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    breaker_threshold: int = Field(5, ge=1, le=1000)
    """Provider faults in a row that open its circuit."""
    breaker_cooldown_s: float = Field(30.0, gt=0, le=3600)
    """Seconds an open circuit waits before letting one probe through (half-open)."""
    retries: int = Field(1, ge=0, le=10)
    """Times a provider is tried again, before the code is handed over, when it was unreachable or busy."""
    retry_backoff_s: float = Field(0.1, ge=0, le=60)
    """The first retry's wait; each next one doubles it; each is jittered between half and all of it."""


def env_chain() -> list[str]:
    """The library's fallback chain: EXECBOX_FALLBACK_CHAIN, comma-separated (none by default)."""
    return [n.strip() for n in os.environ.get("EXECBOX_FALLBACK_CHAIN", "").split(",") if n.strip()]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """One provider instance's circuit: ``threshold`` faults in a row open it; after ``cooldown_s`` one probe
    goes through (half-open): its success closes it, its fault opens it again. Only provider faults count:
    never a program's failure, a bad request, or a provider at capacity."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self.clock = threshold, cooldown_s, clock
        self.faults = 0  # in a row
        self.opened_at: float | None = None
        self.probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.probing or self.clock() - self.opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def admit(self) -> bool:
        """May a request go to the provider now? In half-open, only one at a time (the probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.faults, self.opened_at, self.probing = 0, None, False

    def failed(self, error: str, admitted_at: float | None = None) -> None:
        """A provider fault, of an attempt admitted at ``admitted_at``: one admitted before the circuit last
        opened tells nothing new (its provider was already known to be down), and must not reopen it while
        the probe runs."""
        if admitted_at is not None and self.opened_at is not None and admitted_at < self.opened_at:
            return
        self.faults += 1
        self.last_error = error
        if self.probing or self.faults >= self.threshold:
            self.opened_at, self.probing = self.clock(), False

    def released(self) -> None:
        """The probe ended without telling (it was not a provider fault, nor a success): let another probe."""
        self.probing = False

    def reset(self) -> None:
        self.succeeded()
        self.last_error = None

    def retry_in_s(self) -> float | None:
        if self.opened_at is None:
            return None
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))


def is_fault(e: BaseException) -> bool:
    """Does ``e`` count against a provider's circuit? Its own failures do (unreachable, a crash, refused
    credentials); a busy provider or a request it cannot take does not."""
    if isinstance(e, CapacityError):
        return False
    if isinstance(e, AuthenticationError):
        return True
    return not isinstance(e, RequestError)


def is_transient(e: BaseException) -> bool:
    """Worth trying the same provider again shortly (before dispatch)."""
    return isinstance(e, CapacityError | ProviderUnavailable) and not isinstance(e, CircuitOpen)


class NotHandedOver(Exception):
    """Internal: an attempt failed before the code was handed over (``cause`` is the error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Router:
    """Orders the providers a request may run on and runs the fallback loop over them."""

    def __init__(self, providers: ProviderRegistry, chain: Sequence[str] = (),
                 settings: RoutingSettings | None = None) -> None:
        self.providers = providers
        self.chain: list[str] = list(chain)
        self.settings = settings or RoutingSettings()
        self._breakers: dict[str, Breaker] = {}

    def breaker(self, name: str) -> Breaker:
        if name not in self._breakers:
            s = self.settings
            self._breakers[name] = Breaker(s.breaker_threshold, s.breaker_cooldown_s)
        return self._breakers[name]

    def breakers(self) -> dict[str, Breaker]:
        return dict(self._breakers)

    def configure(self, chain: Sequence[str] | None = None, settings: RoutingSettings | None = None) -> None:
        if chain is not None:
            self.chain = list(chain)
        if settings is not None:
            self.settings = settings
            for b in self._breakers.values():
                b.threshold, b.cooldown_s = settings.breaker_threshold, settings.breaker_cooldown_s

    def order(self, provider: str | None, fallback: Sequence[str] | None) -> list[str]:
        """The providers to try, in order: the pinned one and its own ``fallback`` (none unless given), or
        the default and then the chain (or ``fallback`` in its place). Unknown names are a RequestError."""
        if provider is not None:
            names = [provider, *(fallback or ())]
        else:
            names = [self.providers.default, *(self.chain if fallback is None else fallback)]
        known = set(self.providers.names())
        if unknown := [n for n in names if n not in known]:
            raise RequestError(f"unknown provider {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return list(dict.fromkeys(names))  # each once, first place kept

    async def first(self, names: Sequence[str], unfit: Callable[[str], str | None],
                    attempt: Callable[[Provider], Awaitable[T]]) -> tuple[T, str, list[ProviderAttempt]]:
        """Run ``attempt`` on the first provider of ``names`` that can take it: (its value, the provider's
        name, the attempts on the way, this one last). ``unfit(name)`` says why a provider cannot honour the
        request (then it is passed over; when it is the only one, the request is refused). ``attempt``
        raises ``NotHandedOver`` for a failure before the code was handed over (the next provider is
        tried); any other error ends the loop (raised as it is, ``OutcomeUnknown`` included)."""
        attempts: list[ProviderAttempt] = []
        errors: list[BaseException] = []
        for name in names:
            if why := unfit(name):
                if len(names) == 1:
                    raise RequestError(f"provider {name!r} cannot run this request: {why}")
                attempts.append(ProviderAttempt(provider=name, phase="route", error=f"passed over: {why}"))
                continue
            breaker = self.breaker(name)
            for retry in range(self.settings.retries + 1):
                if not breaker.admit():
                    wait = breaker.retry_in_s() or 0
                    error: BaseException = CircuitOpen(
                        f"provider {name!r}: circuit open after {breaker.faults} faults in a row (last: "
                        f"{breaker.last_error}); next probe in {wait:.0f} s")
                    attempts.append(ProviderAttempt(provider=name, phase="circuit", error=str(error)))
                    errors.append(error)
                    break
                admitted_at = breaker.clock()
                try:
                    value = await attempt(await self._get(name))
                except NotHandedOver as e:
                    error = e.cause
                    self._count(breaker, error, admitted_at)
                    attempts.append(ProviderAttempt(provider=name, phase="start", error=str(error)))
                    errors.append(error)
                    if not is_transient(error) or retry == self.settings.retries:
                        break
                    await asyncio.sleep(self.settings.retry_backoff_s * 2 ** retry * random.uniform(0.5, 1))
                    continue
                except BaseException as e:
                    self._count(breaker, e, admitted_at)
                    if isinstance(e, ExecboxError):
                        e.provider_attempts = [*attempts, ProviderAttempt(  # type: ignore[attr-defined]
                            provider=name, phase="run", error=str(e))]
                    raise
                breaker.succeeded()
                attempts.append(ProviderAttempt(provider=name, phase="run"))
                return value, name, attempts
        raise _exhausted(attempts, errors)

    async def _get(self, name: str) -> Provider:
        try:
            return self.providers.get(name)
        except ExecboxError as e:  # it could not be created: nothing was handed over
            raise NotHandedOver(e) from e

    def started(self, name: str) -> None:
        """``name`` started an instance: it is up (a half-open circuit closes now, not after the whole run)."""
        self.breaker(name).succeeded()

    @staticmethod
    def _count(breaker: Breaker, e: BaseException, admitted_at: float) -> None:
        if isinstance(e, Exception) and is_fault(e):  # OutcomeUnknown included: the provider broke mid-run
            breaker.failed(str(e), admitted_at)
        else:  # a cancel, a busy provider, a request it cannot take: the probe tells nothing
            breaker.released()


def _exhausted(attempts: list[ProviderAttempt], errors: list[BaseException]) -> BaseException:
    """The error when no provider could take the request: the only one's own error, or ProviderUnavailable
    (CapacityError when every provider was busy) listing what happened on each."""
    tried = {a.provider for a in attempts if a.phase != "route"}
    if len(tried) == 1 and errors:
        error = errors[-1]
    else:
        summary = "; ".join(f"{a.provider} ({a.phase}): {a.error}" for a in attempts)
        if errors and all(isinstance(e, CapacityError) for e in errors):
            error = CapacityError(f"every provider is busy: {summary}",
                                  min((getattr(e, "retry_after_s", None) or 5) for e in errors))
        elif not errors:
            error = RequestError(f"no provider can run this request: {summary}")
        else:
            error = ProviderUnavailable(f"no provider could run it (the code was not run): {summary}")
    error.provider_attempts = attempts  # type: ignore[attr-defined]
    return error


def handed_over_error(provider: str, e: BaseException) -> OutcomeUnknown:
    """The error for a provider that failed after the code was handed to it."""
    return OutcomeUnknown(f"provider {provider!r} failed after the code was handed to it ({e}); the code may "
                          "have run, so it is not run again")

