"""The narrow contract between execbox's core and the things that isolate: processes and files, never languages.

    provider = SomeProvider(...)
    instance = await provider.start(InstanceSpec(...))
    await instance.write_files({"main.py": b"print(1)"})
    outcome = await instance.exec(ExecSpec(argv=("python3", "main.py"), ...))
    await instance.close()

Languages, limit defaults and clamping, statuses, retries and fallback live above this line, once.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(frozen=True)
class InstanceSpec:
    """What one isolated environment needs for its whole life."""

    disk_mb: int
    network: bool = False


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


class Instance(abc.ABC):
    """One isolated environment: a workdir and a way to run processes in it."""

    @abc.abstractmethod
    async def write_files(self, files: Mapping[str, bytes]) -> None:
        """Write files (relative paths, already validated) into the workdir."""

    @abc.abstractmethod
    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        """A file from the workdir, or None when it does not exist (or is not a regular file)."""

    @abc.abstractmethod
    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        """Run one process to its end (or its limit). The program failing is an outcome, not an error."""

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

    @abc.abstractmethod
    async def start(self, spec: InstanceSpec) -> Instance:
        """A fresh instance. Raises SandboxError subclasses when the provider cannot run."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release provider-wide resources (pools, connections)."""
