"""The sandbox API, written once: what the in-process sandboxes (``execbox.AsyncSandbox``) and a server's
through the remote client (``client.AsyncSandbox``) both implement, with the docstrings both carry
(``implements`` copies them), and what the one blocking facade (``execbox.blocking``) wraps.

    AsyncSandboxesProtocol   create, get_or_create, get, find, list    (AsyncSandbox's classmethods, or a
                                                                        client's ``AsyncSandbox`` object)
    AsyncSandboxProtocol     exec, stream, files, run, run_code, destroy, id, language, provider, labels, alive
    AsyncFilesProtocol       write, read, list, remove

tests/test_public_api.py checks every implementation against these: the same names and parameters.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict, TypeVar, Unpack

from execbox.errors import RequestError
from execbox.interpreter import CellResult
from execbox.models import ExecEvent, ExecutionResult, File, FileInfo, Limits

Command = str | Sequence[str]
C = TypeVar("C", bound=type)
SB = TypeVar("SB", bound="AsyncSandboxProtocol")


class ProgramOptions(TypedDict, total=False):
    """A program's options besides its code and language, as ``execbox.run`` takes them; each left out (or
    None) means nothing or the default: no stdin, files, args or env, the language's entry and version, the
    default limits, ``command="run"``. One list for every ``run`` and the request they make (``program_request``)."""

    stdin: str | bytes | None
    files: Mapping[str, str | bytes] | Sequence[File] | None
    entry: str | None
    args: Sequence[str] | None
    env: Mapping[str, str] | None
    limits: Limits | None
    version: str | None
    arguments: Mapping[str, Any] | None
    command: Literal["run", "test"]


class AsyncFilesProtocol(Protocol):
    """A sandbox's workdir, from outside: paths are relative to it; symlinks never lead out of it."""

    async def write(self, path: str, data: str | bytes) -> None:
        """Create or replace a file (text is written as UTF-8); parent directories are made."""

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        """A file's bytes (at most ``max_bytes``, default the sandbox's disk size). NotFoundError when it
        does not exist, is not a regular file, or its path leads out of the workdir."""

    async def list(self, path: str = ".") -> builtins.list[FileInfo]:
        """The entries of a workdir directory, sorted by name."""

    async def remove(self, path: str) -> bool:
        """Remove a file, symlink or directory tree; False when nothing was there."""


class AsyncSandboxProtocol(Protocol):
    """A persistent sandbox: many commands and programs over time in one isolated environment."""

    id: str
    language: str
    provider: str
    labels: dict[str, str]

    @property
    def files(self) -> AsyncFilesProtocol: ...

    @property
    def alive(self) -> bool:
        """Not destroyed (a remote sandbox: not through this object; one the server reaped raises
        NotFoundError at its next use)."""

    async def exec(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
                   cwd: str = ".", limits: Limits | None = None, check: bool = False) -> ExecutionResult:
        """Run a command (a string runs under ``/bin/sh -c``; a list is the argv) in the sandbox and return
        its result. Files and background processes persist between execs; each exec has its own limits
        and a runaway one is killed (with everything it started) while the sandbox lives on. The command
        failing is a result; ``check=True`` raises ExecutionFailed for anything but ``ok``."""

    def stream(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
               cwd: str = ".", limits: Limits | None = None) -> AsyncIterator[ExecEvent]:
        """Run a command as ``exec`` does, yielding its stdout/stderr as they come (ExecEvent "stdout" and
        "stderr", within the output cap), then an "exit" event carrying the result. Leaving the loop early
        kills the command."""

    async def run(self, code: str | None = None, *, language: str | None = None, check: bool = False,
                  **options: Unpack[ProgramOptions]) -> ExecutionResult:
        """Run a program in the sandbox as ``execbox.run`` runs one in a fresh sandbox (``options``: its
        ProgramOptions, ``stdin=``, ``files=``, ``args=``...): ``code`` (and/or ``files``) in ``language``
        (default: the sandbox's) is written into the workdir, compiled and run as the language says (a
        server's: its languages); the files (and what the compile step built) stay in the workdir afterwards.
        Its limits are the sandbox's, tightened by ``limits``. The program failing is a result; ``check=True``
        raises ExecutionFailed for anything but ``ok``."""

    async def run_code(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        """Run a Python cell in the sandbox's IPython kernel (started by the first call), which keeps its
        state between calls: ``run_code("x = 41")`` then ``run_code("x + 1").text == "42"``. Rich outputs
        (text/plain, text/html, image/png of matplotlib figures...), stdout, stderr and the exception come
        back as data in a CellResult. ``timeout_s`` (default and maximum: the sandbox's ``wall_time_s``) is
        the cell's: past it the cell is interrupted, and the kernel killed if it does not stop; a kernel that
        died is replaced by the next call, whose result says so (``restarted``). The sandbox lives on."""

    async def destroy(self) -> None:
        """Kill everything in the sandbox and remove every trace of it. Idempotent."""


class AsyncSandboxesProtocol(Protocol[SB]):
    """Where sandboxes are made and found: ``AsyncSandbox`` itself (its classmethods) in this process, a
    client's ``AsyncSandbox`` for a server's (the sandboxes of its key)."""

    async def create(self, language: str = "python", *, labels: Mapping[str, str] | None = None,
                     ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
                     provider: str | None = None, fallback: Sequence[str] | None = None,
                     env: Mapping[str, str] | None = None) -> SB:
        """A new sandbox: ``labels`` to find it again, ``ttl_s`` idle seconds before it is destroyed,
        ``max_lifetime_s`` its hard maximum age, ``limits`` each exec's defaults and the sandbox's caps,
        ``env`` variables of every exec; ``provider`` pins one, ``fallback`` names the providers to try
        after it (or after the default, in place of the chain) when it cannot start a sandbox."""

    async def get_or_create(self, labels: Mapping[str, str], *, language: str = "python",
                            ttl_s: float | None = None, max_lifetime_s: float | None = None,
                            limits: Limits | None = None, provider: str | None = None,
                            fallback: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> SB:
        """The live sandbox whose labels include ``labels``, or a new one (concurrent calls create one)."""

    async def get(self, sandbox_id: str) -> SB:
        """The live sandbox with this id; NotFoundError when there is none."""

    async def find(self, labels: Mapping[str, str]) -> SB | None:
        """The most recently used live sandbox whose labels include ``labels``, or None."""

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[SB]:
        """Live sandboxes whose labels include ``labels`` (all with None), most recently used first."""


def argv_of(cmd: Command) -> tuple[str, ...]:
    """A command's argv: a shell command string runs under /bin/sh -c; a sequence is the argv itself."""
    if isinstance(cmd, str):
        if not cmd.strip():
            raise RequestError("empty command")
        return ("/bin/sh", "-c", cmd)
    argv = tuple(cmd)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("a command is a non-empty string or a non-empty sequence of strings")
    return argv


PROTOCOLS = (AsyncFilesProtocol, AsyncSandboxProtocol, AsyncSandboxesProtocol)


def members(protocol: type) -> dict[str, Callable[..., Any]]:
    """The protocol's public methods (properties as their getters), by name."""
    out = {}
    for name, m in vars(protocol).items():
        if not name.startswith("_"):
            fn = m.fget if isinstance(m, property) else m
            if callable(fn):
                out[name] = fn
    return out


def implements(*protocols: type) -> Callable[[C], C]:
    """A class decorator: each of the protocols' methods that the class defines without a docstring gets
    the protocol's (so that each is written once, in this module)."""
    def deco(cls: C) -> C:
        for protocol in protocols:
            for name, fn in members(protocol).items():
                own = vars(cls).get(name)
                target = own.__func__ if isinstance(own, classmethod | staticmethod) else own
                if isinstance(target, property):
                    continue  # a property's doc is read-only on some versions; properties document themselves
                if target is not None and callable(target) and not target.__doc__:
                    target.__doc__ = fn.__doc__
        return cls
    return deco
