"""The embedded default provider: bubblewrap namespaces + cgroups + seccomp + rlimits, no daemon.

An instance is a size-capped tmpfs workdir (mounted by execbox when root) owned by a dedicated unprivileged
uid, one per live instance, as isolate does. Each exec is one bubblewrap sandbox over that workdir, in its
own cgroup. The sandboxed process tree never runs as host root: the supervisor drops to the instance's uid
before bubblewrap starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from execbox.errors import IsolationError, ProviderUnavailable, RequestError, SandboxError
from execbox.providers.base import ExecSpec, Instance, InstanceSpec, ProcessOutcome, Provider
from execbox.providers.local import bwrap, cgroups, seccomp
from execbox.providers.local.supervise import Launch, supervise

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Far from every distribution's and systemd's ranges (DynamicUser is 61184-65519), below 2**31.
FIRST_UID = 1_900_000_000
UID_LOCK_DIR = Path("/run/execbox-uids")  # host-wide, whatever the runtime dir: two deployments never share a uid
UID_COUNT = 512

_libc = ctypes.CDLL(None, use_errno=True)
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


def _build_launcher(runtime: Path) -> str:
    """Compile launch.c once per version of its source (cached in the runtime dir by content hash)."""
    source = resources.files(__package__).joinpath("launch.c").read_bytes()
    target = runtime / f"execbox-launch-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return str(target)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ProviderUnavailable("the local provider builds a small C launcher once and needs a C compiler: "
                                  "apt-get install gcc")
    tmp = runtime / f".launch-{os.getpid()}"
    tmp.with_suffix(".c").write_bytes(source)
    try:
        subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(tmp.with_suffix(".c"))], check=True,
                       capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise ProviderUnavailable(f"cannot build the launcher: {e} {detail.decode(errors='replace')}") from e
    finally:
        tmp.with_suffix(".c").unlink(missing_ok=True)
    os.chmod(tmp, 0o700)
    tmp.replace(target)
    return str(target)


def default_runtime_dir() -> Path:
    if env := os.environ.get("EXECBOX_RUNTIME_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/execbox")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/execbox-{os.getuid()}") / "execbox"


class _UidSlots:
    """Dedicated uids, one per live instance, shared safely between execbox processes via flock."""

    def __init__(self, lock_dir: Path, first: int, count: int) -> None:
        self.lock_dir, self.first, self.count = lock_dir, first, count
        self.held: dict[int, int] = {}  # uid -> lock fd

    async def acquire(self) -> int:
        while True:
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
            await asyncio.sleep(0.01)

    def release(self, uid: int) -> None:
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


@dataclass(frozen=True)
class LocalSettings:
    bwrap: str = "bwrap"
    runtime_dir: Path | None = None
    first_uid: int = FIRST_UID
    uid_count: int = UID_COUNT
    extra_ro_binds: tuple[str, ...] = ()


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings: LocalSettings | None = None) -> None:
        self.settings = settings or LocalSettings()
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
        self._cleanup_stale()

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

    async def start(self, spec: InstanceSpec) -> LocalInstance:
        uid = await self.slots.acquire() if self.slots else os.getuid()
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        path = self.runtime / "instances" / name
        try:
            path.mkdir(mode=0o711)
            if self.root:
                _mount_tmpfs(path, spec.disk_mb, uid)
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
        return LocalInstance(self, spec, uid, name, path)


class LocalInstance(Instance):
    def __init__(self, provider: LocalProvider, spec: InstanceSpec, uid: int, name: str, path: Path) -> None:
        self.provider, self.spec, self.uid, self.name, self.path = provider, spec, uid, name, path
        self.work = path / "work"
        self._closed = False
        self._execs = 0
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

    def _launcher_argv(self, spec: ExecSpec, procs_files: list[str]) -> list[str]:
        """execbox-launch's arguments (see launch.c): join the cgroup, set rlimits, drop to the instance's uid."""
        mb = 1024 * 1024
        address_space = 0 if procs_files else spec.memory_mb * mb  # no cgroup: the rlimit is the fallback
        return [self.provider.launcher, str(os.getpid()), str(self.uid if self.provider.root else -1),
                str(int(spec.cpu_time_s) + 1), str(spec.file_size_mb * mb), str(spec.open_files),
                str(spec.pids + 4), str(address_space), *procs_files, "--"]

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        if self._closed:
            raise SandboxError("instance is closed")
        p = self.provider
        self._execs += 1
        cg = None
        if p.cgroups.usable:
            try:
                cg = cgroups.Cgroup(p.cgroups, f"{self.name}-{self._execs}", memory_mb=spec.memory_mb,
                                    pids=spec.pids + 4)  # bubblewrap's own two processes count too
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
            sandbox = bwrap.SandboxSpec(
                argv=spec.argv, binds=p._binds, work_dir=str(self.work),
                tmp_dir=str(self.path / "tmp"), etc_dir=str(p.etc_dirs[self.spec.network]), seccomp_fd=seccomp_fd,
                network=self.spec.network, cwd=os.path.normpath(os.path.join(bwrap.WORKDIR, spec.cwd)),
                shm_dir=str(self.path / "shm"),
                env=tuple({"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
                           **spec.env}.items()))
            argv = bwrap.build_argv(sandbox, p.bwrap)
            argv[1:1] = ["--json-status-fd", str(status_w)]
            argv[:0] = self._launcher_argv(spec, cg.procs_files if cg else [])
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
        if self._closed:
            return
        self._closed = True
        p = self.provider
        try:
            if p.root and self._leftovers:
                _kill_uid(self.uid)
        finally:
            if p.root:
                with contextlib.suppress(OSError):
                    _umount(self.path)
            shutil.rmtree(self.path, ignore_errors=True)
            if p.slots:
                p.slots.release(self.uid)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)
