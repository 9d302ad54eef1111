"""The local provider's host side, shared by one-shot (oneshot.py) and persistent (persistent.py) sandboxes:
the dedicated uids, the size-capped tmpfs workdirs, the C helpers built once (launch.c, waiter.c, agent.c),
the runtime dir, and ``Host``, which holds what every sandbox is made from (bubblewrap, the seccomp filter,
the /etc copies, the cgroup tree, the launcher) and makes and removes the instances' workdirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import resource
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from execbox.errors import IsolationError, ProviderUnavailable, SandboxError
from execbox.providers.host import cgroups, seccomp
from execbox.providers.local import bwrap

if TYPE_CHECKING:
    from execbox.providers.local.oneshot import Prepared

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# Far from every distribution's and systemd's ranges (DynamicUser is 61184-65519), below 2**31.
FIRST_UID = 1_900_000_000
UID_LOCK_DIR = Path("/run/execbox-uids")  # host-wide, whatever the runtime dir: two deployments never share a uid
UID_COUNT = 512
# A pre-started sandbox (one-shot or persistent) waits with these limits. Rlimits are set to the maxima (the
# waiter or agent can only lower them, to the request's values, before exec); the cgroup is kept tight while
# idle and set to the request's limits before the program is released (or the sandbox handed out).
IDLE_MEMORY_MB = 64
IDLE_PIDS = 8
PRESTART_CPU_S = 1 << 40
PRESTART_NPROC = 1 << 16
RLIM_INFINITY = (1 << 64) - 1
READY_TIMEOUT_S = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
# Held while a file the program may execute is open for writing on the host, and by the pools' workers while
# they spawn: a child forked meanwhile would hold a copy of the write descriptor until its exec, and the
# program's execve of that file would fail with ETXTBSY ("text file busy").
WRITE_OR_SPAWN = threading.Lock()
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


def mount_tmpfs(target: Path, size_mb: int, uid: int) -> None:
    opts = f"size={size_mb}m,mode=0700,uid={uid},gid={uid},nr_inodes=65536".encode()
    if _libc.mount(b"execbox", str(target).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount tmpfs on {target}: {os.strerror(e)}")


def umount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL,
                                                                                       errno.ENOENT):
        raise OSError(ctypes.get_errno(), f"umount {target}")


def build_binary(runtime: Path, source_name: str, prefix: str, mode: int) -> str:
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


def default_runtime_dir() -> Path:
    if env := os.environ.get("EXECBOX_RUNTIME_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/execbox")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/execbox-{os.getuid()}") / "execbox"


class UidSlots:
    """Dedicated uids, one per live instance, shared safely between execbox processes via flock (and
    between this process's threads: the pools' workers take and release them too).

    Handed out in turn, not lowest first: a uid just given back may still own the zombies of its last
    instance (orphans wait for the host's init to reap them, seconds on some hosts), and they count against
    the next instance's RLIMIT_NPROC, which is exact (pids + execbox's own). In turn, a uid comes back only
    after every other one was used once."""

    def __init__(self, lock_dir: Path, first: int, count: int) -> None:
        self.lock_dir, self.first, self.count = lock_dir, first, count
        self.held: dict[int, int] = {}  # uid -> lock fd
        self._lock = threading.Lock()
        self._next = 0  # where the next search starts (an offset from first)

    def try_acquire(self) -> int | None:
        with self._lock:
            for i in range(self.count):
                uid = self.first + (self._next + i) % self.count
                if uid in self.held:
                    continue
                fd = os.open(self.lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                self.held[uid] = fd
                self._next = (uid - self.first + 1) % self.count
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


def kill_by_uid(uid: int) -> None:
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


@dataclass
class InstanceDir:
    """What an instance holds on the host: a uid, a tmpfs workdir, a name (cgroups are named after it)."""

    uid: int
    name: str
    path: Path
    prepared: Prepared | None = None  # a one-shot sandbox started ahead of its request (oneshot.py)


class Host:
    """What every local sandbox is made from, set up once per provider: bubblewrap, the runtime dir (the
    seccomp filter, the /etc copies, the launcher), the cgroup tree and, as root, the uid slots."""

    def __init__(self, bwrap_name: str, runtime_dir: Path | None, first_uid: int, uid_count: int,
                 extra_ro_binds: tuple[str, ...]) -> None:
        bw = shutil.which(bwrap_name)
        if bw is None:
            raise ProviderUnavailable("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        self.bwrap = bw
        if problem := seccomp.available():
            raise IsolationError(f"cannot build the seccomp filter ({problem}): apt-get install libseccomp2")
        self.root = os.geteuid() == 0
        self.runtime = runtime_dir or default_runtime_dir()
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
        self.launcher = build_binary(self.runtime, "launch.c", "execbox-launch", 0o700)  # run by root only
        self.cgroups = cgroups.probe()
        if self.root and not self.cgroups.usable:  # fail closed: as root, limits must be the cgroup's
            raise IsolationError(f"cgroups are unusable ({self.cgroups.problem}); refusing to run with rlimits "
                                 "only. Run on a host with memory, pids and cpu(acct) cgroup controllers.")
        self.slots = None
        if self.root:
            UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
            self.slots = UidSlots(UID_LOCK_DIR, first_uid, uid_count)
        self.binds = tuple(bwrap.root_binds(extra_ro_binds))
        self.cleanup_stale()

    @functools.cached_property
    def max_nofile(self) -> int:
        """The most open files a launcher can grant (beyond it the cold path fails the same way)."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        return min(int(Path("/proc/sys/fs/nr_open").read_text()),
                   hard if hard != resource.RLIM_INFINITY else RLIM_INFINITY)

    def cleanup_stale(self) -> None:
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
                    umount(d)
                shutil.rmtree(d, ignore_errors=True)
        cgroups.remove_stale(self.cgroups, dead)

    def workdir(self, uid: int, disk_mb: int) -> InstanceDir:
        """A new instance's tmpfs workdir (work, tmp, shm), owned by ``uid``; the uid is released if it fails."""
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        path = self.runtime / "instances" / name
        try:
            path.mkdir(mode=0o711)
            if self.root:
                mount_tmpfs(path, disk_mb, uid)
                os.chmod(path, 0o711)
            for sub in ("work", "tmp", "shm"):  # shm: /dev/shm, on the capped tmpfs too (see bwrap.py)
                (path / sub).mkdir(mode=0o700)
                if self.root:
                    os.chown(path / sub, uid, uid)
        except OSError as e:
            with contextlib.suppress(OSError):
                umount(path)
            shutil.rmtree(path, ignore_errors=True)
            if self.slots:
                self.slots.release(uid)
            raise SandboxError(f"cannot create the sandbox workdir: {e}") from e
        return InstanceDir(uid, name, path)

    def release(self, wd: InstanceDir, kill_uid: bool) -> None:
        """Give back what an instance held: kill by uid if asked, unmount and remove its workdir, free the uid."""
        try:
            if self.root and kill_uid:
                kill_by_uid(wd.uid)
        finally:
            if self.root:
                with contextlib.suppress(OSError):
                    umount(wd.path)
            shutil.rmtree(wd.path, ignore_errors=True)
            if self.slots:
                self.slots.release(wd.uid)

    def sandbox_spec(self, wd: InstanceDir, network: bool, seccomp_fd: int, argv: tuple[str, ...],
                     env: Mapping[str, str], cwd: str) -> bwrap.SandboxSpec:
        return bwrap.SandboxSpec(
            argv=argv, binds=self.binds, work_dir=str(wd.path / "work"), tmp_dir=str(wd.path / "tmp"),
            etc_dir=str(self.etc_dirs[network]), seccomp_fd=seccomp_fd, network=network,
            cwd=os.path.normpath(os.path.join(bwrap.WORKDIR, cwd)), shm_dir=str(wd.path / "shm"),
            env=tuple(env.items()))

    def prestart_launcher_argv(self, uid: int, procs_files: list[str]) -> list[str]:
        """A pre-started sandbox's launcher arguments: its rlimits at the maxima (its waiter or agent only
        lowers them, to each exec's, before the exec's program starts)."""
        return self.launcher_argv(uid, PRESTART_CPU_S, RLIM_INFINITY, self.max_nofile, PRESTART_NPROC, 0,
                                  procs_files)

    def launcher_argv(self, uid: int, cpu_s: int, fsize: int, nofile: int, nproc: int, address_space: int,
                      procs_files: list[str]) -> list[str]:
        """execbox-launch's arguments (see launch.c): join the cgroup, set rlimits, drop to the instance's uid."""
        return [self.launcher, str(os.getpid()), str(uid if self.root else -1), str(cpu_s), str(fsize),
                str(nofile), str(nproc), str(address_space), *procs_files, "--"]


def sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """A sandboxed program's environment: execbox's base, under the exec's own variables."""
    return {"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp", **env}
