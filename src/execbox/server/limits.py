"""Admission control: a token bucket per API key (429) and a pool of execution slots that a request waits for
at most ``queue_timeout_s`` (503). Both answer with how long to wait (Retry-After) instead of failing slowly.

A burst is admitted by time, not by a count: a request waits in line as long as a slot may still free up in
time, so a burst the server clears in seconds never sees an error. The count kept (``max_queue``) only bounds
the memory held by waiting requests (each holds its connection and parsed body)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from execbox.errors import AtCapacity, RateLimited, RequestError


class RateLimiter:
    """Token buckets, one per key: ``per_min`` requests a minute, bursts of up to a tenth of that (at least 1)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def take(self, key: str, per_min: float | None, cost: float = 1) -> None:
        if per_min is None:
            return
        rate, burst = per_min / 60, max(1.0, per_min / 10)
        if cost > burst:  # would wait forever: say so instead of a 429 that never clears
            raise RequestError(f"{cost:g} requests at once exceed this key's burst of {burst:g} (a tenth of its "
                               f"rate limit of {per_min:g} per minute): send fewer at once")
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            raise RateLimited(f"rate limit of {per_min:g} requests per minute exceeded", (cost - tokens) / rate)
        self._buckets[key] = (tokens - cost, now)


class Capacity:
    """At most ``limit`` executions at once; the others wait in line (first come, first served), each at most
    ``wait_s``, at most ``max_waiting`` of them.

    A slot freed is handed to the first in line at once, so ``running`` and ``waiting`` are exact at every
    moment. (Counted around a semaphore they were not: under ``wait_for`` its acquire ran in a task of its
    own, a loop turn later, so a burst's requests were all admitted against "0 running".)"""

    def __init__(self, running: int, queued: int, wait_s: float) -> None:
        self.limit, self.max_waiting, self.wait_s = running, queued, wait_s
        self.running = 0
        self._line: deque[asyncio.Future[None]] = deque()
        self._hold_s = 1.0  # a moving mean of how long a slot is held, for Retry-After

    @property
    def waiting(self) -> int:
        return len(self._line)

    def _state(self) -> str:
        return f"{self.running} running, {self.waiting} waiting, {self.limit} at once"

    def admit(self, n: int = 1) -> None:
        """Refuse now (503) when ``n`` more requests would not all find a slot or a place in line."""
        if self.waiting + max(0, n - (self.limit - self.running)) > self.max_waiting:
            raise AtCapacity(f"the server is at capacity ({self._state()}; at most {self.max_waiting} may wait)",
                             self._retry_after_s())

    def _retry_after_s(self) -> float:
        # when the line now waiting has gone through the slots at the recent pace
        return 1 + self.waiting * self._hold_s / self.limit

    @contextlib.asynccontextmanager
    async def slot(self, *, counted: bool = True, timed: bool = True) -> AsyncIterator[None]:
        """A running slot. ``counted``: refused at once when the line is full (False when the caller admitted
        it already: a batch is admitted whole; async jobs: the store is their queue). ``timed``: given up after
        ``wait_s`` with a 503 (False: a batch's items and async jobs wait their turn)."""
        if counted:
            self.admit()
        await self._acquire(self.wait_s if timed else None)
        start = time.monotonic()
        try:
            yield
        finally:
            self._hold_s += (time.monotonic() - start - self._hold_s) / 16
            self._release()

    async def _acquire(self, wait_s: float | None) -> None:
        if self.running < self.limit and not self._line:
            self.running += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            async with asyncio.timeout(wait_s):
                await turn
        except BaseException as e:
            if turn.done() and not turn.cancelled():  # handed a slot as the wait ended: pass it on
                self._release()
            elif turn in self._line:  # (a slot freed meanwhile may have dropped it already)
                self._line.remove(turn)
            if isinstance(e, TimeoutError):
                raise AtCapacity(f"no execution slot became free within {self.wait_s:g}s ({self._state()})",
                                 self._retry_after_s()) from None
            raise

    def _release(self) -> None:
        while self._line:  # the slot goes to the first in line still waiting; ``running`` stays
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1
