"""A warm pool of reusable sandboxes (containers), one pool per key (image, disk size, network).

Each item goes through these states::

    CREATING -> WARM -> BUSY -> RESETTING -> WARM
                  |               |
                  +-> TERMINATING <+   (TTL reached, idle too long, unhealthy, reset failed, reuse=False)

A background thread (the replenisher) keeps each active pool at ``size`` items (busy ones included; a burst
beyond it starts items cold, up to ``max_items``, and the extras go once they are idle again),
expires items past their TTL, retires pools unused for ``max_idle_s``, and health-checks WARM items every
``health_interval_s``; the slow work (create, reset, destroy) runs on a small thread pool, so the pool is
independent of any event loop (the sync facade runs one ``asyncio.run`` per call).

Why not ``execbox.pool.PrestartPool``: that pool hands each item out once; this one is keyed, takes items back,
resets them and tracks their state, TTL and health.

The pool knows nothing of Docker: ``create``, ``reset``, ``healthy`` and ``destroy`` are given to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from execbox.errors import SandboxError
from execbox.providers.base import to_thread_to_end

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
BACKOFF_S = (0.2, 1.0, 5.0, 15.0)


class State(enum.StrEnum):
    CREATING = "creating"
    WARM = "warm"
    BUSY = "busy"
    RESETTING = "resetting"
    TERMINATING = "terminating"


@dataclass(frozen=True)
class PoolSettings:
    size: int = 3  # items kept per active pool (busy ones included)
    max_items: int = 16  # per pool, busy ones included: beyond it, executions wait
    ttl_s: float = 3600.0  # an item older than this is replaced (after its current use)
    max_idle_s: float = 600.0  # a pool unused this long lets its items go (and is refilled on next use)
    health_interval_s: float = 30.0
    wait_s: float = 30.0  # how long an execution waits for an item when the pool is at max_items
    reuse: bool = True  # False: every item is destroyed after one use (the pool only pre-creates)
    workers: int = 4  # threads doing create / reset / destroy


@dataclass(eq=False)
class Item(Generic[K]):
    key: K
    handle: Any = None  # what ``create`` returned (a container)
    state: State = State.CREATING
    created_at: float = field(default_factory=time.monotonic)
    checked_at: float = field(default_factory=time.monotonic)
    uses: int = 0
    serial: int = 0


@dataclass
class _Pool(Generic[K]):
    key: K
    items: list[Item[K]] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    active: bool = True
    failures: int = 0
    retry_at: float = 0.0

    def count(self, *states: State) -> int:
        return sum(1 for i in self.items if i.state in states)


class KeyedPool(Generic[K]):
    def __init__(self, settings: PoolSettings, create: Callable[[K], Any], reset: Callable[[Any], None],
                 destroy: Callable[[Any], None], healthy: Callable[[Any], bool], name: str = "execbox-docker-pool"
                 ) -> None:
        self.settings = settings
        self._create, self._reset, self._destroy, self._healthy = create, reset, destroy, healthy
        self._pools: dict[K, _Pool[K]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._serial = itertools.count(1)
        self._stragglers: list[threading.Thread] = []
        self._jobs = concurrent.futures.ThreadPoolExecutor(max(settings.workers, 1), thread_name_prefix=name)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers
    def prewarm(self, key: K) -> None:
        """Start filling the pool of ``key`` now (without waiting)."""
        with self._cond:
            self._pool(key).last_used = time.monotonic()
            self._cond.notify_all()

    async def acquire(self, key: K) -> Item[K]:
        """A WARM item made BUSY; else waits for one being created or reset; else creates one cold (up to
        ``max_items``); else waits up to ``wait_s``."""
        deadline = time.monotonic() + self.settings.wait_s
        cold: Item[K] | None = None
        while True:
            with self._cond:
                if self._closed:
                    raise SandboxError("the docker provider is closed")
                pool = self._pool(key)
                pool.last_used = time.monotonic()
                warm = [i for i in pool.items if i.state is State.WARM]
                if warm:
                    item = warm[0]
                    item.state = State.BUSY
                    item.uses += 1
                    self._cond.notify_all()
                    return item
                coming = pool.count(State.CREATING, State.RESETTING)
                if not coming and len(pool.items) < self.settings.max_items:
                    cold = self._new_item(pool)
                    self._cond.notify_all()
                    break
            if time.monotonic() > deadline:
                raise SandboxError(f"no sandbox became free within {self.settings.wait_s}s "
                                   f"({self.settings.max_items} per pool are busy)")
            await asyncio.sleep(0.005)
        try:
            # (a cancel meanwhile: the container is made, then destroyed; never left to nobody)
            cold.handle = await to_thread_to_end(self._create, key, undo=self._destroy)
        except BaseException:
            with self._cond:
                self._remove(cold)
            raise
        with self._cond:
            if cold.state is State.TERMINATING or self._closed:  # closed meanwhile
                cold.state = State.CREATING
                self._terminate(cold)
                raise SandboxError("the docker provider is closed")
            cold.state = State.BUSY
            cold.uses += 1
            self._cond.notify_all()
        return cold

    def release(self, item: Item[K], reusable: bool = True) -> None:
        """Give a BUSY item back: reset (then WARM) or destroyed. Never blocks."""
        with self._cond:
            if item.state is not State.BUSY:
                return
            expired = time.monotonic() - item.created_at >= self.settings.ttl_s
            if self._closed or not reusable or not self.settings.reuse or expired:
                self._terminate(item)
            else:
                item.state = State.RESETTING
                self._submit(self._do_reset, item)
            self._cond.notify_all()

    def discard(self, item: Item[K]) -> None:
        """An item found broken while BUSY: destroy it (the replenisher makes another)."""
        with self._cond:
            if item.state is not State.TERMINATING:
                self._terminate(item)
            self._cond.notify_all()

    def states(self) -> dict[K, dict[str, int]]:
        with self._cond:
            return {k: {s.value: p.count(s) for s in State} for k, p in self._pools.items()}

    def count(self, *states: State) -> int:
        with self._cond:
            return sum(p.count(*(states or tuple(State))) for p in self._pools.values())

    def items(self) -> list[Item[K]]:
        with self._cond:
            return [i for p in self._pools.values() for i in p.items]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block (a test or a CLI helper) until ``predicate()`` holds, checked on every state change."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
            return True

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Destroy every item (idle and busy) and stop. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for pool in self._pools.values():
                for item in pool.items:
                    if item.state is not State.TERMINATING:
                        self._terminate(item)
            self._cond.notify_all()
        self._thread.join(timeout)
        self._jobs.shutdown(wait=True, cancel_futures=False)
        for t in list(self._stragglers):
            t.join(timeout)

    # ------------------------------------------------------------------ internals (hold the lock)
    def _pool(self, key: K) -> _Pool[K]:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key)
        pool.active = True
        return pool

    def _new_item(self, pool: _Pool[K]) -> Item[K]:
        item: Item[K] = Item(pool.key, serial=next(self._serial))
        pool.items.append(item)
        return item

    def _remove(self, item: Item[K]) -> None:
        pool = self._pools.get(item.key)
        if pool is not None and item in pool.items:
            pool.items.remove(item)
        self._cond.notify_all()

    def _terminate(self, item: Item[K]) -> None:
        was_creating = item.state is State.CREATING and item.handle is None
        item.state = State.TERMINATING
        if was_creating:  # its creator sees TERMINATING and destroys what it made
            return
        self._submit(self._do_destroy, item)

    def _submit(self, fn: Callable[[Item[K]], None], item: Item[K]) -> None:
        try:
            self._jobs.submit(fn, item)
        except RuntimeError:  # the executor is shut down (close raced us, or interpreter exit): a thread of its own
            t = threading.Thread(target=fn, args=(item,), daemon=True)
            self._stragglers.append(t)
            t.start()

    # ------------------------------------------------------------------ jobs (threads)
    def _do_create(self, item: Item[K]) -> None:
        try:
            handle = self._create(item.key)
        except Exception as e:
            log.warning("docker pool: cannot create a sandbox for %s: %s", item.key, e)
            with self._cond:
                pool = self._pools.get(item.key)
                if pool is not None:
                    pool.failures += 1
                    pool.retry_at = time.monotonic() + BACKOFF_S[min(pool.failures, len(BACKOFF_S)) - 1]
                self._remove(item)
            return
        with self._cond:
            item.handle = handle
            pool = self._pools.get(item.key)
            if pool is not None:
                pool.failures = 0
            if item.state is State.TERMINATING or self._closed:
                item.state = State.CREATING  # so that _terminate schedules the destroy
                self._terminate(item)
            else:
                item.state = State.WARM
                item.checked_at = time.monotonic()
            self._cond.notify_all()

    def _do_reset(self, item: Item[K]) -> None:
        try:
            self._reset(item.handle)
            ok = True
        except Exception as e:
            log.warning("docker pool: reset failed, the sandbox is destroyed: %s", e)
            ok = False
        with self._cond:
            if item.state is State.RESETTING and ok and not self._closed:
                item.state = State.WARM
                item.checked_at = time.monotonic()
            elif item.state is not State.TERMINATING:
                self._terminate(item)
            self._cond.notify_all()

    def _do_destroy(self, item: Item[K]) -> None:
        try:
            if item.handle is not None:
                self._destroy(item.handle)
        except Exception as e:
            log.warning("docker pool: cannot destroy a sandbox: %s", e)
        finally:
            with self._cond:
                self._remove(item)

    def _do_check(self, item: Item[K]) -> None:
        try:
            ok = self._healthy(item.handle)
        except Exception:
            ok = False
        with self._cond:
            if item.state is State.RESETTING:  # borrowed for the check: back to WARM or gone
                if ok and not self._closed:
                    item.state = State.WARM
                    item.checked_at = time.monotonic()
                else:
                    log.warning("docker pool: an idle sandbox is unhealthy; replacing it")
                    self._terminate(item)
            self._cond.notify_all()

    # ------------------------------------------------------------------ the replenisher
    def _run(self) -> None:
        s = self.settings
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                for pool in list(self._pools.values()):
                    if pool.active and now - pool.last_used >= s.max_idle_s:
                        pool.active = False
                    for item in list(pool.items):
                        if item.state is not State.WARM:
                            continue
                        if not pool.active or now - item.created_at >= s.ttl_s:
                            self._terminate(item)
                        elif now - item.checked_at >= s.health_interval_s:
                            item.state = State.RESETTING  # borrowed: not handed out while checked
                            self._submit(self._do_check, item)
                    if not pool.active:
                        if not pool.items:
                            del self._pools[pool.key]
                        continue
                    alive = len(pool.items) - pool.count(State.TERMINATING)
                    if alive > s.size:  # a burst is over: back to ``size`` containers, the oldest extras go
                        warm = sorted((i for i in pool.items if i.state is State.WARM), key=lambda i: i.created_at)
                        for item in warm[:alive - s.size]:
                            self._terminate(item)
                    room = s.max_items - len(pool.items)
                    if now >= pool.retry_at:
                        for _ in range(min(s.size - alive, room, 1 if pool.failures else s.size)):
                            self._submit(self._do_create, self._new_item(pool))
                self._cond.wait(0.5)
