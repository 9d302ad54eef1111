"""The seccomp filter applied to every sandboxed process, built with libseccomp (pyseccomp), never by hand.

Default allow, with a deny list of what untrusted code has no use for and what widens the kernel's attack
surface. Denied calls fail with EPERM (so programs see a clean error) rather than killing the process; calls
from a foreign architecture (the i386/x32 ABIs) kill the process, libseccomp's default for a bad arch.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os

# Each entry: a syscall untrusted code never needs. Grouped by why.
DENIED_SYSCALLS: tuple[str, ...] = (
    # tracing and reading other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # mounts and namespaces (bwrap has finished setting up by the time the filter applies)
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    # the kernel's big optional surfaces
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    # machine-wide state
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "syslog", "quotactl", "vhangup", "iopl", "ioperm", "personality", "uselib", "nfsservctl",
)

CLONE_NEW_FLAGS = (
    0x10000000,  # CLONE_NEWUSER
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
TIOCSTI = 0x5412
AF_VSOCK = 40


@functools.cache
def filter_bpf() -> bytes:
    """The compiled BPF program, as bwrap's --seccomp expects it."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # not a syscall on this architecture
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    # new namespaces through clone(); clone3 passes flags in memory seccomp cannot read, so it reports
    # ENOSYS and libc falls back to clone(), as Docker's and Flatpak's profiles do.
    for flag in CLONE_NEW_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # vsock reaches the hypervisor and other guests' listeners whatever the network namespace (Docker's
    # default profile denies it too)
    for call in ("socket", "socketpair"):
        f.add_rule(sc.ERRNO(errno.EPERM), call, sc.Arg(0, sc.EQ, AF_VSOCK))
    # injecting keystrokes into a terminal
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    fd = os.memfd_create("execbox-seccomp")
    with os.fdopen(fd, "w+b") as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


# the machine's own ABI in Docker's naming; syscalls of any other ABI are killed, as in filter_bpf
_DOCKER_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


@functools.cache
def docker_profile() -> str:
    """The same filter as filter_bpf, as a Docker seccomp profile (JSON), so that containers deny exactly
    what local sandboxes deny (Docker's own default profile allows io_uring and AF_VSOCK on some versions)."""
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}

    def arg(index: int, value: int, op: str, mask: int | None = None) -> dict[str, object]:
        return {"index": index, "value": mask if mask is not None else value,
                "valueTwo": value if mask is not None else 0, "op": op}

    rules: list[dict[str, object]] = [{"names": list(DENIED_SYSCALLS), **eperm}]
    rules += [{"names": ["clone"], **eperm, "args": [arg(0, flag, "SCMP_CMP_MASKED_EQ", flag)]}
              for flag in CLONE_NEW_FLAGS]
    rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    rules += [{"names": [call], **eperm, "args": [arg(0, AF_VSOCK, "SCMP_CMP_EQ")]}
              for call in ("socket", "socketpair")]
    rules.append({"names": ["ioctl"], **eperm, "args": [arg(1, TIOCSTI, "SCMP_CMP_MASKED_EQ", 0xFFFFFFFF)]})
    arch = _DOCKER_ARCH.get(os.uname().machine)
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch] if arch else [],
                       "syscalls": rules})


def available() -> str | None:
    """None when the filter can be built here, else why not."""
    try:
        filter_bpf()
    except Exception as e:  # libseccomp missing or too old: report, the provider refuses to run
        return f"{type(e).__name__}: {e}"
    return None
