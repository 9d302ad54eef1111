"""The bubblewrap command line for one sandboxed process: a pure function of its inputs, golden-tested.

Secure by default: every namespace is new; the network is shared only when the request asks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# What the root filesystem is made of: read-only binds of only what toolchains need.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc entries toolchains read (dynamic linker, alternatives, JVM/Mono/PHP config, certificates, zones).
# Never /etc itself: no shadow, no host passwd, no host configuration.
ETC_ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "java-17-openjdk", "java-21-openjdk",
    "mono", "php", "ssl", "ca-certificates", "localtime", "timezone", "nsswitch.conf", "host.conf",
    "gai.conf", "mime.types", "fonts", "matplotlibrc", "python3", "python3.11",
)
NETWORK_ETC_ENTRIES = ("resolv.conf",)

SANDBOX_UID = 1000
WORKDIR = "/work"


@dataclass(frozen=True)
class Bind:
    source: str
    dest: str
    kind: str = "ro-bind"  # ro-bind | bind | symlink


def root_binds(extra_ro: tuple[str, ...] = (), network: bool = False, root: str = "/") -> list[Bind]:
    """The host paths that make the sandbox's root, probed once per provider (symlinks stay symlinks)."""
    binds: list[Bind] = []
    host = Path(root)
    for d in SYSTEM_DIRS:
        p = host / d.lstrip("/")
        if p.is_symlink():
            binds.append(Bind(os.readlink(p), d, "symlink"))
        elif p.is_dir():
            binds.append(Bind(d, d))
    etc = ETC_ENTRIES + (NETWORK_ETC_ENTRIES if network else ())
    for name in etc:
        p = host / "etc" / name
        if p.exists() or p.is_symlink():
            binds.append(Bind(f"/etc/{name}", f"/etc/{name}"))
    binds.extend(Bind(p, p) for p in extra_ro)
    return binds


@dataclass(frozen=True)
class SandboxSpec:
    argv: tuple[str, ...]
    binds: tuple[Bind, ...]
    work_dir: str  # host path bound read-write at /work
    tmp_dir: str  # host path bound read-write at /tmp
    etc_dir: str  # host dir with execbox's own passwd, group, hosts, hostname
    seccomp_fd: int | None
    network: bool = False
    cwd: str = WORKDIR
    # host path bound read-write at /dev/shm. When given, the rest of /dev (bubblewrap's own tmpfs, writable
    # by the sandbox and bounded only by memory) is made read-only, so that every byte a program can write
    # lands in the instance's size-capped workdir tmpfs (disk_mb), as /work and /tmp do.
    shm_dir: str | None = None


def build_argv(spec: SandboxSpec, bwrap: str = "bwrap") -> list[str]:
    argv = [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        *([] if spec.network else ["--unshare-net"]),
        "--die-with-parent",  # the sandbox's init gets SIGKILL when its supervisor dies
        "--new-session",  # no controlling terminal: TIOCSTI cannot reach the caller's tty
        "--cap-drop", "ALL",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "execbox",
    ]
    for b in spec.binds:
        argv += [f"--{b.kind}", b.source, b.dest]
    for name in ("passwd", "group", "hosts", "hostname"):
        argv += ["--ro-bind", f"{spec.etc_dir}/{name}", f"/etc/{name}"]
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--bind", spec.work_dir, WORKDIR,
        "--bind", spec.tmp_dir, "/tmp",
        *(["--bind", spec.shm_dir, "/dev/shm"] if spec.shm_dir else []),
        "--remount-ro", "/",
        *(["--remount-ro", "/dev"] if spec.shm_dir else []),
        "--chdir", spec.cwd,
    ]
    if spec.seccomp_fd is not None:
        argv += ["--seccomp", str(spec.seccomp_fd)]
    argv += ["--", *spec.argv]
    return argv


ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hosts": "127.0.0.1\tlocalhost execbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "hostname": "execbox\n",
}


def write_etc(etc_dir: Path) -> None:
    """execbox's own identity files for the sandbox (the host's passwd and group never go in)."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(etc_dir, 0o755)
    for name, text in ETC_FILES.items():
        p = etc_dir / name
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        os.chmod(p, 0o644)
