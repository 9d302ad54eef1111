"""A generic pool of pre-started items: things made before they are asked for, each taken once, and torn down
after they are used (the docker provider's reusable containers are providers/docker/pool.py's ``KeyedPool``).

    pool = PrestartPool(2, make=start_sandbox, destroy=stop_sandbox)
    item = pool.take()          # an idle item, or None (the caller then makes one the slow way)
    ...
    pool.defer(lambda: stop_sandbox(item))  # teardown after the result is returned
    pool.close()                # waits for every teardown; destroys idle items

Nothing is made until the first ``take()`` (or ``fill()``): a process that never asks pays nothing.
One worker thread does all the making and tearing down, so it is independent of any event loop (the sync
facade runs one ``asyncio.run`` per call, pytest one loop per test) and never competes with a request for
the event loop. ``make`` and ``destroy`` must be thread-safe with respect to their callers. ``make`` may
return None (nothing to add now, e.g. resources exhausted); a failing ``make`` backs off before it is
tried again, so a broken host does not spin. Items are used once: ``take`` hands an item out for good.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

BACKOFF_S = (0.1, 0.5, 2.0, 10.0)


class PrestartPool(Generic[T]):
    def __init__(self, size: int, make: Callable[[], T | None], destroy: Callable[[T], None],
                 name: str = "execbox-pool") -> None:
        self.size = size
        self._make, self._destroy = make, destroy
        self._idle: collections.deque[T] = collections.deque()
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._making = False
        self._busy = False  # the worker is running a job
        self._paused = True  # nothing is made before the first take() or fill(); drain() pauses again
        self._closed = False
        self._failures = 0
        self._retry_at = 0.0
        self.taken = 0  # items handed out so far
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    def take(self) -> T | None:
        """An idle item (handed out for good), or None. Starts refilling either way."""
        with self._cond:
            if self._closed:
                return None
            self._paused = False
            item = self._idle.popleft() if self._idle else None
            self.taken += item is not None
            self._cond.notify_all()
            return item

    def defer(self, job: Callable[[], None]) -> None:
        """Run ``job`` (a teardown) on the worker; at once, here, when the pool is closed."""
        with self._cond:
            if not self._closed:
                self._jobs.append(job)
                self._cond.notify_all()
                return
        job()

    def fill(self, timeout: float | None = None) -> bool:
        """Resume refilling and wait (up to ``timeout`` seconds) until the pool is full and no job is
        pending. True when it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._paused = False
            self._cond.notify_all()
            while not self._closed and (len(self._idle) < self.size or self._jobs or self._making or self._busy):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 1.0)
            return not self._closed

    def drain(self, timeout: float | None = None) -> None:
        """Stop refilling (until the next take() or fill()), destroy the idle items and wait for every
        pending teardown."""
        with self._cond:
            self._paused = True
            idle, self._idle = list(self._idle), collections.deque()
            for item in idle:
                self._jobs.append(lambda item=item: self._destroy(item))  # type: ignore[misc]
            self._cond.notify_all()
            self._wait_quiet(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop for good: destroy idle items, finish pending teardowns, stop the worker. Idempotent."""
        self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:  # anything left (a timeout): done here
            jobs, self._jobs = list(self._jobs), collections.deque()
            idle, self._idle = list(self._idle), collections.deque()
        for job in jobs:
            self._safely(job)
        for item in idle:
            self._safely(lambda item=item: self._destroy(item))  # type: ignore[misc]

    @property
    def idle(self) -> int:
        return len(self._idle)

    def idle_items(self) -> list[T]:
        """A snapshot of the idle items (for inspection: they stay in the pool)."""
        with self._cond:
            return list(self._idle)

    def _wait_quiet(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._jobs or self._making or self._busy:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self._cond.wait(left if left is not None else 1.0)

    # ------------------------------------------------------------------ worker
    @staticmethod
    def _safely(job: Callable[[], None]) -> None:
        try:
            job()
        except Exception:  # a teardown failing must not stop the others
            log.exception("warm pool job failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._jobs:
                        job: Callable[[], None] | None = self._jobs.popleft()
                        self._busy = True
                        break
                    if self._closed:
                        return
                    want = not self._paused and len(self._idle) < self.size
                    if want and time.monotonic() >= self._retry_at:
                        job = None
                        self._making = True
                        break
                    wait = max(self._retry_at - time.monotonic(), 0.001) if want else None
                    self._cond.wait(wait)
            if job is not None:
                self._safely(job)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                continue
            item: T | None = None
            try:
                item = self._make()
                self._failures = 0
            except Exception:
                if not self._failures:  # once per streak of failures: it is retried with a backoff
                    log.exception("warm pool: cannot make an item (retrying with a backoff)")
                self._failures += 1
            with self._cond:
                self._making = False
                if item is None:
                    step = min(max(self._failures - 1, 0), len(BACKOFF_S) - 1)
                    self._retry_at = time.monotonic() + BACKOFF_S[step]
                elif self._closed or self._paused:
                    self._jobs.append(lambda item=item: self._destroy(item))  # type: ignore[misc]
                else:
                    self._idle.append(item)
                self._cond.notify_all()
