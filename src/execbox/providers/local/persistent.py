"""Persistent local instances: one long-lived bubblewrap sandbox in which many execs run (issue 5).

The sandbox is the one-shot sandbox (same namespaces, mounts, seccomp, dedicated uid, size-capped tmpfs
workdir), started once with execbox's agent (agent.c) as its pid 1. Each exec is a message to the agent,
with the exec's stdin, stdout and stderr and the exec's own cgroup (a child of the sandbox's cgroup) as
descriptors of its cgroup.procs files, opened here; the agent forks a child inside the sandbox, which joins
that cgroup before it executes the program. So:

- files and background processes persist between execs (same namespaces, same workdir);
- every exec has its own wall/CPU/memory/pids limits and output cap; a runaway exec's whole process tree
  (its cgroup) is killed, the sandbox and other execs' processes live on;
- the sandbox's cgroup caps everything alive in it at once (``InstanceSpec.memory_mb``/``pids``);
- the host touches the workdir only through ``files.Workdir`` (openat2 beneath a held descriptor), safe
  against symlinks the program plants or swaps at any time.

A process an exec leaves running in the background stays in that exec's cgroup (its memory and pids
limits still apply; its CPU time is then bounded by RLIMIT_CPU only) and keeps running until it ends or
the sandbox is closed. Its stdout/stderr were the exec's pipes: they are closed once the exec has ended
(after a short grace), so it should redirect its output to a file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from execbox.errors import IsolationError, RequestError, SandboxError
from execbox.pool import PrestartPool
from execbox.providers.base import (
    ExecSpec,
    InstanceSpec,
    LiveInput,
    OutputChunk,
    ProcessOutcome,
    StopReason,
    pump_live,
    to_thread_to_end,
)
from execbox.providers.host import cgroups, files
from execbox.providers.local import bwrap
from execbox.providers.local.host import (
    IDLE_MEMORY_MB,
    IDLE_PIDS,
    READY_TIMEOUT_S,
    WRITE_OR_SPAWN,
    Host,
    InstanceDir,
    build_binary,
    sandbox_env,
)
from execbox.providers.local.supervise import stdin_fd
from execbox.providers.supervisor import PIPE_GRACE_S, FdReaders, Scope, Watch, exit_of_status

REPORT_TIMEOUT_S = 10.0  # after a kill, the agent's report of the exec's end
REPORT_SIZE = 13  # kind (1), exec id (u64), wait status or errno (i32)
AGENT_PIDS = 3  # the launcher, bubblewrap and the agent, in the sandbox's cgroup besides the programs
# (each exec's own cgroup holds its program's tree only: its pids.max is exactly the exec's pids)


def _exec_message(exec_id: int, spec: ExecSpec, env: Mapping[str, str], cwd: str, nproc: int) -> bytes:
    """The agent's exec message (see agent.c)."""
    env = {**env, "PWD": cwd}
    strings = [*spec.argv, *(f"{k}={v}" for k, v in env.items()), cwd]
    if not spec.argv or any("\0" in x for x in strings) or any("=" in k or not k for k in env):
        raise RequestError("empty argv, embedded null byte or bad variable name in the argv or environment")
    mb = 1024 * 1024
    cpu = int(spec.cpu_time_s) + 1
    header = [exec_id, cpu, cpu + 1, spec.file_size_mb * mb, spec.open_files, nproc, 0, len(spec.argv),
              len(env)]
    body = struct.pack("<9Q", *header) + b"".join(x.encode() + b"\0" for x in strings)
    return struct.pack("<Q", len(body)) + body


class _Reports:
    """Reads the agent's reports on the control socket (a thread: independent of any event loop) and
    resolves each exec's future with its wait status; when the agent is gone, every pending exec fails."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pending: dict[int, concurrent.futures.Future[tuple[str, int]]] = {}
        self.lock = threading.Lock()
        self.dead = False
        self.thread = threading.Thread(target=self._run, name="execbox-agent-reports", daemon=True)
        self.thread.start()

    def expect(self, exec_id: int) -> concurrent.futures.Future[tuple[str, int]]:
        fut: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        with self.lock:
            if self.dead:
                fut.set_result(("D", 0))
            else:
                self.pending[exec_id] = fut
        return fut

    def _run(self) -> None:
        buf = b""
        try:
            while chunk := self.control.recv(4096):
                buf += chunk
                while len(buf) >= REPORT_SIZE:
                    kind = chr(buf[0])
                    exec_id, value = struct.unpack("<Qi", buf[1:REPORT_SIZE])
                    buf = buf[REPORT_SIZE:]
                    with self.lock:
                        fut = self.pending.pop(exec_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result((kind, value))
        except OSError:
            pass
        with self.lock:
            self.dead = True
            pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result(("D", 0))  # the agent (the sandbox) is gone


class PersistentInstance(files.WorkdirInstance):
    """A long-lived local sandbox; start it with ``start()``."""

    supports_live = True

    def __init__(self, host: Host, spec: InstanceSpec, wd: InstanceDir) -> None:
        self.host, self.spec, self.wd = host, spec, wd
        self.uid, self.name = wd.uid, wd.name
        self.work = wd.path / "work"
        self.cgroup: cgroups.Cgroup | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.reports: _Reports | None = None
        self.workdir: files.Workdir | None = None
        self._ids = itertools.count(1)
        self._send = threading.Lock()
        self._closed = False
        # groups of finished execs that still held (background) processes: removed once empty
        self._exec_groups: set[str] = set()

    # ------------------------------------------------------------------ life
    @classmethod
    async def start(cls, host: Host, spec: InstanceSpec,
                    pool: PrestartPool[PersistentInstance] | None = None) -> PersistentInstance:
        """A sandbox for ``spec``: a pre-started one from ``pool`` (given when the spec matches its sandboxes)
        if it takes the spec's caps, else a new one."""
        if not (host.root and host.cgroups.usable and host.slots is not None):
            raise IsolationError("persistent local sandboxes need root and cgroups (each exec gets its own "
                                 "cgroup); refusing to run them weaker")
        if problem := files.available():
            raise IsolationError(f"persistent local sandboxes need {problem}")
        if pool is not None:
            while (inst := pool.take()) is not None:  # a pre-started one: the request's caps, then it is its
                assert inst.cgroup is not None
                if inst.proc is not None and inst.proc.poll() is None and inst.cgroup.set_limits(
                        spec.memory_mb, spec.pids + AGENT_PIDS):
                    inst.spec = spec
                    inst.reports = _Reports(inst.control)  # type: ignore[arg-type]
                    return inst
                pool.defer(inst._teardown)  # it died, or its usage is above the caps: never handed out
        uid = await host.slots.acquire()
        inst = cls(host, spec, host.workdir(uid, spec.disk_mb))
        try:
            inst._spawn()
            assert inst.control is not None
            loop = asyncio.get_running_loop()
            inst.control.setblocking(False)
            try:
                ready = await asyncio.wait_for(loop.sock_recv(inst.control, 1), READY_TIMEOUT_S)
            except (TimeoutError, OSError):
                ready = b""
            inst.control.setblocking(True)
            if ready != b"R":
                await asyncio.to_thread(inst._failed_to_start)
            inst.reports = _Reports(inst.control)
        except BaseException:
            await asyncio.shield(inst.close())
            raise
        return inst

    @classmethod
    def prestart(cls, host: Host, disk_mb: int) -> PersistentInstance | None:
        """A sandbox started before it is asked for (the provider's sandbox pool, on its worker thread): up,
        its agent ready, idle under tight caps (IDLE_MEMORY_MB, IDLE_PIDS) until ``start`` hands it out.
        None when every uid is busy."""
        assert host.slots is not None
        uid = host.slots.try_acquire()
        if uid is None:
            return None
        inst = cls(host, InstanceSpec(disk_mb=disk_mb, persistent=True, memory_mb=IDLE_MEMORY_MB, pids=IDLE_PIDS),
                   host.workdir(uid, disk_mb))
        try:
            inst._spawn()
            assert inst.control is not None
            inst.control.settimeout(READY_TIMEOUT_S)
            try:
                ready = inst.control.recv(1)
            except (TimeoutError, OSError):
                ready = b""
            inst.control.settimeout(None)
            if ready != b"R":
                inst._failed_to_start()
        except BaseException:
            inst._closed = True
            inst._teardown()
            raise
        return inst

    def _failed_to_start(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        err = self.proc.stderr.read().decode(errors="replace").strip()
        raise SandboxError(f"the persistent sandbox did not come up (exit {self.proc.returncode}): {err}")

    def _spawn(self) -> None:
        """The sandbox's cgroup, then launcher -> bubblewrap -> agent; the agent's 'R' is read by the caller."""
        p = self.host
        agent = build_binary(p.runtime, "agent.c", "execbox-agent", 0o755)
        self.workdir = files.Workdir(str(self.work), self.uid)
        try:
            self.cgroup = cgroups.Cgroup(p.cgroups, f"{self.name}-s", memory_mb=self.spec.memory_mb,
                                         pids=self.spec.pids + AGENT_PIDS)
        except OSError as e:
            raise IsolationError(f"cannot create the sandbox's cgroup: {e}") from e
        seccomp_fd = os.open(p.seccomp_path, os.O_RDONLY | os.O_CLOEXEC)
        agent_fd = os.open(agent, os.O_RDONLY | os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control = ours
        try:
            sandbox = bwrap.with_waiter(p.sandbox_spec(self.wd, self.spec.network, seccomp_fd, (), {}, "."),
                                        agent_fd, theirs.fileno())
            argv = bwrap.build_argv(sandbox, p.bwrap)
            argv[:0] = p.prestart_launcher_argv(self.uid, self.cgroup.procs_files)
            with WRITE_OR_SPAWN:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.PIPE, env={},
                                             pass_fds=(seccomp_fd, agent_fd, theirs.fileno()),
                                             start_new_session=True, close_fds=True)
        finally:
            theirs.close()
            os.close(seccomp_fd)
            os.close(agent_fd)

    async def close(self) -> None:
        """Kill every process of the sandbox and remove every trace (cgroups, workdir, uid). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await to_thread_to_end(self._teardown)  # (to the end whatever cancels the caller)

    def _teardown(self) -> None:
        if self.control is not None:
            with contextlib.suppress(OSError):
                self.control.shutdown(socket.SHUT_RDWR)  # the agent sees EOF; the reader thread ends
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        gone = self.cgroup.remove() if self.cgroup is not None else True
        if self.proc is not None:
            with contextlib.suppress(ChildProcessError):
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        if self.reports is not None:
            self.reports.thread.join(5)
        if self.control is not None:
            self.control.close()
        if self.workdir is not None:
            self.workdir.close()
        self.host.release(self.wd, kill_uid=not gone or self.proc is not None)

    # ------------------------------------------------------------------ files
    def _files(self) -> files.Workdir:
        if self._closed or self.workdir is None:
            raise SandboxError("the sandbox is closed")
        return self.workdir

    def _sweep_groups(self) -> None:
        """Remove finished execs' groups whose background processes have all ended (never kills anything;
        never touches a running exec's group, which is empty until its child joins it)."""
        assert self.cgroup is not None
        for name in list(self._exec_groups):
            if all(_rmdir(d / name) for d in self.cgroup.dirs.values()):
                self._exec_groups.discard(name)

    async def _run(self, spec: ExecSpec, on_chunk: Callable[[OutputChunk], None] | None) -> ProcessOutcome:
        if self._closed or self.reports is None or self.control is None or self.cgroup is None:
            raise SandboxError("the sandbox is closed")
        if self.reports.dead:
            raise SandboxError("the sandbox has died")
        exec_id = next(self._ids)
        cwd = os.path.normpath(os.path.join(bwrap.WORKDIR, spec.cwd))
        env = sandbox_env(spec.env)
        # RLIMIT_NPROC counts every process of the sandbox's uid in its user namespace (the agent, every
        # exec's, background ones too): the sandbox's cap, not the exec's (its cgroup holds that exactly)
        message = _exec_message(exec_id, spec, env, cwd, self.spec.pids + 1)
        self._sweep_groups()
        group = f"e{exec_id}"
        try:
            cg = cgroups.Cgroup(self.host.cgroups, f"{self.name}-s/{group}",
                                memory_mb=min(spec.memory_mb, self.spec.memory_mb),
                                pids=min(spec.pids, self.spec.pids))
        except OSError as e:
            raise IsolationError(f"cannot create the exec's cgroup: {e}") from e
        loop = asyncio.get_running_loop()
        fds: list[int] = []  # ours to close once the agent has its copies
        out_r = err_r = live_w = -1
        try:
            if spec.live is None:
                fds.append(stdin_fd(spec.stdin))
            else:  # a pipe the client's input is pumped into while the exec runs
                live_r, live_w = os.pipe2(os.O_CLOEXEC)
                fds.append(live_r)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds.append(out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds.append(err_w)
            for procs in cg.procs_files:
                fds.append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
            report = self.reports.expect(exec_id)
            with self._send:
                start = time.monotonic()
                socket.send_fds(self.control, [message[:8]], fds)
                self.control.sendall(message[8:])
        except BaseException:
            for fd in (out_r, err_r, live_w):
                if fd >= 0:
                    os.close(fd)
            cg.remove()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        pump = None if spec.live is None else asyncio.create_task(_pump_live(spec.live, live_w, cg))
        try:
            return await self._supervise(spec, cg, start, report, out_r, err_r, on_chunk, loop)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await pump
            os.close(out_r)
            os.close(err_r)
            # nothing left in the background: the group goes now; else once its processes have ended
            if cg.pids() or not cg.remove():
                self._exec_groups.add(group)

    async def _supervise(self, spec: ExecSpec, cg: cgroups.Cgroup, start: float,
                         report: concurrent.futures.Future[tuple[str, int]], out_r: int, err_r: int,
                         on_chunk: Callable[[OutputChunk], None] | None,
                         loop: asyncio.AbstractEventLoop) -> ProcessOutcome:
        assert self.cgroup is not None
        ended = asyncio.wrap_future(report)
        sandbox_ooms = _oom_count(self.cgroup)
        # 2. its output, its limits, its end (supervisor.Watch); a kill takes the exec's group only
        w = Watch(Scope(lambda: cg.kill_all(wait=False), cg.cpu_time_s, cg.memory_stall()),
                  output_bytes=spec.output_bytes, wall_time_s=spec.wall_time_s, cpu_time_s=spec.cpu_time_s,
                  on_chunk=on_chunk)
        readers = FdReaders(loop, w, {out_r: "stdout", err_r: "stderr"})
        try:
            await w.run(lambda: asyncio.shield(ended), start, after_kill_s=REPORT_TIMEOUT_S)
            wall = time.monotonic() - start
            # what it wrote is in the pipes; background processes may hold them open: a short grace
            await readers.all_eof(0.01 if not cg.pids() else PIPE_GRACE_S)
            readers.drain()  # whatever is left readable now
        except BaseException:
            w.stop(StopReason.CANCELLED)
            raise
        finally:
            readers.close()
        end, status = ended.result()
        if end == "D":
            raise SandboxError("the sandbox died during the exec")
        if end == "E":
            raise SandboxError(f"the sandbox could not start the exec: {os.strerror(status)}")
        stderr = w.streams["stderr"].data
        if status == 126 << 8 and stderr.startswith(b"execbox: joining the exec's cgroup"):
            raise IsolationError(f"the exec could not join its cgroup: {bytes(stderr).decode(errors='replace')}")
        exit_code, sig = exit_of_status(status)
        return w.outcome(exit_code, sig, wall_time_s=wall, cpu_time_s=cg.cpu_time_s(), max_rss_mb=cg.peak_memory_mb(),
                         oom_killed=cg.oom_killed() or _oom_count(self.cgroup) > sandbox_ooms)


async def _pump_live(live: LiveInput, fd: int, cg: cgroups.Cgroup) -> None:
    """Feed a client's input to a running exec (base.pump_live): stdin into the pipe ``fd`` (ours; closed at
    its end, so the program reads EOF), signals to the processes of the exec's cgroup. Never blocks the
    loop: a program that does not read stalls the writes only."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    open_fd = [fd]

    async def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)

    def end() -> None:
        if open_fd:
            os.close(open_fd.pop())

    try:
        await pump_live(live, write, end, cg.signal)
    finally:
        end()


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _oom_count(cg: cgroups.Cgroup) -> int:
    f = ("memory", "memory.oom_control") if cg.version == 1 else ("", "memory.events")
    for line in cgroups._read(cg.dirs[f[0]] / f[1]).splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


__all__ = ["PersistentInstance"]
