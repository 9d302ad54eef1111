"""Run one process to its end under limits, from asyncio: stream its output with a cap, kill on wall time,
CPU time or output flood, and report what happened. Knows nothing of bubblewrap or languages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from execbox.providers.base import ProcessOutcome, StopReason
from execbox.providers.host.cgroups import Cgroup
from execbox.providers.supervisor import PIPE_GRACE_S, FdReaders, Scope, Watch, exit_of_code

STATUS_SIZE = 4  # a C int: the waiter's report of the program's wait status


@dataclass(frozen=True)
class Launch:
    argv: Sequence[str]
    env: dict[str, str]
    stdin: bytes
    output_bytes: int
    wall_time_s: float
    cpu_time_s: float
    pass_fds: tuple[int, ...] = ()


def stdin_fd(data: bytes) -> int:
    """A read-only descriptor of a memfd holding ``data`` (the program never gets the writable one)."""
    fd = os.memfd_create("execbox-stdin")
    try:
        if data:
            os.write(fd, data)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


async def supervise(launch: Launch, cgroup: Cgroup | None,
                    after_spawn: Callable[[], None] | None = None) -> tuple[ProcessOutcome, int]:
    """Run ``launch``; return the outcome and the raw exit code. ``after_spawn`` runs once the child exists
    (to close the parent's copies of fds passed to it)."""
    stdin = -1
    try:
        stdin = stdin_fd(launch.stdin)
        start = time.monotonic()
        proc = subprocess.Popen(
            list(launch.argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=launch.env, pass_fds=launch.pass_fds, start_new_session=True,
            close_fds=True,
        )
    finally:
        if stdin >= 0:
            os.close(stdin)
        if after_spawn is not None:
            after_spawn()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        outcome, proc.returncode = await watch(
            proc.pid, proc.stdout.fileno(), proc.stderr.fileno(), cgroup, start,
            output_bytes=launch.output_bytes, wall_time_s=launch.wall_time_s, cpu_time_s=launch.cpu_time_s)
        return outcome, proc.returncode
    finally:
        proc.stdout.close()
        proc.stderr.close()


@dataclass
class Waiter:
    """A pre-started sandbox's waiter (waiter.c): it reports on ``control`` how the program ended, sooner
    than the sandbox itself exits. ``report`` collects what it wrote; ``ended`` is the program's wait status
    once reported (then the launcher has not been reaped: the caller's teardown does it)."""

    control: socket.socket
    report: bytearray = field(default_factory=bytearray)
    ended: int | None = None


async def watch(pid: int, stdout: int, stderr: int, cgroup: Cgroup | None, start: float, *,
                output_bytes: int, wall_time_s: float, cpu_time_s: float,
                cpu_base_s: float = 0.0, waiter: Waiter | None = None) -> tuple[ProcessOutcome, int]:
    """Supervise a started child ``pid`` (execbox's launcher) whose output arrives on ``stdout``/``stderr``
    (the caller closes them), from ``start`` (time.monotonic()) on. ``cpu_base_s``: what the cgroup had
    used before the program was released (a pre-started sandbox), not counted against the program.
    With a ``waiter``, the run ends when it reports the program's end (everything left is then killed).
    The limits and the stop reason are supervisor.Watch's; this feeds it the pipes and the launcher's end."""
    loop = asyncio.get_running_loop()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()

    scope = Scope(kill, cgroup.cpu_time_s if cgroup is not None else None,
                  cgroup.memory_stall() if cgroup is not None else None, cpu_base_s)
    w = Watch(scope, output_bytes=output_bytes, wall_time_s=wall_time_s, cpu_time_s=cpu_time_s)
    readers = FdReaders(loop, w, {stdout: "stdout", stderr: "stderr"})

    exited = asyncio.Event()  # the launcher exited, or the waiter reported the program's end
    launcher_exited = asyncio.Event()
    pidfd = os.pidfd_open(pid)

    def on_launcher_exit() -> None:
        launcher_exited.set()
        exited.set()

    loop.add_reader(pidfd, on_launcher_exit)

    def on_report() -> None:
        assert waiter is not None
        try:
            chunk = waiter.control.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the waiter is gone (an error it reported, or the program killed it)
            loop.remove_reader(waiter.control.fileno())
            return
        waiter.report += chunk
        r = waiter.report
        if r[:1] == b"X" and len(r) == 1 + STATUS_SIZE:  # exactly a status: anything else is not one
            waiter.ended = int.from_bytes(r[1:], sys.byteorder, signed=True)
            exited.set()

    if waiter is not None:
        waiter.control.setblocking(False)
        loop.add_reader(waiter.control.fileno(), on_report)

    rusage = None
    try:
        await w.run(exited.wait, start)
        wall = time.monotonic() - start
        if waiter is not None and waiter.ended is not None and w.stopped_by is None:
            # The program has ended and what it wrote is in the pipes. The sandbox's own exit (its
            # namespaces torn down, milliseconds) is not waited for: whatever is left of it is killed now,
            # and the caller's teardown reaps the launcher.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if cgroup is not None:
                cgroup.kill_all(wait=False)
            status = waiter.ended
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            readers.drain()
        else:
            await launcher_exited.wait()
            _, status, rusage = os.wait4(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            await readers.all_eof(PIPE_GRACE_S)
    except asyncio.CancelledError:
        w.stop(StopReason.CANCELLED)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise
    finally:
        if waiter is not None:
            loop.remove_reader(waiter.control.fileno())
        loop.remove_reader(pidfd)
        os.close(pidfd)
        readers.close()

    cpu = cgroup.cpu_time_s() if cgroup else None
    if cpu is not None:
        cpu = max(cpu - cpu_base_s, 0.0)
    elif rusage is not None:
        cpu = rusage.ru_utime + rusage.ru_stime
    peak = cgroup.peak_memory_mb() if cgroup else rusage.ru_maxrss / 1024 if rusage else None
    exit_code, sig = exit_of_code(code)
    return w.outcome(exit_code, sig, wall_time_s=wall, cpu_time_s=cpu, max_rss_mb=peak,
                     oom_killed=cgroup is not None and cgroup.oom_killed()), code
