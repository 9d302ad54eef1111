"""The bubblewrap command line for one sandboxed process: a pure function of its inputs, golden-tested.

Secure by default: every namespace is new; the network is shared only when the request asks for it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

# What the root filesystem is made of: read-only binds of only what toolchains need.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc entries toolchains read (dynamic linker, alternatives, JVM/Mono/PHP config, certificates, zones),
# copied into execbox's own /etc (see build_etc). Never the host's /etc itself: no shadow, no host passwd.
ETC_ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "java-17-openjdk", "java-21-openjdk",
    "mono", "php", "ssl", "ca-certificates", "localtime", "timezone", "nsswitch.conf", "host.conf",
    "gai.conf", "mime.types", "fonts", "matplotlibrc", "python3", "python3.11",
)
NETWORK_ETC_ENTRIES = ("resolv.conf",)
ETC_SKIP = ("ssl/private",)  # private keys stay on the host even when their parent is copied
ETC_LAYOUT_VERSION = 2  # bump when build_etc copies differently, so old directories are not reused

SANDBOX_UID = 1000
WORKDIR = "/work"


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    kind: str = "ro-bind"  # ro-bind | bind | symlink


def root_binds(extra_ro: tuple[str, ...] = (), root: str = "/") -> list[Bind]:
    """The host paths that make the sandbox's root besides /etc, probed once per provider (symlinks stay
    symlinks)."""
    binds: list[Bind] = []
    host = Path(root)
    for d in SYSTEM_DIRS:
        p = host / d.lstrip("/")
        if p.is_symlink():
            binds.append(Bind(os.readlink(p), d, "symlink"))
        elif p.is_dir():
            binds.append(Bind(d, d))
    binds.extend(Bind(p, p) for p in extra_ro)
    return binds


@dataclass(frozen=True)
class SandboxSpec:
    argv: tuple[str, ...]
    binds: tuple[Bind, ...]
    work_dir: str  # host path bound read-write at /work
    tmp_dir: str  # host path bound read-write at /tmp
    etc_dir: str  # execbox's own /etc (build_etc), bound read-only at /etc
    seccomp_fd: int | None
    network: bool = False
    cwd: str = WORKDIR
    # the program's whole environment: bubblewrap itself starts with an empty one (see build_argv)
    env: tuple[tuple[str, str], ...] = ()
    # host path bound read-write at /dev/shm. When given, the rest of /dev (bubblewrap's own tmpfs, writable
    # by the sandbox and bounded only by memory) is made read-only, so that every byte a program can write
    # lands in the instance's size-capped workdir tmpfs (disk_mb), as /work and /tmp do.
    shm_dir: str | None = None
    # the program is the pid namespace's init (bubblewrap's --as-pid-1): execbox's waiter, which reaps
    # what the request's program orphans as bubblewrap's own init would (see with_waiter)
    as_pid_1: bool = False


def build_argv(spec: SandboxSpec, bwrap: str = "bwrap") -> list[str]:
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        *([] if spec.network else ["--unshare-net"]),
        *(["--as-pid-1"] if spec.as_pid_1 else []),
        "--die-with-parent",  # the sandbox's init gets SIGKILL when its supervisor dies
        "--new-session",  # no controlling terminal: TIOCSTI cannot reach the caller's tty
        "--cap-drop", "ALL",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "execbox",
    ]
    for b in spec.binds:
        argv += [f"--{b.kind}", b.source, b.dest]
    argv += [
        "--ro-bind", spec.etc_dir, "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--bind", spec.work_dir, WORKDIR,
        "--bind", spec.tmp_dir, "/tmp",
        *(["--bind", spec.shm_dir, "/dev/shm"] if spec.shm_dir else []),
        "--remount-ro", "/",
        *(["--remount-ro", "/dev"] if spec.shm_dir else []),
        "--chdir", spec.cwd,
    ]
    # The environment is set here, never inherited: bubblewrap and execbox's launcher run outside the
    # sandbox, where a request's LD_PRELOAD or LD_AUDIT would be obeyed by the dynamic loader.
    argv.append("--clearenv")
    for key, value in spec.env:
        argv += ["--setenv", key, value]
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    argv += ["--", *spec.argv]
    return argv


def with_waiter(spec: SandboxSpec, waiter_fd: int, control_fd: int) -> SandboxSpec:
    """A pre-started sandbox: the same sandbox, whose program is execbox's waiter (waiter.c), executed from
    a read-only descriptor of it (nothing is mounted for it: the sandbox's tree is unchanged; the waiter
    closes the descriptor before the request's program runs). It talks on ``control_fd``; the request's
    argv, environment and cwd reach it later, inside the sandbox, so the sandbox starts with an empty
    environment and /work as its directory. The waiter is the pid namespace's init, in the place of
    bubblewrap's: the program sees the same process tree (itself as pid 2, its parent pid 1), and as init
    the waiter cannot be signalled from inside the sandbox."""
    return SandboxSpec(
        argv=(f"/proc/self/fd/{waiter_fd}", str(control_fd)), binds=spec.binds, work_dir=spec.work_dir,
        tmp_dir=spec.tmp_dir, etc_dir=spec.etc_dir, seccomp_fd=spec.seccomp_fd, network=spec.network,
        cwd=WORKDIR, env=(), shm_dir=spec.shm_dir, as_pid_1=True)


ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost execbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "hostname": "execbox\n",
}


def _etc_sources(network: bool, root: Path) -> list[Path]:
    names = ETC_ENTRIES + (NETWORK_ETC_ENTRIES if network else ())
    return [root / "etc" / n for n in names if (root / "etc" / n).exists() or (root / "etc" / n).is_symlink()]


def _fingerprint(sources: list[Path], root: Path) -> str:
    h = hashlib.sha256(repr((ETC_LAYOUT_VERSION, ETC_SKIP, sorted(ETC_FILES.items()))).encode())
    for src in sources:
        for path in [src, *sorted(src.rglob("*"))] if src.is_dir() and not src.is_symlink() else [src]:
            st = path.lstat()
            target = os.readlink(path) if path.is_symlink() else ""
            h.update(f"{path.relative_to(root)}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_mode}\0{target}\n".encode())
    return h.hexdigest()[:16]


def build_etc(parent: Path, network: bool, root: str = "/") -> Path:
    """execbox's own /etc: copies of the allowed host entries plus its own passwd, group, hosts and hostname.

    One directory, bound once, instead of a bind per entry (each mount costs bubblewrap time on every run).
    Rebuilt only when a host entry changes (the directory's name is a fingerprint of its sources).
    """
    host = Path(root)
    sources = _etc_sources(network, host)
    target = parent / f"etc-{'net-' if network else ''}{_fingerprint(sources, host)}"
    if target.is_dir():
        return target
    tmp = parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755, parents=True)
    skip = {host / "etc" / s for s in ETC_SKIP}
    for src in sources:
        dest = tmp / src.name
        if src.is_symlink() and os.path.realpath(src).startswith("/usr/"):
            os.symlink(os.readlink(src), dest)  # e.g. localtime -> /usr/share/zoneinfo/..., visible inside
        elif src.is_symlink() and not src.exists():
            continue  # dangling and pointing outside /usr: nothing to give
        elif src.is_symlink() and src.is_file():
            shutil.copy2(src, dest)  # e.g. resolv.conf -> /run/systemd/resolve/...: not visible, so copied
        elif src.is_dir():
            shutil.copytree(src, dest, symlinks=True, ignore=lambda d, names: [
                n for n in names if Path(d) / n in skip])
        else:
            shutil.copy2(src, dest)
    for name, text in ETC_FILES.items():
        (tmp / name).write_text(text)
        os.chmod(tmp / name, 0o644)
    os.chmod(tmp, 0o755)
    try:
        tmp.rename(target)
    except OSError:  # another execbox process built the same one meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target
