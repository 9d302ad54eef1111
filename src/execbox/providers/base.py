"""The narrow contract between execbox's core and the things that isolate: processes and files, never languages.

    provider = SomeProvider(...)
    instance = await provider.start(InstanceSpec(...))
    await instance.write_files({"main.py": b"print(1)"})
    outcome = await instance.exec(ExecSpec(argv=("python3", "main.py"), ...))
    await instance.close()

Persistent instances (``InstanceSpec(persistent=True)``, on providers whose ``supports_persistent`` is
true) live across many ``exec`` calls: each exec is a new process in the same isolated environment (files
and background processes persist), with its own limits, and a runaway exec is killed without killing the
instance. They add streaming (``Instance.stream``) and file listing/removal; ``execbox.sandbox`` builds the
library's ``AsyncSandbox`` on them.

Languages, limit defaults and clamping, statuses, retries and fallback live above this line, once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from execbox.errors import SandboxError

T = TypeVar("T")


@dataclass(frozen=True)
class InstanceSpec:
    """What one isolated environment needs for its whole life."""

    disk_mb: int
    network: bool = False
    # A persistent instance: many execs over its life, in one environment (see the module docstring).
    persistent: bool = False
    # Persistent instances only: caps on everything alive in the instance at once (every exec and every
    # background process together); each exec's own ExecSpec limits are at most these.
    memory_mb: int = 512
    pids: int = 128
    # Programs the instance is for, first the one run first (a language's compile and run commands): a
    # provider whose environment depends on them (docker's images) checks or picks it when it starts the
    # instance, so that a refusal comes before the code is handed over.
    binaries: tuple[str, ...] = ()


class LiveInput:
    """What a client sends a running exec (an interactive run): stdin as it types it, its end, and signals.
    Only instances whose ``supports_live`` is true take it (``ExecSpec.live``); ``stdin`` is then unused."""

    def __init__(self) -> None:
        self._events: asyncio.Queue[bytes | int | None] = asyncio.Queue()
        self.pending_bytes = 0  # written, not yet taken by the exec: a writer should wait while it is large

    def write(self, data: bytes) -> None:
        if data:
            self.pending_bytes += len(data)
            self._events.put_nowait(data)

    def close(self) -> None:
        """The end of stdin (the program reads EOF once what was written is read)."""
        self._events.put_nowait(None)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the exec's processes."""
        self._events.put_nowait(signum)

    async def next(self) -> bytes | int | None:
        item = await self._events.get()
        if isinstance(item, bytes):
            self.pending_bytes -= len(item)
        return item


@dataclass(frozen=True)
class ExecSpec:
    """One process run inside an instance, with its own limits."""

    argv: tuple[str, ...]
    wall_time_s: float
    cpu_time_s: float
    memory_mb: int
    pids: int
    output_bytes: int
    file_size_mb: int
    open_files: int
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "."  # relative to the workdir
    live: LiveInput | None = field(default=None, compare=False)  # an interactive exec's input, as it comes


class StopReason(enum.StrEnum):
    """Why the provider stopped a process (None in ProcessOutcome: it ended by itself)."""

    WALL_TIME = "wall_time"
    CPU_TIME = "cpu_time"
    MEMORY = "memory"
    OUTPUT = "output"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ProcessOutcome:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time_s: float
    cpu_time_s: float | None = None
    max_rss_mb: float | None = None
    stopped_by: StopReason | None = None


@dataclass(frozen=True)
class OutputChunk:
    """Output of a streamed exec, as it arrives (within the exec's output cap)."""

    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing. Symlinks are reported as such, never followed."""

    name: str
    kind: str  # "file" | "dir" | "symlink" | "other"
    size: int  # bytes, for files (0 otherwise)


async def stream_run(run: Callable[[Callable[[OutputChunk], None]], Awaitable[ProcessOutcome]],
                     ) -> AsyncIterator[OutputChunk | ProcessOutcome]:
    """``Instance.stream`` for a provider whose exec takes a chunk callback: ``run(on_chunk)`` runs the
    process as a task; its chunks are yielded as they come, then its outcome. Closing early cancels it."""
    queue: asyncio.Queue[OutputChunk] = asyncio.Queue()
    task = asyncio.ensure_future(run(queue.put_nowait))
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
                continue
            getter.cancel()
            while not queue.empty():
                yield queue.get_nowait()
            yield task.result()
            return
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def to_thread_to_end(fn: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None) -> T:
    """``asyncio.to_thread`` for work a cancel must not lose: making or removing what an instance holds
    (containers, processes, cgroups). A cancel that lands before a thread has taken the job drops it
    (a queued ``concurrent.futures`` job is cancelled: on a loaded host, a container left behind), and one
    that lands while it runs leaves what it makes to nobody. So ``fn`` always runs to its end and the
    caller's cancels meanwhile are raised once it has; ``undo`` then gets what ``fn`` made (in a thread too)."""
    job = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not job.done():
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            cancelled = True
    if not cancelled:
        return job.result()
    if undo is not None and not job.cancelled() and job.exception() is None:
        await to_thread_to_end(undo, job.result())
    raise asyncio.CancelledError


LIVE_SIGNAL_RETRY_S = 0.005


async def pump_live(live: LiveInput, write: Callable[[bytes], Awaitable[None]], end: Callable[[], None],
                    send_signal: Callable[[int], int]) -> None:
    """Feed a client's input to a running exec until cancelled (by the exec's end), for an instance that
    takes ``ExecSpec.live``: stdin through ``write`` (one write at a time: bytes count in
    ``live.pending_bytes`` until written, so a client is slowed down by a program that reads slowly), then
    ``end`` (EOF) once everything before the close is written; after a failed write (the program closed
    its stdin) the rest is dropped. Each signal goes through ``send_signal`` as soon as it comes, even
    while a write waits for a program that does not read; it returns how many processes it reached, and
    none means the exec's program has not started yet: it is sent again shortly."""
    buffer = bytearray()
    more = asyncio.Event()
    eof = False

    async def writer() -> None:
        broken = False
        while True:
            if buffer:
                chunk = bytes(buffer)
                buffer.clear()
                try:
                    if not broken:
                        await write(chunk)
                except OSError:
                    broken = True
                finally:
                    live.pending_bytes -= len(chunk)
            elif eof:
                with contextlib.suppress(OSError):
                    end()
                return
            else:
                more.clear()
                await more.wait()

    task = asyncio.create_task(writer())
    try:
        while True:
            item = await live.next()
            if item is None:
                eof = True
            elif isinstance(item, bytes):
                if not eof:
                    buffer += item
                    live.pending_bytes += len(item)  # not taken by the program yet
            else:
                while not send_signal(item):
                    await asyncio.sleep(LIVE_SIGNAL_RETRY_S)
            more.set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class Instance(abc.ABC):
    """One isolated environment: a workdir and a way to run processes in it."""

    supports_live = False  # takes ExecSpec.live (stdin and signals while the exec runs)

    @abc.abstractmethod
    async def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write files (relative paths, already validated) into the workdir."""

    @abc.abstractmethod
    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        """A file from the workdir, or None when it does not exist (or is not a regular file)."""

    @abc.abstractmethod
    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        """Run one process to its end (or its limit). The program failing is an outcome, not an error."""

    async def stream(self, spec: ExecSpec) -> AsyncIterator[OutputChunk | ProcessOutcome]:
        """Run one process, yielding its output chunks as they come, then its ProcessOutcome (last, with
        the whole capped output, as ``exec`` returns it). Closing the iterator early kills the process.
        This default does not stream (everything arrives at the end); providers that can, override it."""
        outcome = await self.exec(spec)
        for name, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
            if data:
                yield OutputChunk(name, data)
        yield outcome

    async def list_files(self, path: str) -> list[FileEntry]:
        """The entries of a workdir directory (relative path, "." for the workdir), sorted by name.
        Raises SandboxError when it is not a directory inside the workdir."""
        raise SandboxError(f"{type(self).__name__} cannot list files")

    async def remove_file(self, path: str) -> bool:
        """Remove a workdir file, symlink or directory tree; False when nothing was there."""
        raise SandboxError(f"{type(self).__name__} cannot remove files")

    @abc.abstractmethod
    async def close(self) -> None:
        """Kill everything still running and remove every trace. Idempotent."""

    async def __aenter__(self) -> Instance:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class Provider(abc.ABC):
    """A way to isolate. Subclasses set ``name`` and implement ``start``."""

    name: str
    # True when start() honours InstanceSpec.persistent (and its instances implement stream, list_files
    # and remove_file); callers check it first: a provider without it would start a one-shot instance.
    supports_persistent: bool = False

    @abc.abstractmethod
    async def start(self, spec: InstanceSpec) -> Instance:
        """A fresh instance. Raises SandboxError subclasses when the provider cannot run."""

    def active_sandboxes(self) -> int | None:
        """Sandboxes that exist now, for providers that keep some between executions (pools); None for the
        others (their sandboxes are the executions in progress)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release provider-wide resources (pools, connections)."""
