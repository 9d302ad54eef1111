"""The embedded default provider: bubblewrap namespaces + cgroups + seccomp + rlimits, no daemon.

An instance is a size-capped tmpfs workdir (mounted by execbox when root) owned by a dedicated unprivileged
uid, one per live instance, as isolate does. Each exec is one bubblewrap sandbox over that workdir, in its
own cgroup. The sandboxed process tree never runs as host root: the supervisor drops to the instance's uid
before bubblewrap starts.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execbox.errors import IsolationError, ProviderUnavailable, RequestError, SandboxError
from execbox.pool import PrestartPool
from execbox.providers.base import ExecSpec, Instance, InstanceSpec, ProcessOutcome, Provider
from execbox.providers.host import cgroups, seccomp
from execbox.providers.local import bwrap
from execbox.providers.local.supervise import Launch, Waiter, stdin_fd, supervise, watch

if TYPE_CHECKING:
    from execbox.providers.local.persistent import PersistentInstance

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Far from every distribution's and systemd's ranges (DynamicUser is 61184-65519), below 2**31.
FIRST_UID = 1_900_000_000
UID_LOCK_DIR = Path("/run/execbox-uids")  # host-wide, whatever the runtime dir: two deployments never share a uid
UID_COUNT = 512

_libc = ctypes.CDLL(None, use_errno=True)
# Held while a file the program may execute is open for writing on the host, and by the warm pool's worker
# while it spawns: a child forked meanwhile would hold a copy of the write descriptor until its exec, and
# the program's execve of that file would fail with ETXTBSY ("text file busy").
_WRITE_OR_SPAWN = threading.Lock()
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


def _mount_tmpfs(target: Path, size_mb: int, uid: int) -> None:
    opts = f"size={size_mb}m,mode=0700,uid={uid},gid={uid},nr_inodes=65536".encode()
    if _libc.mount(b"execbox", str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tmpfs on {target}: {os.strerror(e)}")


def _umount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL,
                                                                                       errno.ENOENT):
        raise OSError(ctypes.get_errno(), f"umount {target}")


def _build_binary(runtime: Path, source_name: str, prefix: str, mode: int) -> str:
    """Compile a C file of this package once per version of its source (cached in the runtime dir by
    content hash)."""
    source = resources.files(__package__).joinpath(source_name).read_bytes()
    target = runtime / f"{prefix}-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return str(target)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ProviderUnavailable("the local provider builds two small C programs once and needs a C compiler: "
                                  "apt-get install gcc")
    tmp = runtime / f".{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.with_suffix(".c").write_bytes(source)
    try:
        subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(tmp.with_suffix(".c"))], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise ProviderUnavailable(f"cannot build {source_name}: {e} {detail.decode(errors='replace')}") from e
    finally:
        tmp.with_suffix(".c").unlink(missing_ok=True)
    os.chmod(tmp, mode)
    tmp.replace(target)
    return str(target)


def _build_launcher(runtime: Path) -> str:
    return _build_binary(runtime, "launch.c", "execbox-launch", 0o700)  # run by root only


def _build_waiter(runtime: Path) -> str:
    return _build_binary(runtime, "waiter.c", "execbox-waiter", 0o755)  # run inside sandboxes


def default_runtime_dir() -> Path:
    if env := os.environ.get("EXECBOX_RUNTIME_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/execbox")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/execbox-{os.getuid()}") / "execbox"


class _UidSlots:
    """Dedicated uids, one per live instance, shared safely between execbox processes via flock (and
    between this process's threads: the warm pool's worker takes and releases them too)."""

    def __init__(self, lock_dir: Path, first: int, count: int) -> None:
        self.lock_dir, self.first, self.count = lock_dir, first, count
        self.held: dict[int, int] = {}  # uid -> lock fd
        self._lock = threading.Lock()

    def try_acquire(self) -> int | None:
        with self._lock:
            for uid in range(self.first, self.first + self.count):
                if uid in self.held:
                    continue
                fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.held[uid] = fd
                return uid
        return None

    async def acquire(self) -> int:
        while (uid := self.try_acquire()) is None:
            await asyncio.sleep(0.01)
        return uid

    def release(self, uid: int) -> None:
        with self._lock:
            fd = self.held.pop(uid, None)
        if fd is not None:
            os.close(fd)


def _kill_uid(uid: int) -> None:
    """kill(-1, SIGKILL) as ``uid``: every process that uid owns, wherever it hides (isolate's last resort)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


# A pre-started sandbox waits with these limits. Rlimits are set to the maxima (the waiter can only lower
# them, to the request's values, before exec); the cgroup is kept tight while idle and set to the request's
# limits before the program is released.
IDLE_MEMORY_MB = 64
IDLE_PIDS = 8
# execbox's own processes in a one-shot sandbox's cgroup while the program runs: the launcher, bubblewrap and
# the pid namespace's init (bubblewrap's, or execbox's waiter). None of them can be signalled by the program
# (the first two are outside its pid namespace, the init ignores it), so the cgroup's pids.max is the
# request's pids plus exactly these: the program and everything it starts get exactly ``pids``.
SANDBOX_PIDS = 3
# Of those, the ones RLIMIT_NPROC counts with the program (in its user namespace, under its uid): the init.
# The launcher sets RLIMIT_NPROC before bubblewrap makes that namespace, whose processes count against the
# launcher's limit too, with the launcher and bubblewrap themselves: cold path pids + SANDBOX_PIDS.
NAMESPACE_PIDS = 1
PRESTART_CPU_S = 1 << 40
PRESTART_NPROC = 1 << 16
RLIM_INFINITY = (1 << 64) - 1
WARM_POOL_DISK_MB = 256  # the default Limits.disk_mb: the pool serves requests with the default disk size
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LocalSettings:
    bwrap: str = "bwrap"
    runtime_dir: Path | None = None
    first_uid: int = FIRST_UID
    uid_count: int = UID_COUNT
    extra_ro_binds: tuple[str, ...] = ()
    # Pre-started sandboxes kept ready (0: none). Used when running as root with cgroups, for requests
    # without network and with warm_pool_disk_mb of disk; others take the cold path.
    warm_pool: int = 2
    warm_pool_disk_mb: int = WARM_POOL_DISK_MB
    # Persistent sandboxes (persistent.py) kept started and idle, ready to be handed out by
    # start(InstanceSpec(persistent=True)) when it asks for no network and sandbox_pool_disk_mb of disk
    # (0: none; EXECBOX_LOCAL_SANDBOX_POOL). Each is handed out once, never shared. Nothing is started before
    # the first persistent sandbox is asked for. The sandboxes it hands out die with the pool's worker thread
    # (their launcher's parent-death signal): when the provider is closed.
    sandbox_pool: int = 2
    sandbox_pool_disk_mb: int = WARM_POOL_DISK_MB

    @classmethod
    def from_env(cls) -> LocalSettings:
        """Defaults, with ``EXECBOX_LOCAL_WARM_POOL`` (pre-started sandboxes; 0 for one-shot processes such
        as the CLI, which would pay for sandboxes it never uses)."""
        pool = os.environ.get("EXECBOX_LOCAL_WARM_POOL", "").strip()
        sandboxes = os.environ.get("EXECBOX_LOCAL_SANDBOX_POOL", "").strip()
        default = cls()
        return cls(warm_pool=int(pool) if pool.isdigit() else default.warm_pool,
                   sandbox_pool=int(sandboxes) if sandboxes.isdigit() else default.sandbox_pool)


@dataclass
class _Prepared:
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


@dataclass
class _Workdir:
    """What an instance holds on the host: a uid, a tmpfs workdir, a name (cgroups are named after it)."""

    uid: int
    name: str
    path: Path
    prepared: _Prepared | None = None


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


def _close_pool(ref: weakref.ref[PrestartPool[Any]]) -> None:
    if (pool := ref()) is not None:
        pool.close(timeout=10)


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings: LocalSettings | None = None) -> None:
        self.settings = settings or LocalSettings.from_env()
        bw = shutil.which(self.settings.bwrap)
        if bw is None:
            raise ProviderUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        self.bwrap = bw
        if problem := seccomp.available():
            raise IsolationError(f"cannot build the seccomp filter ({problem}): apt-get install libseccomp2")
        self.root = os.geteuid() == 0
        self.runtime = self.settings.runtime_dir or default_runtime_dir()
        for sub in ("", "instances"):
            (self.runtime / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.runtime / sub, 0o711)  # the instance uids traverse these to reach their workdir
        st = self.runtime.stat()
        if st.st_uid != os.geteuid():  # e.g. a /tmp/execbox-UID planted by another local user
            raise ProviderUnavailable(f"runtime dir {self.runtime} is owned by uid {st.st_uid}, not by us")
        self.etc_dirs = {net: bwrap.build_etc(self.runtime, net) for net in (False, True)}
        self.seccomp_path = self.runtime / "seccomp.bpf"
        bpf = seccomp.filter_bpf()
        if not self.seccomp_path.exists() or self.seccomp_path.read_bytes() != bpf:
            tmp = self.seccomp_path.with_suffix(f".{os.getpid()}")
            tmp.write_bytes(bpf)
            tmp.replace(self.seccomp_path)
        self.launcher = _build_launcher(self.runtime)
        self.cgroups = cgroups.probe()
        if self.root and not self.cgroups.usable:  # fail closed: as root, limits must be the cgroup's
            raise IsolationError(f"cgroups are unusable ({self.cgroups.problem}); refusing to run with rlimits "
                                 "only. Run on a host with memory, pids and cpu(acct) cgroup controllers.")
        self.slots = None
        if self.root:
            UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
            self.slots = _UidSlots(UID_LOCK_DIR, self.settings.first_uid, self.settings.uid_count)
        self._binds = tuple(bwrap.root_binds(self.settings.extra_ro_binds))
        # persistent sandboxes need a cgroup per exec (root) and openat2 (see persistent.py)
        self.supports_persistent = self.root and self.cgroups.usable
        self._cleanup_stale()
        self.warm_pool: PrestartPool[_Workdir] | None = None
        if self.settings.warm_pool > 0 and self.root and self.cgroups.usable:
            self.waiter = _build_waiter(self.runtime)
            # the most open files a launcher can grant (beyond it the cold path fails the same way)
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            self.max_nofile = min(int(Path("/proc/sys/fs/nr_open").read_text()),
                                  hard if hard != resource.RLIM_INFINITY else RLIM_INFINITY)
            self.warm_pool = PrestartPool(self.settings.warm_pool, self._prepare, self._destroy,
                                      name="execbox-local-pool")
            atexit.register(_close_pool, weakref.ref(self.warm_pool))
        self.sandbox_pool: PrestartPool[PersistentInstance] | None = None
        if self.settings.sandbox_pool > 0 and self.supports_persistent:
            from execbox.providers.local.persistent import PersistentInstance

            self.sandbox_pool = PrestartPool(self.settings.sandbox_pool, lambda: PersistentInstance.prestart(self),
                                         lambda inst: inst._teardown(), name="execbox-local-sandbox-pool")
            atexit.register(_close_pool, weakref.ref(self.sandbox_pool))

    def _cleanup_stale(self) -> None:
        """Remove workdirs and cgroups left by an execbox process that died (its pid is in their name)."""
        def dead(name: str) -> bool:
            pid = name.split("-", 1)[0]
            if not pid.isdigit():
                return False
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False

        for d in (self.runtime / "instances").iterdir():
            if dead(d.name):
                with contextlib.suppress(OSError):
                    _umount(d)
                shutil.rmtree(d, ignore_errors=True)
        cgroups.remove_stale(self.cgroups, dead)

    async def aclose(self) -> None:
        """Destroy the idle pre-started sandboxes and wait for every instance's teardown."""
        if self.warm_pool is not None:
            await asyncio.to_thread(self.warm_pool.close)
        if self.sandbox_pool is not None:
            await asyncio.to_thread(self.sandbox_pool.close)

    def _workdir(self, uid: int, disk_mb: int) -> _Workdir:
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        path = self.runtime / "instances" / name
        try:
            path.mkdir(mode=0o711)
            if self.root:
                _mount_tmpfs(path, disk_mb, uid)
                os.chmod(path, 0o711)
            for sub in ("work", "tmp", "shm"):  # shm: /dev/shm, on the capped tmpfs too (see bwrap.py)
                (path / sub).mkdir(mode=0o700)
                if self.root:
                    os.chown(path / sub, uid, uid)
        except OSError as e:
            with contextlib.suppress(OSError):
                _umount(path)
            shutil.rmtree(path, ignore_errors=True)
            if self.slots:
                self.slots.release(uid)
            raise SandboxError(f"cannot create the sandbox workdir: {e}") from e
        return _Workdir(uid, name, path)

    def _sandbox_spec(self, wd: _Workdir, network: bool, seccomp_fd: int, argv: tuple[str, ...],
                      env: Mapping[str, str], cwd: str) -> bwrap.SandboxSpec:
        return bwrap.SandboxSpec(
            argv=argv, binds=self._binds, work_dir=str(wd.path / "work"), tmp_dir=str(wd.path / "tmp"),
            etc_dir=str(self.etc_dirs[network]), seccomp_fd=seccomp_fd, network=network,
            cwd=os.path.normpath(os.path.join(bwrap.WORKDIR, cwd)), shm_dir=str(wd.path / "shm"),
            env=tuple(env.items()))

    def _launcher_argv(self, uid: int, cpu_s: int, fsize: int, nofile: int, nproc: int, address_space: int,
                       procs_files: list[str]) -> list[str]:
        """execbox-launch's arguments (see launch.c): join the cgroup, set rlimits, drop to the instance's uid."""
        return [self.launcher, str(os.getpid()), str(uid if self.root else -1), str(cpu_s), str(fsize),
                str(nofile), str(nproc), str(address_space), *procs_files, "--"]

    # ------------------------------------------------------------------ the warm pool (its worker thread)
    def _prepare(self) -> _Workdir | None:
        """A sandbox set up before its request: uid, workdir, cgroup, launcher, bubblewrap, seccomp, and
        execbox's waiter inside, blocked until the request's program is released (see waiter.c)."""
        assert self.slots is not None
        uid = self.slots.try_acquire()
        if uid is None:
            return None  # every uid is busy: try again later
        wd = self._workdir(uid, self.settings.warm_pool_disk_mb)
        cg: cgroups.Cgroup | None = None
        proc: subprocess.Popen[bytes] | None = None
        ours = theirs = None
        seccomp_fd = waiter_fd = -1
        try:
            cg = cgroups.Cgroup(self.cgroups, f"{wd.name}-1", memory_mb=IDLE_MEMORY_MB, pids=IDLE_PIDS)
            seccomp_fd = os.open(self.seccomp_path, os.O_RDONLY)
            waiter_fd = os.open(self.waiter, os.O_RDONLY)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            spec = bwrap.with_waiter(self._sandbox_spec(wd, False, seccomp_fd, (), {}, "."), waiter_fd,
                                     theirs.fileno())
            argv = bwrap.build_argv(spec, self.bwrap)
            argv[:0] = self._launcher_argv(uid, PRESTART_CPU_S, RLIM_INFINITY, self.max_nofile, PRESTART_NPROC, 0,
                                           cg.procs_files)
            with _WRITE_OR_SPAWN:
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
            pr = _Prepared(cg, proc, ours, os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno()))
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
            self._release(wd, kill_uid=not gone)
            raise
        finally:
            for fd in (seccomp_fd, waiter_fd):
                if fd >= 0:
                    os.close(fd)

    def _destroy(self, wd: _Workdir) -> None:
        gone = wd.prepared.kill() if wd.prepared is not None else True
        self._release(wd, kill_uid=not gone)

    def _release(self, wd: _Workdir, kill_uid: bool) -> None:
        """Give back what an instance held: kill by uid if asked, unmount and remove its workdir, free the uid."""
        try:
            if self.root and kill_uid:
                _kill_uid(wd.uid)
        finally:
            if self.root:
                with contextlib.suppress(OSError):
                    _umount(wd.path)
            shutil.rmtree(wd.path, ignore_errors=True)
            if self.slots:
                self.slots.release(wd.uid)

    async def start(self, spec: InstanceSpec) -> Instance:
        if spec.persistent:  # one long-lived sandbox, many execs (persistent.py)
            from execbox.providers.local.persistent import PersistentInstance

            return await PersistentInstance.start(self, spec)
        if (self.warm_pool is not None and not spec.network and spec.disk_mb == self.settings.warm_pool_disk_mb
                and (wd := self.warm_pool.take()) is not None):
            return LocalInstance(self, spec, wd)
        uid = await self.slots.acquire() if self.slots else os.getuid()
        return LocalInstance(self, spec, self._workdir(uid, spec.disk_mb))


class LocalInstance(Instance):
    def __init__(self, provider: LocalProvider, spec: InstanceSpec, wd: _Workdir) -> None:
        self.provider, self.spec, self.wd = provider, spec, wd
        self.uid, self.name, self.path = wd.uid, wd.name, wd.path
        self.work = wd.path / "work"
        self._closed = False
        self._execs = 0
        self._used: _Prepared | None = None  # the pre-started sandbox that ran, to be reaped by close()
        # Without cgroups, or when a group could not be emptied, processes may outlive an exec: close() then
        # kills everything the instance's uid owns.
        self._leftovers = not provider.cgroups.usable

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
                with _WRITE_OR_SPAWN:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise SandboxError("the files do not fit in the sandbox's disk limit") from e
                raise SandboxError(f"cannot write {rel!r}: {e}") from e
            if self.provider.root:
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
        return {"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp", **spec.env}

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

    async def _exec_prepared(self, spec: ExecSpec, pr: _Prepared) -> ProcessOutcome | None:
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
        p = self.provider
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
            sandbox = p._sandbox_spec(self.wd, self.spec.network, seccomp_fd, spec.argv, self._env(spec),
                                      spec.cwd)
            argv = bwrap.build_argv(sandbox, p.bwrap)
            argv[1:1] = ["--json-status-fd", str(status_w)]
            mb = 1024 * 1024
            address_space = 0 if cg else spec.memory_mb * mb  # no cgroup: the rlimit is the fallback
            argv[:0] = p._launcher_argv(self.uid, int(spec.cpu_time_s) + 1, spec.file_size_mb * mb,
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
        happen on its worker after the result is returned (provider.aclose() waits for them); every process
        of the instance has been sent SIGKILL by then (the end of each exec kills its sandbox's cgroup)."""
        if self._closed:
            return
        self._closed = True
        p = self.provider
        pr, self.wd.prepared = self.wd.prepared, None
        if pr is not None and not pr.kill():  # never used (its request failed before running anything)
            self._leftovers = True
        used, self._used = self._used, None
        leftovers = self._leftovers

        def teardown() -> None:
            gone = used.kill() if used is not None else True
            p._release(self.wd, kill_uid=p.root and (leftovers or not gone))

        if p.warm_pool is not None:
            p.warm_pool.defer(teardown)
        else:
            teardown()


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)
