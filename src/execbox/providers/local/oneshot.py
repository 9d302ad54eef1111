"""One-shot local instances: a tmpfs workdir with a dedicated uid, each exec one bubblewrap sandbox over it in
its own cgroup, supervised by supervise.py; and the warm pool's prepared sandboxes (``prepare``: started
before their request, execbox's waiter inside, blocked until the request's program is released; see
waiter.c). The host side (uids, workdirs, launcher) is host.py's ``Host``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from execbox.errors import IsolationError, RequestError, SandboxError
from execbox.providers.base import ExecSpec, Instance, InstanceSpec, ProcessOutcome
from execbox.providers.host import cgroups
from execbox.providers.local import bwrap
from execbox.providers.local.host import (
    IDLE_MEMORY_MB,
    IDLE_PIDS,
    READY_TIMEOUT_S,
    WRITE_OR_SPAWN,
    Host,
    InstanceDir,
    sandbox_env,
)
from execbox.providers.local.supervise import Launch, Waiter, stdin_fd, supervise, watch

# execbox's own processes in a one-shot sandbox's cgroup while the program runs: the launcher, bubblewrap and
# the pid namespace's init (bubblewrap's, or execbox's waiter). None of them can be signalled by the program
# (the first two are outside its pid namespace, the init ignores it), so the cgroup's pids.max is the
# request's pids plus exactly these: the program and everything it starts get exactly ``pids``.
SANDBOX_PIDS = 3
# Of those, the ones RLIMIT_NPROC counts with the program (in its user namespace, under its uid): the init.
# The launcher sets RLIMIT_NPROC before bubblewrap makes that namespace, whose processes count against the
# launcher's limit too, with the launcher and bubblewrap themselves: cold path pids + SANDBOX_PIDS.
NAMESPACE_PIDS = 1


@dataclass
class Prepared:
    """A sandbox started before its request: bubblewrap is up, execbox's waiter blocks on ``control``."""

    cgroup: cgroups.Cgroup
    proc: subprocess.Popen[bytes]
    control: socket.socket
    stdout: int
    stderr: int

    def close_fds(self) -> None:
        self.control.close()
        for fd in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                os.close(fd)

    def kill(self) -> bool:
        """Kill the sandbox (if it still runs), reap its launcher, close our ends. True when its cgroup is
        gone (nothing of it can be left)."""
        with contextlib.suppress(ProcessLookupError):
            if self.proc.returncode is None:
                os.kill(self.proc.pid, signal.SIGKILL)
        gone = self.cgroup.remove()
        if self.proc.returncode is None:
            with contextlib.suppress(ChildProcessError):
                self.proc.wait()
        self.close_fds()
        return gone


def _exec_message(spec: ExecSpec, env: Mapping[str, str], cwd: str, nproc: int) -> bytes:
    """The waiter's exec message (see waiter.c)."""
    env = {**env, "PWD": cwd}  # as bubblewrap sets it after --chdir
    strings = [*spec.argv, *(f"{k}={v}" for k, v in env.items()), cwd]
    if any("\0" in x for x in strings) or any("=" in k or not k for k in env):
        raise ValueError("embedded null byte or bad variable name in the program's argv or environment")
    mb = 1024 * 1024
    cpu = int(spec.cpu_time_s) + 1
    header = [cpu, cpu + 1, spec.file_size_mb * mb, spec.open_files, nproc, 0, len(spec.argv), len(env)]
    body = struct.pack("<8Q", *header) + b"".join(x.encode() + b"\0" for x in strings)
    return struct.pack("<Q", len(body)) + body


def prepare(host: Host, waiter: str, disk_mb: int) -> InstanceDir | None:
    """A sandbox set up before its request: uid, workdir, cgroup, launcher, bubblewrap, seccomp, and
    execbox's waiter inside, blocked until the request's program is released (see waiter.c)."""
    assert host.slots is not None
    uid = host.slots.try_acquire()
    if uid is None:
        return None  # every uid is busy: try again later
    wd = host.workdir(uid, disk_mb)
    cg: cgroups.Cgroup | None = None
    proc: subprocess.Popen[bytes] | None = None
    ours = theirs = None
    seccomp_fd = waiter_fd = -1
    try:
        cg = cgroups.Cgroup(host.cgroups, f"{wd.name}-1", memory_mb=IDLE_MEMORY_MB, pids=IDLE_PIDS)
        seccomp_fd = os.open(host.seccomp_path, os.O_RDONLY)
        waiter_fd = os.open(waiter, os.O_RDONLY)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = bwrap.with_waiter(host.sandbox_spec(wd, False, seccomp_fd, (), {}, "."), waiter_fd,
                                 theirs.fileno())
        argv = bwrap.build_argv(spec, host.bwrap)
        argv[:0] = host.prestart_launcher_argv(uid, cg.procs_files)
        with WRITE_OR_SPAWN:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={},
                                    pass_fds=(seccomp_fd, waiter_fd, theirs.fileno()),
                                    start_new_session=True, close_fds=True)
        theirs.close()
        assert proc.stdout is not None and proc.stderr is not None
        ours.settimeout(READY_TIMEOUT_S)
        try:
            ready = ours.recv(1)
        except TimeoutError:
            ready = b""
        if ready != b"R":
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            err = proc.stderr.read().decode(errors="replace").strip()
            raise SandboxError(f"a pre-started sandbox did not come up (exit {proc.returncode}): {err}")
        pr = Prepared(cg, proc, ours, os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno()))
        proc.stdout.close()
        proc.stderr.close()
        wd.prepared = pr
        return wd
    except BaseException:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for s in (ours, theirs):
            if s is not None:
                s.close()
        gone = cg.remove() if cg is not None else True
        host.release(wd, kill_uid=not gone)
        raise
    finally:
        for fd in (seccomp_fd, waiter_fd):
            if fd >= 0:
                os.close(fd)


def destroy(host: Host, wd: InstanceDir) -> None:
    """A prepared sandbox never handed out: killed, its workdir and uid given back."""
    gone = wd.prepared.kill() if wd.prepared is not None else True
    host.release(wd, kill_uid=not gone)


class LocalInstance(Instance):
    """One-shot instance: each exec a new sandbox over the instance's workdir. ``defer`` runs the teardown
    later, off the result's path (the warm pool's worker), when given."""

    def __init__(self, host: Host, spec: InstanceSpec, wd: InstanceDir,
                 defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.host, self.spec, self.wd, self.defer = host, spec, wd, defer
        self.uid, self.name, self.path = wd.uid, wd.name, wd.path
        self.work = wd.path / "work"
        self._closed = False
        self._execs = 0
        self._used: Prepared | None = None  # the pre-started sandbox that ran, to be reaped by close()
        # Without cgroups, or when a group could not be emptied, processes may outlive an exec: close() then
        # kills everything the instance's uid owns.
        self._leftovers = not host.cgroups.usable

    def _resolve(self, rel: str) -> Path:
        """A workdir path that cannot leave the workdir, even through symlinks the program planted."""
        target = (self.work / rel).resolve()
        if target != self.work and self.work not in target.parents:
            raise SandboxError(f"path {rel!r} leaves the workdir")
        return target

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        for rel, data in files.items():
            parent = self._resolve(os.path.dirname(rel) or ".")
            parent.mkdir(parents=True, exist_ok=True)
            target = self._resolve(rel)
            try:
                with WRITE_OR_SPAWN:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise SandboxError("the files do not fit in the sandbox's disk limit") from e
                raise SandboxError(f"cannot write {rel!r}: {e}") from e
            if self.host.root:
                for p in [target, *target.parents]:
                    if p == self.work:
                        break
                    os.lchown(p, self.uid, self.uid)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        try:
            fd = os.open(self._resolve(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (OSError, SandboxError, RuntimeError, ValueError):  # RuntimeError: a symlink loop it planted
            return None
        with os.fdopen(fd, "rb") as f:
            if not os.path.isfile(f"/proc/self/fd/{fd}"):
                return None
            return f.read(max_bytes)

    def _env(self, spec: ExecSpec) -> dict[str, str]:
        return sandbox_env(spec.env)

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        if self._closed:
            raise SandboxError("instance is closed")
        self._execs += 1
        pr, self.wd.prepared = self.wd.prepared, None
        if pr is not None:  # a pre-started sandbox serves this instance's first exec, and only that one
            outcome = await self._exec_prepared(spec, pr)
            if outcome is not None:
                return outcome
            self._execs += 1  # it was broken (and is gone): a cold sandbox, in a cgroup of its own
        return await self._exec_cold(spec)

    async def _exec_prepared(self, spec: ExecSpec, pr: Prepared) -> ProcessOutcome | None:
        """Release the waiter: the request's cgroup limits first, then its program, rlimits, env and stdin.
        None when the pre-started sandbox died or its cgroup refused the limits (it is then destroyed)."""
        cg = pr.cgroup
        try:
            message = _exec_message(spec, self._env(spec), os.path.normpath(os.path.join(bwrap.WORKDIR, spec.cwd)),
                                    spec.pids + NAMESPACE_PIDS)
        except ValueError:
            pr.kill()
            raise
        if pr.proc.poll() is not None or not cg.set_limits(spec.memory_mb, spec.pids + SANDBOX_PIDS):
            if not pr.kill():
                self._leftovers = True
            return None
        cg.reset_peak()
        cpu_base = cg.cpu_time_s() or 0.0
        stdin = stdin_fd(spec.stdin)
        try:
            start = time.monotonic()
            socket.send_fds(pr.control, [message[:8]], [stdin])
            pr.control.sendall(message[8:])
        except OSError:  # the waiter died meanwhile: the program was never released
            if not pr.kill():
                self._leftovers = True
            return None
        finally:
            os.close(stdin)
        waiter = Waiter(pr.control)
        try:
            outcome, code = await watch(pr.proc.pid, pr.stdout, pr.stderr, cg, start,
                                        output_bytes=spec.output_bytes, wall_time_s=spec.wall_time_s,
                                        cpu_time_s=spec.cpu_time_s, cpu_base_s=cpu_base, waiter=waiter)
            if waiter.ended is None:
                pr.proc.returncode = code  # reaped by watch()
        except BaseException:
            if not pr.kill():
                self._leftovers = True
            raise
        # What is left of the sandbox (killed already) is reaped and its cgroup removed by close(), on the
        # pool's worker: the result does not wait for the namespaces to be torn down.
        self._used = pr
        report = b""
        if code == 126 and waiter.ended is None:  # the waiter may have said why before it exited
            with contextlib.suppress(OSError):
                waiter.report += pr.control.recv(4096)
            report = bytes(waiter.report)
        if report[:1].isdigit():
            err, _, text = report.decode(errors="replace").partition(" ")
            if err == str(errno.E2BIG):
                raise RequestError(f"cannot start the program: {os.strerror(errno.E2BIG)} (its arguments and "
                                   "environment are too large)")
            raise SandboxError(f"the pre-started sandbox could not run the program: {text}")
        return outcome

    async def _exec_cold(self, spec: ExecSpec) -> ProcessOutcome:
        p = self.host
        cg = None
        if p.cgroups.usable:
            try:
                cg = cgroups.Cgroup(p.cgroups, f"{self.name}-{self._execs}", memory_mb=spec.memory_mb,
                                    pids=spec.pids + SANDBOX_PIDS)
            except OSError as e:
                raise IsolationError(f"cannot create the execution's cgroup: {e}") from e
        seccomp_fd = status_r = status_w = -1

        def close_status_w() -> None:
            # supervise() calls this once the child exists *or* once spawning it failed; the write end must
            # be closed exactly once (a second close could hit an fd reused meanwhile, and its EBADF used to
            # mask the real error and skip cg.remove(), leaking the cgroup: see tests/escapes, huge argv).
            nonlocal status_w
            if status_w >= 0:
                os.close(status_w)
                status_w = -1

        try:
            seccomp_fd = os.open(p.seccomp_path, os.O_RDONLY)  # a fresh open file: its offset is ours alone
            status_r, status_w = os.pipe()
            sandbox = p.sandbox_spec(self.wd, self.spec.network, seccomp_fd, spec.argv, self._env(spec),
                                      spec.cwd)
            argv = bwrap.build_argv(sandbox, p.bwrap)
            argv[1:1] = ["--json-status-fd", str(status_w)]
            mb = 1024 * 1024
            address_space = 0 if cg else spec.memory_mb * mb  # no cgroup: the rlimit is the fallback
            argv[:0] = p.launcher_argv(self.uid, int(spec.cpu_time_s) + 1, spec.file_size_mb * mb,
                                        spec.open_files, spec.pids + SANDBOX_PIDS, address_space,
                                        cg.procs_files if cg else [])
            launch = Launch(argv=argv, env={}, stdin=spec.stdin, output_bytes=spec.output_bytes,
                            wall_time_s=spec.wall_time_s, cpu_time_s=spec.cpu_time_s,
                            pass_fds=(seccomp_fd, status_w))
            try:
                outcome, code = await supervise(launch, cg, after_spawn=close_status_w)
            except OSError as e:
                if e.errno == errno.E2BIG:  # execve refused bwrap's argv/env: the request's fault, not ours
                    raise RequestError(f"cannot start the program: {e.strerror} (its arguments and "
                                       "environment are too large)") from e
                raise
            started = b"child-pid" in _read_all(status_r)
        finally:
            close_status_w()
            for fd in (seccomp_fd, status_r):
                if fd >= 0:
                    os.close(fd)
            if cg is not None and not cg.remove():
                self._leftovers = True  # a group would not empty: close() kills by uid
        if not started and outcome.stopped_by is None:
            raise SandboxError(f"bubblewrap could not start the sandbox (exit {code}): "
                               f"{outcome.stderr.decode(errors='replace').strip()}")
        return outcome

    async def close(self) -> None:
        """Kill what is left and remove every trace. With a warm pool, the reaping, unmounting and removal
        happen on its worker after the result is returned (the provider's aclose() waits for them); every process
        of the instance has been sent SIGKILL by then (the end of each exec kills its sandbox's cgroup)."""
        if self._closed:
            return
        self._closed = True
        p = self.host
        pr, self.wd.prepared = self.wd.prepared, None
        if pr is not None and not pr.kill():  # never used (its request failed before running anything)
            self._leftovers = True
        used, self._used = self._used, None
        leftovers = self._leftovers

        def teardown() -> None:
            gone = used.kill() if used is not None else True
            p.release(self.wd, kill_uid=p.root and (leftovers or not gone))

        if self.defer is not None:
            self.defer(teardown)
        else:
            teardown()


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)
