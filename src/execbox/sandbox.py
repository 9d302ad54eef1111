"""Persistent sandboxes: many commands over time in one isolated environment, with files, labels and TTLs.

    async with await AsyncSandbox.create(language="python", labels={"project": "demo"}, ttl_s=600) as sb:
        r = await sb.exec("pip install --target ./lib six && ls")   # shell command -> ExecutionResult
        await sb.files.write("data.csv", b"...")
        async for event in sb.stream("python3 train.py"):          # ExecEvent: stdout/stderr, then exit
            ...
    sb = await AsyncSandbox.get_or_create(labels={"project": "demo"})

``Sandbox`` is the blocking facade (``execbox.blocking``); both follow ``execbox.protocol``, as the remote
client's do. ``sb.run(code, language=...)`` compiles and runs a program in it (``Engine.run_in``).

``SandboxManager`` is the registry behind them, provider-agnostic: live sandboxes by id, labels and owner
(another owner's is NotFoundError, as if it did not exist: the HTTP service passes each API key as owner),
count limits, the idle TTL, the hard maximum lifetime and a reaper; the library's is ``default_manager()``.

Limits: ``create(limits=...)`` are clamped by the engine's policy once; they are each exec's defaults and
the sandbox's caps (``memory_mb``/``pids`` cap everything alive in it at once, ``disk_mb`` its workdir).
An exec may tighten them (``exec(..., limits=Limits(wall_time_s=2))``), never widen them.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import codecs
import concurrent.futures
import contextlib
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar, Unpack

from execbox.api import program_request
from execbox.blocking import BlockingSandbox, Files
from execbox.engine import Engine, exec_spec, provider_errors, step_result, tightened
from execbox.errors import CapacityError, ExecutionFailed, NotFoundError, RequestError, SandboxError
from execbox.interpreter import CellResult, CellStatus, Kernel
from execbox.models import (
    ExecEvent,
    ExecutionRequest,
    ExecutionResult,
    FileInfo,
    Limits,
    check_cwd,
    check_env,
    check_file_name,
    check_labels,
)
from execbox.protocol import (
    AsyncFilesProtocol,
    AsyncSandboxesProtocol,
    AsyncSandboxProtocol,
    Command,
    ProgramOptions,
    argv_of,
    implements,
)
from execbox.providers.base import ExecSpec, Instance, OutputChunk, ProcessOutcome, Provider

T = TypeVar("T")

DEFAULT_TTL_S = 600.0
DEFAULT_MAX_LIFETIME_S = 24 * 3600.0
DEFAULT_MAX_SANDBOXES = 32
REAP_INTERVAL_S = 1.0
MAX_READ_BYTES = 1 << 30


def _path(path: str, allow_root: bool = False) -> str:
    if allow_root and path in ("", "."):
        return "."
    return check_file_name(path)


_labels = check_labels  # the one rule of labels (models.py), the HTTP API's too


class SandboxManager:
    """The registry of live sandboxes: ids, labels, owners, count limits, idle TTL and max lifetime."""

    def __init__(self, engine: Engine | None = None, *, max_sandboxes: int = DEFAULT_MAX_SANDBOXES,
                 max_per_owner: int | None = None, default_ttl_s: float = DEFAULT_TTL_S,
                 max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S, reap_interval_s: float = REAP_INTERVAL_S) -> None:
        self._engine = engine
        self.max_sandboxes, self.max_per_owner = max_sandboxes, max_per_owner
        self.default_ttl_s, self.max_lifetime_s, self.reap_interval_s = default_ttl_s, max_lifetime_s, reap_interval_s
        self._live: dict[str, AsyncSandbox] = {}
        self._reserved: dict[str | None, int] = {}  # creations under way, per owner
        self._creating: dict[tuple[str | None, frozenset[tuple[str, str]]], concurrent.futures.Future[None]] = {}
        self._lock = threading.Lock()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from execbox.api import default_engine

            self._engine = default_engine()
        return self._engine

    # ------------------------------------------------------------------ creation
    def _reserve(self, owner: str | None) -> None:
        with self._lock:
            total = len(self._live) + sum(self._reserved.values())
            if total >= self.max_sandboxes:
                raise CapacityError(f"{total} sandboxes are live; the maximum is {self.max_sandboxes}: destroy "
                                    "one first")
            if self.max_per_owner is not None and owner is not None:
                mine = sum(1 for s in self._live.values() if s.owner == owner) + self._reserved.get(owner, 0)
                if mine >= self.max_per_owner:
                    raise CapacityError(f"{mine} sandboxes of yours are live; the maximum per owner is "
                                        f"{self.max_per_owner}: destroy one first")
            self._reserved[owner] = self._reserved.get(owner, 0) + 1

    def _unreserve(self, owner: str | None) -> None:
        with self._lock:
            self._reserved[owner] -= 1
            if not self._reserved[owner]:
                del self._reserved[owner]

    async def create(self, language: str = "python", *, labels: Mapping[str, str] | None = None,
                     ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
                     provider: str | None = None, fallback: Sequence[str] | None = None,
                     env: Mapping[str, str] | None = None, owner: str | None = None) -> AsyncSandbox:
        """A new sandbox. Raises CapacityError at the count limits, RequestError for a bad request,
        SandboxError when the provider cannot start it (or cannot keep sandboxes at all)."""
        engine = self.engine
        lang = engine.languages.get(language)
        labels = _labels(labels)
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        lifetime = min(self.max_lifetime_s if max_lifetime_s is None else max_lifetime_s, self.max_lifetime_s)
        if ttl <= 0 or lifetime <= 0:
            raise RequestError("ttl_s and max_lifetime_s must be positive")
        applied = engine.policy.apply(limits)
        self._reserve(owner)
        try:
            spec = engine.instance_spec(applied, (lang.compile, lang.run), persistent=True)
            prov, instance = await engine.start_sandbox(
                spec, applied, limits.model_fields_set if limits is not None else (), provider=provider,
                fallback=fallback)
            sb = AsyncSandbox(_token=_TOKEN, manager=self, instance=instance, provider=prov, language=lang.name,
                              lang_env=dict(lang.env), env=dict(env or {}), labels=labels, limits=applied,
                              ttl_s=ttl, max_lifetime_s=lifetime, owner=owner)
            with self._lock:
                self._live[sb.id] = sb
        finally:
            self._unreserve(owner)
        self._ensure_reaper()
        return sb

    async def get_or_create(self, labels: Mapping[str, str], *, owner: str | None = None,
                            **create: Any) -> AsyncSandbox:
        """The live sandbox whose labels include ``labels`` (the most recently used), or a new one with
        them; concurrent calls with the same labels (and owner) create only one."""
        labels = _labels(labels)
        key = (owner, frozenset(labels.items()))
        while True:
            if (found := self.find(labels, owner=owner)) is not None:
                found._touch()
                return found
            with self._lock:
                pending = self._creating.get(key)
                if pending is None:
                    mine: concurrent.futures.Future[None] = concurrent.futures.Future()
                    self._creating[key] = mine
                    break
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(pending)
        try:
            return await self.create(labels=labels, owner=owner, **create)
        finally:
            with self._lock:
                del self._creating[key]
            mine.set_result(None)

    # ------------------------------------------------------------------ lookup
    def get(self, sandbox_id: str, *, owner: str | None = None) -> AsyncSandbox:
        """The live sandbox ``sandbox_id`` of ``owner``; NotFoundError otherwise (also for another owner's)."""
        sb = self._live.get(sandbox_id)
        if sb is None or sb.owner != owner or not sb.alive:
            raise NotFoundError(f"no sandbox {sandbox_id!r} (destroyed, expired or never created)")
        return sb

    def list(self, labels: Mapping[str, str] | None = None, *, owner: str | None = None) -> list[AsyncSandbox]:
        """``owner``'s live sandboxes whose labels include ``labels``, most recently used first."""
        want = _labels(labels).items()
        with self._lock:
            found = [s for s in self._live.values() if s.owner == owner and s.alive and want <= s.labels.items()]
        return sorted(found, key=lambda s: s.last_used_at, reverse=True)

    def find(self, labels: Mapping[str, str], *, owner: str | None = None) -> AsyncSandbox | None:
        """The most recently used of ``list(labels)``, or None."""
        found = self.list(labels, owner=owner)
        return found[0] if found else None

    # ------------------------------------------------------------------ ending
    def _forget(self, sb: AsyncSandbox) -> None:
        with self._lock:
            self._live.pop(sb.id, None)

    async def reap(self) -> builtins.list[str]:
        """Destroy the sandboxes idle longer than their TTL or older than their max lifetime (never one in
        the middle of an operation, unless past its max lifetime); their ids. The reaper calls it."""
        now = time.monotonic()
        with self._lock:
            due = [s for s in self._live.values() if s._expired(now)]
        for sb in due:
            await sb.destroy()
        return [s.id for s in due]

    def _ensure_reaper(self) -> None:
        r = self._reaper
        if r is None or r.done() or r.get_loop().is_closed():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while self._live:
            await asyncio.sleep(self.reap_interval_s)
            with contextlib.suppress(Exception):
                await self.reap()

    async def aclose(self) -> None:
        """Destroy every live sandbox of this manager."""
        with self._lock:
            live = builtins.list(self._live.values())
        for sb in live:
            await sb.destroy()
        if self._reaper is not None and not self._reaper.done() and not self._reaper.get_loop().is_closed():
            self._reaper.cancel()

    def __len__(self) -> int:
        return len(self._live)


_managers: weakref.WeakSet[SandboxManager] = weakref.WeakSet()
_default: SandboxManager | None = None
_default_lock = threading.Lock()


def default_manager() -> SandboxManager:
    """The library's manager (the default engine; ``EXECBOX_MAX_SANDBOXES`` live sandboxes at most)."""
    global _default
    with _default_lock:
        if _default is None:
            raw = os.environ.get("EXECBOX_MAX_SANDBOXES", "").strip()
            _default = SandboxManager(max_sandboxes=int(raw) if raw.isdigit() else DEFAULT_MAX_SANDBOXES)
            _managers.add(_default)
        return _default


@atexit.register
def _destroy_all_at_exit() -> None:
    """Sandboxes the program forgot are destroyed when it exits (their processes die with it anyway)."""
    for m in builtins.list(_managers):
        if m._live:
            with contextlib.suppress(Exception):
                asyncio.run(m.aclose())


_TOKEN = object()


def _manager(manager: SandboxManager | None) -> SandboxManager:  # not `or`: a manager with no sandboxes is falsy
    return default_manager() if manager is None else manager


@implements(AsyncFilesProtocol)
class AsyncFiles:
    """A sandbox's workdir, from the host: paths are relative to it; symlinks never lead out of it."""

    def __init__(self, sb: AsyncSandbox) -> None:
        self._sb = sb

    async def write(self, path: str, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self._sb._op(self._sb._instance.write_files({_path(path): raw}))

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        limit = max_bytes if max_bytes is not None else self._sb.limits.disk_mb * 1024 * 1024
        data = await self._sb._op(self._sb._instance.read_file(_path(path), min(limit, MAX_READ_BYTES)))
        if data is None:
            raise NotFoundError(f"no file {path!r} in sandbox {self._sb.id}")
        return data

    async def list(self, path: str = ".") -> builtins.list[FileInfo]:
        rel = _path(path, allow_root=True)
        try:
            entries = await self._sb._op(self._sb._instance.list_files(rel))
        except SandboxError as e:
            raise NotFoundError(f"no directory {path!r} in sandbox {self._sb.id}: {e}") from e
        prefix = "" if rel == "." else rel + "/"
        return [FileInfo(name=e.name, path=prefix + e.name, kind=e.kind, size_bytes=e.size)
                for e in entries]

    async def remove(self, path: str) -> bool:
        return await self._sb._op(self._sb._instance.remove_file(_path(path)))


@implements(AsyncSandboxProtocol, AsyncSandboxesProtocol)
class AsyncSandbox:
    """A persistent sandbox (the async core). Make one with ``create`` or ``get_or_create``; these and the
    lookups take ``manager=`` (default: ``default_manager()``)."""

    def __init__(self, *, _token: object, manager: SandboxManager, instance: Instance, provider: Provider,
                 language: str, lang_env: dict[str, str], env: dict[str, str], labels: dict[str, str],
                 limits: Limits, ttl_s: float, max_lifetime_s: float, owner: str | None) -> None:
        if _token is not _TOKEN:
            raise TypeError("use AsyncSandbox.create() or get_or_create()")
        self.id = "sb_" + uuid.uuid4().hex[:20]
        self.manager, self._instance, self._provider = manager, instance, provider
        self.provider = provider.name  # the instance that holds it (the first of the chain that could start it)
        self.language, self._env, self.labels, self.limits = language, {**lang_env, **env}, labels, limits
        self._own_env = env  # the variables given at create: under those of each run's language
        self.ttl_s, self.max_lifetime_s, self.owner = ttl_s, max_lifetime_s, owner
        self.created_at = time.time()
        self._born = self._used = time.monotonic()
        self._busy = 0
        self._destroyed = False
        self.files = AsyncFiles(self)
        self._kernel = Kernel(instance, language, limits, self._env)  # started by the first run_code

    # ------------------------------------------------------------------ making and finding
    @classmethod
    async def create(cls, language: str = "python", *, labels: Mapping[str, str] | None = None,
                     ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
                     provider: str | None = None, fallback: Sequence[str] | None = None,
                     env: Mapping[str, str] | None = None, manager: SandboxManager | None = None) -> AsyncSandbox:
        return await _manager(manager).create(language, labels=labels, ttl_s=ttl_s, max_lifetime_s=max_lifetime_s,
                                              limits=limits, provider=provider, fallback=fallback, env=env)

    @classmethod
    async def get_or_create(cls, labels: Mapping[str, str], *, language: str = "python", ttl_s: float | None = None,
                            max_lifetime_s: float | None = None, limits: Limits | None = None,
                            provider: str | None = None, fallback: Sequence[str] | None = None,
                            env: Mapping[str, str] | None = None, manager: SandboxManager | None = None,
                            ) -> AsyncSandbox:
        return await _manager(manager).get_or_create(labels, language=language, ttl_s=ttl_s,
                                                     max_lifetime_s=max_lifetime_s, limits=limits, provider=provider,
                                                     fallback=fallback, env=env)

    @classmethod
    async def find(cls, labels: Mapping[str, str], *, manager: SandboxManager | None = None) -> AsyncSandbox | None:
        return _manager(manager).find(labels)

    @classmethod
    async def list(cls, labels: Mapping[str, str] | None = None, *, manager: SandboxManager | None = None
                   ) -> builtins.list[AsyncSandbox]:
        return _manager(manager).list(labels)

    @classmethod
    async def get(cls, sandbox_id: str, *, manager: SandboxManager | None = None) -> AsyncSandbox:
        return _manager(manager).get(sandbox_id)

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> bool:
        """Not destroyed."""
        return not self._destroyed

    @property
    def last_used_at(self) -> float:
        """time.monotonic() of the last operation's start or end."""
        return self._used

    def _touch(self) -> None:
        self._used = time.monotonic()

    def _expired(self, now: float) -> bool:
        if now - self._born > self.max_lifetime_s:
            return True
        return not self._busy and now - self._used > self.ttl_s

    async def _op(self, aw: Awaitable[T]) -> T:
        """Run one operation on the instance: refused once destroyed, keeps the sandbox from idling out."""
        if self._destroyed:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise NotFoundError(f"sandbox {self.id} has been destroyed")
        self._busy += 1
        self._touch()
        try:
            with provider_errors(self._provider.name):
                result = await aw
            if self._destroyed:  # what it returned was cut short by the destroy: there is no result to give
                raise NotFoundError(f"sandbox {self.id} was destroyed during the operation")
            return result
        except SandboxError as e:
            if self._destroyed:  # destroyed (or reaped) while it ran: the caller's doing, not a failure
                raise NotFoundError(f"sandbox {self.id} was destroyed during the operation") from e
            raise
        finally:
            self._busy -= 1
            self._touch()

    def _spec(self, cmd: Command, stdin: str | bytes | None, env: Mapping[str, str] | None, cwd: str,
              limits: Limits | None) -> ExecSpec:
        merged = check_env({**self._env, **(env or {})})
        return exec_spec(tightened(self.limits, limits), argv_of(cmd), env=merged, cwd=check_cwd(cwd),
                         stdin=stdin.encode() if isinstance(stdin, str) else stdin or b"")

    def _result(self, outcome: ProcessOutcome, spec: ExecSpec) -> ExecutionResult:
        step = step_result(outcome, spec)
        return ExecutionResult(execution_id=uuid.uuid4().hex, language=self.language, provider=self._provider.name,
                               **step.model_dump())

    # ------------------------------------------------------------------ running
    async def exec(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
                   cwd: str = ".", limits: Limits | None = None, check: bool = False) -> ExecutionResult:
        spec = self._spec(cmd, stdin, env, cwd, limits)
        result = self._result(await self._op(self._instance.exec(spec)), spec)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def stream(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
                     cwd: str = ".", limits: Limits | None = None) -> AsyncIterator[ExecEvent]:
        spec = self._spec(cmd, stdin, env, cwd, limits)
        if self._destroyed:
            raise NotFoundError(f"sandbox {self.id} has been destroyed")
        decoders = {n: codecs.getincrementaldecoder("utf-8")("replace") for n in ("stdout", "stderr")}
        self._busy += 1
        self._touch()
        events = self._instance.stream(spec)
        try:
            with provider_errors(self._provider.name):
                async for item in events:
                    if isinstance(item, OutputChunk):
                        if text := decoders[item.stream].decode(item.data):
                            yield ExecEvent(type=item.stream, data=text)
                    else:
                        for name, dec in decoders.items():
                            if tail := dec.decode(b"", final=True):
                                yield ExecEvent(type=name, data=tail)
                        yield ExecEvent(type="exit", result=self._result(item, spec))
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
            self._busy -= 1
            self._touch()

    async def run(self, code: str | None = None, *, language: str | None = None, check: bool = False,
                  **options: Unpack[ProgramOptions]) -> ExecutionResult:
        result = await self._run_request(program_request(code, language or self.language, **options))
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def _run_request(self, request: ExecutionRequest) -> ExecutionResult:
        """``request``'s steps in this sandbox (its ``provider`` unused); the HTTP route's way in."""
        return await self._op(self.manager.engine.run_in(self._instance, request, provider=self._provider.name,
                                                         caps=self.limits, env=self._own_env))

    async def run_code(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        gone = f"sandbox {self.id} was destroyed during the cell"
        try:
            result = await self._op(self._kernel.run(code, timeout_s))
        except SandboxError as e:
            if self._destroyed:  # by destroy() or the reaper (max lifetime) meanwhile: gone, not failed
                raise NotFoundError(gone) from e
            raise
        if self._destroyed and result.status is CellStatus.KERNEL_DIED:  # killed by the destruction
            raise NotFoundError(gone)
        return result

    # ------------------------------------------------------------------ ending
    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self.manager._forget(self)
        await self._instance.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} {self.language} labels={self.labels} {'alive' if self.alive else 'destroyed'}>"


class Sandbox(BlockingSandbox[AsyncSandbox]):
    """A persistent sandbox (blocking): ``AsyncSandbox``'s names, signatures and docstrings (the one blocking
    facade, ``execbox.blocking``); ``create``/``get_or_create``/``get``/``find``/``list`` take ``manager=``."""

    _backend = AsyncSandbox


__all__ = ["AsyncFiles", "AsyncSandbox", "Files", "Sandbox", "SandboxManager", "default_manager"]
