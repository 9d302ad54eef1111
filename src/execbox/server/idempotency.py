"""Idempotent executions: POST /api/v1/execute with an ``Idempotency-Key`` header runs at most once per key
(per API key). The first request runs; a repeat while it runs waits for the same result; a repeat after it
finished gets the stored result (the same execution_id). A key reused with another body is a 422.

A client that lost an answer (a front execbox server whose remote provider timed out) may so send the same
request again without running it twice. What is kept: the result, or a failure after the code may have
run (a repeat gets the same error); a refusal before anything ran (a bad request, a busy server, no provider)
is forgotten, so a repeat may run. Kept in memory, at most ``max_keys`` keys and ``max_bytes`` of output,
each for ``ttl_s`` after it finished, oldest finished first out; not across a restart (a client whose
server restarted mid-run has an unknown outcome anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from execbox.errors import AtCapacity, CapacityError, ProviderUnavailable, RequestError
from execbox.models import ExecutionResult

MAX_KEYS = 10_000
MAX_BYTES = 256 * 1024 * 1024
KEY_HELP = ("1-128 characters: the request runs at most once per key (per API key); a repeat gets the same "
            "answer (waiting for it if it still runs); the same key with another body is a 422.")
_NOT_RUN = (RequestError, CapacityError, ProviderUnavailable)  # refused before anything ran: not kept

Key = tuple[str, str]  # (API key's name, Idempotency-Key)


def fingerprint(body: Any) -> str:
    """The digest of a request body's data (keys sorted: the same JSON in another order is the same body)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _size(r: ExecutionResult) -> int:
    """About what a kept result holds, bytes."""
    steps = [r, *([r.compile] if r.compile is not None else [])]
    value = 0 if r.return_value is None else len(json.dumps(r.return_value, default=str))
    return 1024 + value + sum(len(s.stdout) + len(s.stderr) for s in steps)


class _Entry:
    def __init__(self, digest: str, task: asyncio.Task[ExecutionResult]) -> None:
        self.digest, self.task = digest, task
        self.done_at = 0.0
        self.size = 0


class Idempotency:
    """The executions run under an Idempotency-Key: running ones, and finished ones for ``ttl_s``."""

    def __init__(self, ttl_s: float, max_keys: int = MAX_KEYS, max_bytes: int = MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_keys, self.max_bytes, self.clock = ttl_s, max_keys, max_bytes, clock
        self._running: dict[Key, _Entry] = {}
        self._done: OrderedDict[Key, _Entry] = OrderedDict()  # oldest finished first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._running) + len(self._done)

    async def run(self, owner: str, key: str, digest: str,
                  execute: Callable[[], Awaitable[ExecutionResult]]) -> ExecutionResult:
        """``execute()``'s result, run once for (``owner``, ``key``); ``digest`` is the body's fingerprint."""
        self._drop(lambda e: self.clock() - e.done_at > self.ttl_s)
        k = (owner, key)
        entry = self._running.get(k) or self._done.get(k)
        if entry is not None and entry.digest != digest:
            raise HTTPException(422, f"Idempotency-Key {key!r} was used with another request body: a repeat must "
                                     "send the same body; use a new key for a new request")
        if entry is None:
            self._drop(lambda e: len(self) >= self.max_keys)
            if len(self) >= self.max_keys:
                raise AtCapacity(f"{len(self)} executions with an Idempotency-Key are running already", 5)
            # a task of its own: a caller that goes away (its connection closed) does not stop the run that
            # its repeat waits for
            entry = _Entry(digest, asyncio.ensure_future(execute()))
            self._running[k] = entry
            entry.task.add_done_callback(lambda task: self._finished(k, entry))
        return await asyncio.shield(entry.task)

    def _finished(self, k: Key, entry: _Entry) -> None:
        del self._running[k]
        if entry.task.cancelled() or isinstance(entry.task.exception(), _NOT_RUN):
            return  # nothing ran: a repeat may run it
        entry.done_at = self.clock()
        with contextlib.suppress(Exception):
            entry.size = _size(entry.task.result())
        self._done[k] = entry
        self._bytes += entry.size
        self._drop(lambda e: self._bytes > self.max_bytes)

    def _drop(self, due: Callable[[_Entry], bool]) -> None:
        """Forget the oldest finished entries while ``due`` says so of the oldest."""
        while self._done:
            k, oldest = next(iter(self._done.items()))
            if not due(oldest):
                return
            del self._done[k]
            self._bytes -= oldest.size
