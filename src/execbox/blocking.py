"""The one blocking facade over the async sandbox API (``execbox.protocol``): ``execbox.Sandbox`` wraps the
in-process ``AsyncSandbox``, a client's ``Sandbox`` wraps the server's; the same methods, signatures and
docstrings, each written once. Every call runs on one event loop on a daemon thread (``call``)."""

from __future__ import annotations

import asyncio
import builtins
import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Self, TypeVar

from execbox.models import ExecEvent, Limits
from execbox.protocol import AsyncFilesProtocol, AsyncSandboxesProtocol, AsyncSandboxProtocol, Command, implements

P = ParamSpec("P")
T = TypeVar("T")
S = TypeVar("S", bound=AsyncSandboxProtocol)


class _Portal:
    """One event loop on a daemon thread that every blocking sandbox runs on: a sandbox outlives any single
    call, and its processes are started from a thread that lives as long as the program (the local
    provider's launcher dies with the thread that started it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        threading.Thread(target=run, name="execbox-sandbox-portal", daemon=True).start()
        ready.wait()

    def call(self, aw: Awaitable[T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("a sync Sandbox method was called from its own event loop; use AsyncSandbox")

        async def wrap() -> T:
            return await aw

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result()


@functools.cache
def _portal() -> _Portal:
    return _Portal()


def call(aw: Awaitable[T]) -> T:
    """``await aw`` on the facade's event loop, from any thread that is not that loop's."""
    return _portal().call(aw)


def twin(fn: Callable[Concatenate[Any, P], Awaitable[T]]) -> Callable[Concatenate[Any, P], T]:
    """The blocking twin of the async method ``fn`` (a protocol's, or a class's), as a method of a class whose
    ``_async`` has a method of that name: the same parameters (for mypy and ``inspect.signature``) and
    docstring; the call goes to ``_async``'s own method (an implementation's, never the protocol's stub)."""
    name = fn.__name__

    def method(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> T:
        own: Callable[P, Awaitable[T]] = getattr(self._async, name)
        return call(own(*args, **kwargs))
    functools.update_wrapper(method, fn)  # its name, docstring and __wrapped__ (inspect.signature follows it)
    return method


class Files:
    """A sandbox's workdir (blocking): ``AsyncFilesProtocol``'s methods."""

    def __init__(self, files: AsyncFilesProtocol) -> None:
        self._async = files

    write = twin(AsyncFilesProtocol.write)
    read = twin(AsyncFilesProtocol.read)
    list = twin(AsyncFilesProtocol.list)
    remove = twin(AsyncFilesProtocol.remove)


@implements(AsyncSandboxProtocol, AsyncSandboxesProtocol)  # the docstrings of the methods written here
class BlockingSandbox(Generic[S]):
    """A persistent sandbox (blocking) over an async one: ``AsyncSandboxProtocol``'s methods, and
    ``AsyncSandboxesProtocol``'s as classmethods on ``_backend`` (where a subclass makes and finds them).
    ``**options`` of the constructors go to the backend (in-process: ``manager=``)."""

    _backend: ClassVar[AsyncSandboxesProtocol[Any]]

    def __init__(self, sb: S) -> None:
        self._async = sb
        self.files = Files(sb.files)

    @property
    def id(self) -> str:
        return self._async.id

    @property
    def labels(self) -> dict[str, str]:
        return self._async.labels

    @property
    def language(self) -> str:
        return self._async.language

    @property
    def alive(self) -> bool:
        """Not destroyed (a remote sandbox: not through this object; one the server reaped raises
        NotFoundError at its next use)."""
        return self._async.alive

    # ------------------------------------------------------------------ making and finding
    @classmethod
    def create(cls, language: str = "python", *, labels: Mapping[str, str] | None = None,
               ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
               provider: str | None = None, fallback: Sequence[str] | None = None,
               env: Mapping[str, str] | None = None, **options: Any) -> Self:
        return cls(call(cls._backend.create(language, labels=labels, ttl_s=ttl_s, max_lifetime_s=max_lifetime_s,
                                            limits=limits, provider=provider, fallback=fallback, env=env,
                                            **options)))

    @classmethod
    def get_or_create(cls, labels: Mapping[str, str], *, language: str = "python", ttl_s: float | None = None,
                      max_lifetime_s: float | None = None, limits: Limits | None = None,
                      provider: str | None = None, fallback: Sequence[str] | None = None,
                      env: Mapping[str, str] | None = None, **options: Any) -> Self:
        return cls(call(cls._backend.get_or_create(labels, language=language, ttl_s=ttl_s,
                                                   max_lifetime_s=max_lifetime_s, limits=limits,
                                                   provider=provider, fallback=fallback, env=env, **options)))

    @classmethod
    def get(cls, sandbox_id: str, **options: Any) -> Self:
        return cls(call(cls._backend.get(sandbox_id, **options)))

    @classmethod
    def find(cls, labels: Mapping[str, str], **options: Any) -> Self | None:
        sb = call(cls._backend.find(labels, **options))
        return None if sb is None else cls(sb)

    @classmethod
    def list(cls, labels: Mapping[str, str] | None = None, **options: Any) -> builtins.list[Self]:
        return [cls(sb) for sb in call(cls._backend.list(labels, **options))]

    # ------------------------------------------------------------------ running
    exec = twin(AsyncSandboxProtocol.exec)
    run = twin(AsyncSandboxProtocol.run)
    run_code = twin(AsyncSandboxProtocol.run_code)
    destroy = twin(AsyncSandboxProtocol.destroy)

    def stream(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
               cwd: str = ".", limits: Limits | None = None) -> Iterator[ExecEvent]:
        agen = self._async.stream(cmd, stdin=stdin, env=env, cwd=cwd, limits=limits)
        try:
            while True:
                try:
                    yield call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            call(agen.aclose())  # type: ignore[attr-defined]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return repr(self._async).replace(type(self._async).__name__, type(self).__name__, 1)
