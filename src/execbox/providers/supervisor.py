"""One supervisor for every provider: what watching a running program means, written once.

A provider starts the program its own way (a launcher and bubblewrap, an agent's fork, a ``docker exec``) and
feeds a ``Watch`` with what it reads (``add``) and how the program's end shows (``run``); the watch applies
the limits and decides why it stopped:

- the output cap, per stream: past it the program is killed (``OUTPUT``), the output truncated at the cap;
- the wall time (``WALL_TIME``), the CPU time read from the execution's cgroup (``CPU_TIME``), a cgroup stuck
  at its memory limit without an OOM kill (``MEMORY``, see host/stall.py), a cancelled caller
  (``CANCELLED``);
- the kill, once: later reasons (more output past the cap, a late CPU check) find the tree already dead;
- the stop reason from what execbox measured or did, never from a signal the program can send itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from execbox.providers.base import OutputChunk, ProcessOutcome, StopReason
from execbox.providers.host.stall import MemoryStall

READ_CHUNK = 65536
CPU_POLL_S = 0.05
# After the program ends, pipes still open (a descendant holding them) are given this long.
PIPE_GRACE_S = 0.2


@dataclass
class Scope:
    """What one execution's limits act on, as its provider knows it."""

    kill: Callable[[], None]  # SIGKILL every process of the execution (called once; must not block long)
    cpu_seconds: Callable[[], float | None] | None = None  # the execution's CPU time so far (its cgroup)
    stall: MemoryStall | None = None
    cpu_base_s: float = 0.0  # CPU time the group had used before the program started (not the program's)
    # the program ended but descendants still hold its output pipes: kill them (one-shot: the reset would
    # anyway) or leave them running and stop reading (persistent: background processes are the point)
    kill_lingering: bool = True
    # a client's signal to the execution's processes (never execbox's own helpers); how many it reached.
    # Only where an execution's processes can be told from everything else: ExecSpec.live needs it
    signal: Callable[[int], int] | None = None


@dataclass
class _Stream:
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False


class Watch:
    """One execution's limits and stop reason. ``add`` what the program writes; await ``run`` with its end."""

    def __init__(self, scope: Scope, *, output_bytes: int, wall_time_s: float, cpu_time_s: float,
                 on_chunk: Callable[[OutputChunk], None] | None = None) -> None:
        self.scope, self.output_bytes = scope, output_bytes
        self.wall_time_s, self.cpu_time_s = wall_time_s, cpu_time_s
        self.on_chunk = on_chunk
        self.streams = {"stdout": _Stream(), "stderr": _Stream()}
        self.stopped_by: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        """Kill the execution, once; the first reason is the one reported."""
        if self.stopped_by is not None:
            return
        self.stopped_by = reason
        self.scope.kill()

    def add(self, stream: str, chunk: bytes) -> None:
        """Output the program wrote on ``stream`` ("stdout"/"stderr"): kept up to the cap, then a kill."""
        s = self.streams[stream]
        room = self.output_bytes - len(s.data)
        if len(chunk) > room:
            chunk = chunk[:max(room, 0)]
            s.truncated = True
            self.stop(StopReason.OUTPUT)
        s.data += chunk
        if chunk and self.on_chunk is not None:
            self.on_chunk(OutputChunk(stream, chunk))

    def full(self, stream: str) -> bool:
        return self.streams[stream].truncated

    async def _limits(self) -> None:
        """The CPU time and memory stall, sampled while the program runs."""
        cpu, stall = self.scope.cpu_seconds, self.scope.stall
        while cpu is not None or stall is not None:
            await asyncio.sleep(CPU_POLL_S)
            used = cpu() if cpu is not None else None
            if used is not None and used - self.scope.cpu_base_s > self.cpu_time_s:
                self.stop(StopReason.CPU_TIME)
                return
            if stall is not None and stall.stalled():
                self.stop(StopReason.MEMORY)
                return

    async def run(self, ended: Callable[[], Awaitable[object]], start: float, *,
                  after_kill_s: float | None = None) -> bool:
        """Wait for the program's end (``ended()``, awaited again after a kill) within the wall time counted
        from ``start`` (time.monotonic()), watching CPU and memory meanwhile. After a wall-time kill, the end
        is awaited ``after_kill_s`` more (None: as long as it takes; TimeoutError past it). A cancelled
        caller kills the execution (``CANCELLED``). True when the program ended within its wall time."""
        watcher = asyncio.create_task(self._limits())
        try:
            left = self.wall_time_s - (time.monotonic() - start)
            try:
                await asyncio.wait_for(ended(), max(left, 0.001))
                return True
            except TimeoutError:
                self.stop(StopReason.WALL_TIME)
            await asyncio.wait_for(ended(), after_kill_s)
            return False
        except asyncio.CancelledError:
            self.stop(StopReason.CANCELLED)
            raise
        finally:
            watcher.cancel()

    def outcome(self, exit_code: int | None, sig: int | None, *, wall_time_s: float, cpu_time_s: float | None,
                max_rss_mb: float | None, oom_killed: bool = False) -> ProcessOutcome:
        """The execution's outcome, its stop reason decided by ``stop_reason``."""
        out, err = self.streams["stdout"], self.streams["stderr"]
        return ProcessOutcome(
            exit_code=exit_code, signal=sig, stdout=bytes(out.data), stderr=bytes(err.data),
            stdout_truncated=out.truncated, stderr_truncated=err.truncated, wall_time_s=wall_time_s,
            cpu_time_s=cpu_time_s, max_rss_mb=max_rss_mb,
            stopped_by=stop_reason(self.stopped_by, sig, cpu_time_s, self.cpu_time_s, oom_killed))


class FdReaders:
    """A program's output pipes, read from the event loop (non-blocking) into a ``Watch``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, watch: Watch, streams: dict[int, str]) -> None:
        self.loop, self.watch, self.streams = loop, watch, streams
        self.eofs = {fd: asyncio.Event() for fd in streams}
        for fd in streams:
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.loop.remove_reader(fd)
            self.eofs[fd].set()
            return
        self.watch.add(self.streams[fd], chunk)

    async def all_eof(self, timeout_s: float) -> None:
        """Until every pipe is at its end, or ``timeout_s`` (a descendant may hold them open)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.eofs.values())), timeout_s)

    def drain(self) -> None:
        """Read whatever is readable now (what the program wrote before its end), up to the cap."""
        for fd, name in self.streams.items():
            while not self.eofs[fd].is_set() and not self.watch.full(name):
                size = len(self.watch.streams[name].data)
                self._readable(fd)
                if len(self.watch.streams[name].data) == size:
                    break

    def close(self) -> None:
        for fd in self.streams:
            self.loop.remove_reader(fd)


def signal_stop(sig: int | None, cpu_time_s: float | None, cpu_limit_s: float) -> StopReason | None:
    """The stop reason a signal that ended the program stands for, if execbox measured it: SIGXCPU is the
    CPU-time rlimit firing only once the CPU time used (the cgroup's, or the reaped tree's) reached the limit
    (the rlimit is set above it). A program can send SIGXCPU to itself, its group or its parent after no CPU
    at all: that is a runtime error ("killed by signal 24"), never a timeout. Unmeasured: not a timeout."""
    if sig == signal.SIGXCPU and cpu_time_s is not None and cpu_time_s >= cpu_limit_s:
        return StopReason.CPU_TIME
    return None


def stop_reason(stopped_by: StopReason | None, sig: int | None, cpu_time_s: float | None, cpu_limit_s: float,
                oom_killed: bool = False) -> StopReason | None:
    """Why the program stopped: execbox's own kill first, then the kernel's OOM kill (its counters), then
    the CPU-time rlimit as measured (``signal_stop``); None when it ended by itself."""
    if stopped_by is not None:
        return stopped_by
    if oom_killed:
        return StopReason.MEMORY
    return signal_stop(sig, cpu_time_s, cpu_limit_s)


def exit_of_code(code: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from a launcher's or shell's exit code: negative (Popen) or 128+N (bubblewrap, a
    shell, docker) is a death by signal N. (So a program's own ``exit(137)`` reads as SIGKILL: SECURITY.md.)"""
    if code < 0:
        return None, -code
    if 128 < code < 128 + 32:
        return None, code - 128
    return code, None


def exit_of_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal) from a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None
