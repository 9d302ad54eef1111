"""Admission control: a token bucket per API key (429) and a bounded pool of execution slots with a bounded
wait (503). Both answer with how long to wait (Retry-After) instead of failing slowly."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator


class Refused(Exception):
    """Admission refused; ``retry_after_s`` says when to try again."""

    def __init__(self, status: int, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.retry_after_s = max(1, math.ceil(retry_after_s))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.status in (429, 503) else {}


class RateLimiter:
    """Token buckets, one per key: ``per_min`` requests a minute, bursts of up to a tenth of that (at least 1)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def take(self, key: str, per_min: float | None, cost: float = 1) -> None:
        if per_min is None:
            return
        rate, burst = per_min / 60, max(1.0, per_min / 10)
        if cost > burst:  # would wait forever: say so instead of a 429 that never clears
            raise Refused(400, f"{cost:g} requests at once exceed this key's burst of {burst:g} (a tenth of its "
                          f"rate limit of {per_min:g} per minute): send fewer at once", 0)
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            raise Refused(429, f"rate limit of {per_min:g} requests per minute exceeded", (cost - tokens) / rate)
        self._buckets[key] = (tokens - cost, now)


class Capacity:
    """At most ``running`` executions at once; up to ``queued`` more wait (each at most ``wait_s``)."""

    def __init__(self, running: int, queued: int, wait_s: float) -> None:
        self.limit, self.max_waiting, self.wait_s = running, queued, wait_s
        self._sem = asyncio.Semaphore(running)
        self.active = 0
        self.waiting = 0

    def admit(self, n: int = 1) -> None:
        """Refuse now (503) when ``n`` more requests would overflow the wait queue."""
        free = self.limit - self.active
        if self.waiting + n - max(free, 0) > self.max_waiting:
            raise Refused(503, f"the server is at capacity ({self.active} running, {self.waiting} waiting)",
                          1 + self.waiting / max(self.limit, 1))

    @contextlib.asynccontextmanager
    async def slot(self, bounded: bool = True, admitted: bool = False) -> AsyncIterator[None]:
        """A running slot. ``bounded``: admitted against the wait queue and given up after ``wait_s`` (503),
        unless ``admitted`` already (a batch is, whole: its items then wait their turn); async jobs pass False
        (the store is their queue)."""
        if not bounded:
            await self._sem.acquire()
        else:
            if not admitted:
                self.admit()
            self.waiting += 1
            try:
                await asyncio.wait_for(self._sem.acquire(), None if admitted else self.wait_s)
            except TimeoutError:
                raise Refused(503, f"no execution slot became free within {self.wait_s:g}s", 5) from None
            finally:
                self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._sem.release()
