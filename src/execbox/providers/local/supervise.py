"""Run one process to its end under limits, from asyncio: stream its output with a cap, kill on wall time,
CPU time or output flood, and report what happened. Knows nothing of bubblewrap or languages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from execbox.providers.base import ProcessOutcome, StopReason
from execbox.providers.local.cgroups import Cgroup

READ_CHUNK = 65536
CPU_POLL_S = 0.05
# After the process exits, pipes still open (a descendant holding them) are given this long, then closed.
PIPE_GRACE_S = 0.2


@dataclass
class _Stream:
    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    eof: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Launch:
    argv: Sequence[str]
    env: dict[str, str]
    stdin: bytes
    output_bytes: int
    wall_time_s: float
    cpu_time_s: float
    pass_fds: tuple[int, ...] = ()


async def supervise(launch: Launch, cgroup: Cgroup | None,
                    after_spawn: Callable[[], None] | None = None) -> tuple[ProcessOutcome, int]:
    """Run ``launch``; return the outcome and the raw exit code. ``after_spawn`` runs once the child exists
    (to close the parent's copies of fds passed to it)."""
    loop = asyncio.get_running_loop()
    stdin_fd = os.memfd_create("execbox-stdin")
    try:
        if launch.stdin:
            os.write(stdin_fd, launch.stdin)
        # the program gets a read-only descriptor of its own (not the writable memfd)
        readonly = os.open(f"/proc/self/fd/{stdin_fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(stdin_fd)
        stdin_fd = readonly
        start = time.monotonic()
        proc = subprocess.Popen(
            list(launch.argv), stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=launch.env, pass_fds=launch.pass_fds, start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(stdin_fd)
        if after_spawn is not None:
            after_spawn()
    assert proc.stdout is not None and proc.stderr is not None
    stopped_by: StopReason | None = None

    def kill(reason: StopReason) -> None:
        """Once: later calls (more output past the cap, a late CPU check) find the tree already dead."""
        nonlocal stopped_by
        if stopped_by is not None:
            return
        stopped_by = reason
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()

    streams = {proc.stdout.fileno(): _Stream(launch.output_bytes), proc.stderr.fileno(): _Stream(launch.output_bytes)}

    def on_readable(fd: int) -> None:
        s = streams[fd]
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            loop.remove_reader(fd)
            s.eof.set()
            return
        room = s.cap - len(s.data)
        if len(chunk) > room:
            s.data += chunk[:max(room, 0)]
            s.truncated = True
            kill(StopReason.OUTPUT)
        else:
            s.data += chunk

    for fd in streams:
        os.set_blocking(fd, False)
        loop.add_reader(fd, on_readable, fd)

    exited = asyncio.Event()
    pidfd = os.pidfd_open(proc.pid)
    loop.add_reader(pidfd, exited.set)

    async def watch_cpu() -> None:
        while cgroup is not None:
            await asyncio.sleep(CPU_POLL_S)
            used = cgroup.cpu_time_s()
            if used is not None and used > launch.cpu_time_s:
                kill(StopReason.CPU_TIME)
                return

    cpu_task = asyncio.create_task(watch_cpu())
    try:
        try:
            await asyncio.wait_for(exited.wait(), launch.wall_time_s)
        except TimeoutError:
            kill(StopReason.WALL_TIME)
            await exited.wait()
        wall = time.monotonic() - start
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.eof.wait() for s in streams.values())), PIPE_GRACE_S)
    except asyncio.CancelledError:
        kill(StopReason.CANCELLED)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        raise
    finally:
        cpu_task.cancel()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        for fd in streams:
            loop.remove_reader(fd)
        proc.stdout.close()
        proc.stderr.close()

    cpu = cgroup.cpu_time_s() if cgroup else None
    if cpu is None:
        cpu = rusage.ru_utime + rusage.ru_stime
    peak = cgroup.peak_memory_mb() if cgroup else rusage.ru_maxrss / 1024
    if stopped_by is None and cgroup is not None and cgroup.oom_killed():
        stopped_by = StopReason.MEMORY
    code = proc.returncode
    exit_code: int | None = code
    sig: int | None = None
    if code < 0:
        exit_code, sig = None, -code
    elif 128 < code < 128 + 32:
        # bubblewrap reports a child killed by signal N as exit code 128+N, as shells do.
        exit_code, sig = None, code - 128
    if sig == signal.SIGXCPU and stopped_by is None:
        stopped_by = StopReason.CPU_TIME
    out_s, err_s = list(streams.values())
    return ProcessOutcome(
        exit_code=exit_code, signal=sig, stdout=bytes(out_s.data), stderr=bytes(err_s.data),
        stdout_truncated=out_s.truncated, stderr_truncated=err_s.truncated, wall_time_s=wall,
        cpu_time_s=cpu, max_rss_mb=peak, stopped_by=stopped_by,
    ), code
