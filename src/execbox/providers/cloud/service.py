"""Sandbox services (E2B, Modal, Daytona, Cloudflare, Aliyun) as execbox providers, written once.

A vendor adapter gives a ``Service`` that creates ``Box``es (one vendor sandbox each) whose one verb is
``run``: a shell command line run to its end, answering its exit code and output, plus file reads and
writes. Everything else is here, once for every vendor:

- each ``ExecSpec`` becomes one ``/bin/sh`` line (``command_line``): cd to its cwd, stdin from a file
  written first (then unlinked: vendors differ in how they take stdin, all take files), ``ulimit`` for its
  CPU time, file size and open files, ``env`` for its environment and coreutils' ``timeout`` for its wall
  time (the vendor call's own timeout backs it up);
- the answer becomes a ``ProcessOutcome``: 124 from ``timeout`` is the wall time, 128+N a signal (SIGXCPU the
  CPU time), output beyond the cap is cut once the run has ended (unlike the local provider, the run is not
  stopped at the cap, and the vendor carries the whole output to execbox: bounded only by the wall time);
- a vendor sandbox made while its caller was cancelled is killed, never left running.

What the vendor's sandbox enforces itself (memory, processes, the network) its adapter sets when it creates
the box, and its kind declares (``catalog``); the rest is what the line above enforces, inside the box.
"""

from __future__ import annotations

import abc
import asyncio
import math
import posixpath
import shlex
import signal
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from execbox.errors import SandboxError
from execbox.providers.base import (
    ExecSpec,
    FileEntry,
    Instance,
    InstanceSpec,
    ProcessOutcome,
    Provider,
    StopReason,
)

WRAPPER_FAILED = 125
WRAPPER_MARK = "execbox-wrapper:"
KILL_AFTER_S = 2  # timeout's grace between SIGTERM and SIGKILL
_KINDS = {"f": "file", "d": "dir", "l": "symlink"}


class ServiceSettings(BaseModel):
    """What every sandbox service's settings have (each vendor's model adds its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    create_timeout_s: float = Field(60.0, gt=0, le=900)
    """Seconds to wait for the service to create a sandbox."""
    extra_time_s: float = Field(30.0, ge=1, le=3600)
    """Seconds allowed on top of a run's own wall time for the service's answer."""
    sandbox_timeout_s: float = Field(3600.0, gt=0, le=86400)
    """The service-side lifetime asked for each sandbox (it bounds what a dead execbox leaves behind; a
    sandbox is destroyed by execbox when its run or its TTL ends)."""


@dataclass(frozen=True)
class Ran:
    """A command line's end, as the service reports it (``exit_code`` -N: killed by signal N)."""

    exit_code: int
    stdout: bytes
    stderr: bytes


class Box(abc.ABC):
    """One vendor sandbox. ``workdir``: the absolute directory the program's files go in; ``scratch_dir``:
    where execbox's own short-lived files (a run's stdin) go, for a service that writes files only somewhere."""

    workdir: str
    scratch_dir: str = "/tmp"

    @abc.abstractmethod
    async def run(self, command: str, timeout_s: float) -> Ran:
        """Run ``command`` under ``/bin/sh -c`` to its end. Raise ``TimeoutError`` when the service gave up
        on it after ``timeout_s``; execbox's errors for the service's failures (mapped by the adapter)."""

    @abc.abstractmethod
    async def write(self, path: str, data: bytes) -> None:
        """Create or replace the file at absolute ``path`` (parent directories made)."""

    @abc.abstractmethod
    async def read(self, path: str, max_bytes: int) -> bytes | None:
        """The first ``max_bytes`` of the regular file at absolute ``path``; None when there is none."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Destroy the sandbox (idempotent; one already gone is fine)."""

    async def write_many(self, files: Mapping[str, bytes]) -> None:
        """Several files (absolute paths); adapters whose SDK uploads many at once override it."""
        for path, data in files.items():
            await self.write(path, data)


class Service(abc.ABC):
    """A vendor's sandbox service, through its SDK."""

    @abc.abstractmethod
    async def create(self, spec: InstanceSpec) -> Box:
        """A new sandbox honouring what the service enforces of ``spec`` (its network, a persistent one's
        memory), or the execbox error of the service's refusal (ProviderUnavailable for credentials it
        refuses, CapacityError with the retry-after it gives, SandboxError otherwise)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the SDK's client (connections), with the provider."""


class ServiceProvider(Provider):
    """An execbox provider on a sandbox ``service``: one sandbox per instance."""

    supports_persistent = True

    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service, self.settings = service, settings

    async def start(self, spec: InstanceSpec) -> Instance:
        return ServiceInstance(self, await _made(self.service.create(spec)), spec)

    async def aclose(self) -> None:
        await self.service.aclose()


async def _made(creating: asyncio.Future[Box] | object) -> Box:
    """The created box; a cancel meanwhile waits for the creation to end and kills what it made."""
    task: asyncio.Future[Box] = asyncio.ensure_future(creating)  # type: ignore[arg-type]
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            box = await task
        except Exception:
            raise asyncio.CancelledError from None
        await box.kill()
        raise


class ServiceInstance(Instance):
    def __init__(self, provider: ServiceProvider, box: Box, spec: InstanceSpec) -> None:
        self.provider, self.box, self.spec = provider, box, spec
        self._closed = False

    def _path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join(self.box.workdir, path))

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        await self.box.write_many({self._path(p): d for p, d in files.items()})

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        return await self.box.read(self._path(path), max_bytes)

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        stdin_path = None
        if spec.stdin:
            stdin_path = posixpath.join(self.box.scratch_dir, f".execbox-stdin-{uuid.uuid4().hex}")
            await self.box.write(stdin_path, spec.stdin)
        line = command_line(spec, self.box.workdir, stdin_path)
        began = time.monotonic()
        try:
            ran = await self.box.run(line, spec.wall_time_s + KILL_AFTER_S + self.provider.settings.extra_time_s)
        except TimeoutError:
            return ProcessOutcome(exit_code=None, signal=None, stdout=b"", stderr=b"", stdout_truncated=False,
                                  stderr_truncated=False, wall_time_s=time.monotonic() - began,
                                  stopped_by=StopReason.WALL_TIME)
        return outcome(ran, spec, time.monotonic() - began)

    async def list_files(self, path: str) -> list[FileEntry]:
        where = self._path(path)
        ran = await self.box.run(f"cd {shlex.quote(where)} 2>/dev/null || exit 3; "
                                 "find . -mindepth 1 -maxdepth 1 -printf '%y\\t%s\\t%f\\0'", 60)
        if ran.exit_code == 3:
            raise SandboxError(f"{path!r} is not a directory in the sandbox")
        if ran.exit_code != 0:
            raise SandboxError(f"listing {path!r} failed: {ran.stderr.decode(errors='replace').strip()}")
        entries = []
        for item in ran.stdout.split(b"\0"):
            if item:
                kind, size, name = item.decode(errors="replace").split("\t", 2)
                kind = _KINDS.get(kind, "other")
                entries.append(FileEntry(name, kind, int(size) if kind == "file" else 0))
        return sorted(entries, key=lambda e: e.name)

    async def remove_file(self, path: str) -> bool:
        where = shlex.quote(self._path(path))
        ran = await self.box.run(f"if [ -e {where} ] || [ -L {where} ]; then rm -rf -- {where} && echo removed; fi",
                                 60)
        if ran.exit_code != 0:
            raise SandboxError(f"removing {path!r} failed: {ran.stderr.decode(errors='replace').strip()}")
        return ran.stdout.strip() == b"removed"

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.box.kill()


def command_line(spec: ExecSpec, workdir: str, stdin_path: str | None) -> str:
    """The one shell line that runs ``spec`` in a vendor sandbox under its limits (see the module)."""
    q = shlex.quote
    fail = f"{{ echo '{WRAPPER_MARK} '\"$1\" >&2; exit {WRAPPER_FAILED}; }}"
    cwd = posixpath.normpath(posixpath.join(workdir, spec.cwd))
    stdin = f"exec 0<{q(stdin_path)} && rm -f {q(stdin_path)}" if stdin_path else "exec 0</dev/null"
    env = " ".join(q(f"{k}={v}") for k, v in spec.env.items())
    argv = " ".join(q(a) for a in spec.argv)
    # rounded up to the millisecond: a sub-millisecond limit must not read "0" (timeout's "no limit")
    wall = f"{math.ceil(spec.wall_time_s * 1000) / 1000:.3f}".rstrip("0").rstrip(".")
    return "; ".join([
        f"fail() {fail}",
        f"cd {q(cwd)} 2>/dev/null || fail 'no such directory'",
        f"{stdin} || fail 'stdin cannot be opened'",
        # the soft limit signals SIGXCPU (the CPU time's mark), the hard one a second later kills
        f"ulimit -S -t {math.ceil(spec.cpu_time_s)} && ulimit -H -t {math.ceil(spec.cpu_time_s) + 1} "
        "|| fail 'ulimit -t'",
        f"ulimit -f {spec.file_size_mb * 2048} || fail 'ulimit -f'",  # POSIX sh counts 512-byte blocks
        f"ulimit -n {spec.open_files} || fail 'ulimit -n'",
        f"if command -v timeout >/dev/null; then exec env -- {env} timeout -k {KILL_AFTER_S} {wall} {argv}; "
        f"else exec env -- {env} {argv}; fi",
    ])


def outcome(ran: Ran, spec: ExecSpec, wall_s: float) -> ProcessOutcome:
    """The process outcome of a command line's end (see the module)."""
    if ran.exit_code == WRAPPER_FAILED and ran.stderr.startswith(WRAPPER_MARK.encode()):
        # the line's own failure (its mark first: the program never ran, so nothing else was written)
        raise SandboxError(f"the sandbox could not set the run up: {ran.stderr.decode(errors='replace').strip()}")
    stdout, stderr = ran.stdout[:spec.output_bytes], ran.stderr[:spec.output_bytes]
    out_cut, err_cut = len(ran.stdout) > spec.output_bytes, len(ran.stderr) > spec.output_bytes
    code: int | None = ran.exit_code
    signum: int | None = None
    stopped: StopReason | None = None
    if code == 124 and wall_s >= spec.wall_time_s:  # timeout's own exit: the wall time ran out
        code, stopped = None, StopReason.WALL_TIME
    elif code in (-signal.SIGKILL, 128 + signal.SIGKILL) and wall_s >= spec.wall_time_s + KILL_AFTER_S:
        # a program that ignored timeout's SIGTERM: its -k SIGKILL goes to its whole group, timeout too
        code, stopped = None, StopReason.WALL_TIME
    elif code is not None and (code < 0 or 128 < code < 128 + 65):  # killed by a signal: -N, or the shell's 128+N
        signum, code = (-code if code < 0 else code - 128), None
        if signum == signal.SIGXCPU:
            stopped = StopReason.CPU_TIME
    if stopped is None and (out_cut or err_cut):
        stopped = StopReason.OUTPUT
    return ProcessOutcome(exit_code=code, signal=signum, stdout=stdout, stderr=stderr, stdout_truncated=out_cut,
                          stderr_truncated=err_cut, wall_time_s=wall_s, stopped_by=stopped)
