"""``ProcessProvider``: one-shot runs as plain processes under rlimits, for the places with no namespaces to
make (a function service's Firecracker VM or container: execbox's handler runs on it).

Each instance is a fresh directory (``work/`` the program's workdir, ``tmp/`` its HOME and TMPDIR); each exec
is one process in a session and process group of its own, under rlimits (CPU, address space, file size, open
files, processes), its environment built from nothing (the handler's own variables, credentials among them,
never reach it), supervised by the shared ``Watch``: output capped while it is read (a kill at the cap), the
wall time and the CPU time of the whole session (sampled from /proc) ended by killing the session.

What this does not do: keep a program from the rest of its machine. A process that leaves its session
(setsid) outlives the exec; the handler's environment reset (``handler.reset``) is what ends it. Optionally
(``run_as``, when the handler is root) the program runs as another uid, which keeps it from the handler's
processes and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import platform
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from execbox.errors import RequestError, SandboxError
from execbox.providers.base import ExecSpec, Instance, InstanceSpec, ProcessOutcome, Provider
from execbox.providers.local.supervise import stdin_fd
from execbox.providers.supervisor import PIPE_GRACE_S, FdReaders, Scope, Watch, exit_of_code

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
MiB = 1024 * 1024
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    """One line of /proc/PID/stat that matters here."""

    pid: int
    session: int
    state: str
    cpu_s: float  # its own CPU time and its waited-for children's


def processes() -> Iterator[Proc]:
    """Every process visible in /proc (those that vanish while read are skipped)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces and ')'
        if len(fields) < 15:
            continue
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        yield Proc(int(name), int(fields[3]), fields[0], ticks / _TICK)


def uid_of(pid: int) -> int | None:
    """A process's real uid (what kill() and RLIMIT_NPROC go by; /proc/PID's owner is root for a process
    that made itself undumpable)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def tasks_of_uid(uid: int) -> int:
    """Threads of every process ``uid`` owns: what RLIMIT_NPROC counts for it."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and uid_of(int(name)) == uid:
            try:
                count += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                continue
    return count


def kill_session(sid: int) -> None:
    """SIGKILL the process group ``sid`` leads and every process still in its session (a child that made a
    group of its own stays in the session; one that made a session of its own is the reset's)."""
    with contextlib.suppress(OSError):
        os.killpg(sid, signal.SIGKILL)
    for p in processes():
        if p.session == sid:
            with contextlib.suppress(OSError):
                os.kill(p.pid, signal.SIGKILL)


def session_cpu_s(sid: int) -> float:
    return sum(p.cpu_s for p in processes() if p.session == sid)


def _rlimits(spec: ExecSpec, nproc: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for one exec. CPU: the rlimit sits above the limit (the session's sampled CPU
    time stops the run first; SIGXCPU is the backstop for one process spinning between samples)."""
    cpu = int(spec.cpu_time_s) + 1
    return [
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, spec.memory_mb * MiB, spec.memory_mb * MiB),
        (resource.RLIMIT_FSIZE, spec.file_size_mb * MiB, spec.file_size_mb * MiB),
        (resource.RLIMIT_NOFILE, spec.open_files, spec.open_files),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
        # no POSIX message queue: one outlives its processes, and without an mqueue filesystem mounted (a
        # service may have none) the reset cannot find it to remove it
        (resource.RLIMIT_MSGQUEUE, 0, 0),
    ]


_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS = 38
# keyctl(2) (no libc wrapper): the kernel's keyrings outlive processes, so each program gets a session
# keyring of its own and the reset clears its uid's (handler.reset)
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR, KEYCTL_GET_PERSISTENT = 1, 7, 22
# no keyrings to leak: a kernel without them, or a seccomp filter refusing the keys' calls (Docker's default)
NO_KEYS = (errno.ENOSYS, errno.EPERM)


def keyctl(*args: int) -> int:
    """keyctl(2); -1 with errno set on failure."""
    if SYS_KEYCTL is None:
        ctypes.set_errno(errno.ENOSYS)
        return -1
    return int(_LIBC.syscall(SYS_KEYCTL, *(ctypes.c_long(a) for a in args)))


def _set_limits(limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """The child's last step before exec (it runs between fork and exec: only calls already loaded): the
    rlimits, a new session keyring (not the handler's, which every program would share), and no new
    privileges (a setuid binary in the image gives the program nothing)."""
    def apply() -> None:
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        if keyctl(KEYCTL_JOIN_SESSION_KEYRING, 0) < 0 and ctypes.get_errno() not in NO_KEYS:
            raise OSError(ctypes.get_errno(), "keyctl(KEYCTL_JOIN_SESSION_KEYRING) failed")
        if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    return apply


class ProcessInstance(Instance):
    def __init__(self, provider: ProcessProvider, path: Path) -> None:
        self.provider, self.path = provider, path
        self.work, self.tmp = path / "work", path / "tmp"
        self._closed = False
        self._sessions: list[int] = []  # every exec's session, killed again at close

    def _resolve(self, rel: str) -> Path:
        """A workdir path that cannot leave it, even through symlinks a program planted."""
        target = (self.work / rel).resolve()
        if target != self.work and self.work not in target.parents:
            raise SandboxError(f"path {rel!r} leaves the workdir")
        return target

    def _own(self, path: Path) -> None:
        if (ids := self.provider.run_as) is not None:
            os.lchown(path, *ids)

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        for rel, data in files.items():
            parent = self._resolve(os.path.dirname(rel) or ".")
            made = [p for p in (parent, *parent.parents) if self.work in p.parents and not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            for p in made:
                self._own(p)
            target = self._resolve(rel)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise SandboxError("the files do not fit on the service's disk") from e
                raise SandboxError(f"cannot write {rel!r}: {e}") from e
            self._own(target)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        try:
            fd = os.open(self._resolve(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (OSError, SandboxError, RuntimeError, ValueError):  # RuntimeError: a planted symlink loop
            return None
        with os.fdopen(fd, "rb") as f:
            if not os.path.isfile(f"/proc/self/fd/{fd}"):
                return None
            return f.read(max_bytes)

    def _env(self, spec: ExecSpec) -> dict[str, str]:
        home = str(self.tmp)
        return {"PATH": SANDBOX_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": home, **spec.env}

    def _nproc(self, pids: int) -> int:
        """RLIMIT_NPROC counts every task of the program's uid: the handler's own too when it shares it."""
        uid = self.provider.run_as[0] if self.provider.run_as is not None else os.getuid()
        return pids + tasks_of_uid(uid)

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        if self._closed:
            raise SandboxError("instance is closed")
        if any("\0" in x for x in (*spec.argv, *spec.env, *spec.env.values())):
            raise RequestError("embedded null byte in the program's argv or environment")
        cwd = self._resolve(spec.cwd)
        run_as = self.provider.run_as
        stdin = stdin_fd(spec.stdin)
        try:
            start = time.monotonic()
            proc = subprocess.Popen(
                list(spec.argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                env=self._env(spec), close_fds=True, start_new_session=True,
                user=run_as[0] if run_as else None, group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
                preexec_fn=_set_limits(_rlimits(spec, self._nproc(spec.pids))))
        except FileNotFoundError as e:
            raise SandboxError(f"{spec.argv[0]!r} is not installed in this service's image") from e
        except OSError as e:
            if e.errno == errno.E2BIG:
                raise RequestError(f"cannot start the program: {e.strerror} (its arguments and environment "
                                   "are too large)") from e
            raise
        finally:
            os.close(stdin)
        self._sessions.append(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            return await _watch(proc, spec, start)
        finally:
            proc.stdout.close()
            proc.stderr.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sid in self._sessions:
            kill_session(sid)
        shutil.rmtree(self.path, ignore_errors=True)


async def _watch(proc: subprocess.Popen[bytes], spec: ExecSpec, start: float) -> ProcessOutcome:
    """Supervise ``proc`` (a session leader) to its end or its limit; its session is killed once it ends
    (a one-shot exec leaves nothing running), so pipes a descendant holds close."""
    loop = asyncio.get_running_loop()
    sid = proc.pid
    assert proc.stdout is not None and proc.stderr is not None
    scope = Scope(lambda: kill_session(sid), lambda: session_cpu_s(sid))
    w = Watch(scope, output_bytes=spec.output_bytes, wall_time_s=spec.wall_time_s, cpu_time_s=spec.cpu_time_s)
    readers = FdReaders(loop, w, {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"})
    exited = asyncio.Event()
    pidfd = os.pidfd_open(proc.pid)
    loop.add_reader(pidfd, exited.set)
    try:
        try:
            await w.run(exited.wait, start)  # a cancel kills the session (CANCELLED) and is raised
        finally:
            wall = time.monotonic() - start
            session_cpu = session_cpu_s(sid)  # before the kill: its members' own times go with them
            kill_session(sid)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        await readers.all_eof(PIPE_GRACE_S)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        readers.close()
    cpu = max(rusage.ru_utime + rusage.ru_stime, session_cpu)
    exit_code, sig = exit_of_code(proc.returncode)
    return w.outcome(exit_code, sig, wall_time_s=wall, cpu_time_s=cpu, max_rss_mb=rusage.ru_maxrss / 1024)


class ProcessProvider(Provider):
    """One-shot instances under ``root`` (made if missing); ``run_as`` (uid, gid): the programs' ids when
    they are not the handler's own (it must be root to give them)."""

    name = "process"

    def __init__(self, root: Path, run_as: tuple[int, int] | None = None) -> None:
        self.root, self.run_as = root, run_as

    async def start(self, spec: InstanceSpec) -> ProcessInstance:
        if spec.persistent:
            raise SandboxError("the process provider runs one-shot executions only")
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="run-", dir=self.root))  # 0700, a name no one can guess
        for sub in ("work", "tmp"):
            (path / sub).mkdir(mode=0o700)
        if self.run_as is not None:
            for p in (path, path / "work", path / "tmp"):
                os.chown(p, *self.run_as)
        return ProcessInstance(self, path)
