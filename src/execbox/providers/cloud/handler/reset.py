"""The environment reset after each run: what keeps one tenant's leftovers from the next in a function
service's reused VM or container (the VM or container itself is the boundary between this service and the
rest of the world; runs are one at a time).

    every other process of the programs' uid killed  kill(-1, SIGKILL), see below
    its children reaped                              the handler is their subreaper
    the scratch directories emptied                  /tmp, /var/tmp, /dev/shm, /dev/mqueue, /run/lock by default
    its System V IPC objects removed                 shared memory, semaphores, message queues
    its keyrings cleared                             user, user-session, persistent (they outlive processes)

kill(-1) signals every process the caller may signal except the caller itself and pid 1. When the programs
run as a uid of their own (the handler is root: a container), it comes from a forked child that takes that
uid as its effective one (its real and saved uid another's, so that none of them can stop it) and exits:
only that uid's processes can be reached. When they share the handler's uid (Lambda), the
handler sends it itself, so it is never among them; a parent of that uid would be (it is refused at the
start: the handler must be exec'd directly). That is only safe where the environment is the handler's
alone: ``enabled`` says where it runs, and the handler never resets anywhere else.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from execbox.providers.cloud.process import (
    KEYCTL_CLEAR,
    KEYCTL_GET_PERSISTENT,
    NO_KEYS,
    keyctl,
    processes,
    uid_of,
)

log = logging.getLogger("execbox.handler")
# every directory the programs can write in the handler's image: /run/lock (/var/lock) is 1777 in Debian
DEFAULT_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue", "/run/lock")
KILL_WAIT_S = 2.0
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
IPC_RMID = 0
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -2, -4, -5

# the variables each function service sets in its containers (Cloud Run jobs set CLOUD_RUN_JOB instead)
SERVICES: dict[str, tuple[str, ...]] = {
    "lambda": ("AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_RUNTIME_API"),
    "cloud-run": ("K_SERVICE", "K_REVISION"),
    "container-apps": ("CONTAINER_APP_NAME", "CONTAINER_APP_REVISION"),
}


def service_of(env: Mapping[str, str]) -> str | None:
    """The function service this process runs on, from the variables it sets (None: none of them)."""
    return next((name for name, names in SERVICES.items() if all(env.get(n) for n in names)), None)


def enabled(env: Mapping[str, str]) -> bool | None:
    """Whether the reset runs: EXECBOX_HANDLER_RESET=1/0 said explicitly, else inside a function service.
    None: neither (the handler then refuses to run anything)."""
    said = env.get("EXECBOX_HANDLER_RESET", "").strip()
    if said in ("1", "0"):
        return said == "1"
    return True if service_of(env) else None


class ResetUnsafe(Exception):
    """The reset would kill what it must not: the handler refuses to run anything."""


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


@dataclass
class Reset:
    """The reset for programs that run as ``uid`` (None: the handler's own) with ``dirs`` to empty."""

    uid: int | None
    dirs: Sequence[Path] = field(default_factory=lambda: [Path(d) for d in DEFAULT_DIRS])

    @property
    def program_uid(self) -> int:
        return os.getuid() if self.uid is None else self.uid

    def prepare(self) -> None:
        """Once, before the first run: the handler becomes the subreaper of everything its programs start
        (a daemon is reparented to it, reaped by the reset) and undumpable (a program of its uid can neither
        ptrace it nor read its memory or environment through /proc: the service's credentials are there).
        ResetUnsafe when a parent shares the programs' uid (kill(-1) would reach it)."""
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _prctl(PR_SET_DUMPABLE, 0)
        if self.uid is not None:
            if self.uid == os.getuid():
                raise ResetUnsafe("the programs' uid must not be the handler's own when it is given")
            return
        if os.getuid() == 0:
            raise ResetUnsafe("a handler running as root must run its programs as another uid "
                              "(EXECBOX_HANDLER_RUN_AS): kill(-1) as root reaches every process")
        pid = os.getppid()
        while pid > 1:
            if uid_of(pid) == os.getuid():
                raise ResetUnsafe(f"the handler's parent {pid} runs as its uid and the reset would kill it: "
                                  "exec the handler directly (no shell or wrapper of the same uid)")
            pid = _parent_of(pid)

    def __call__(self) -> list[str]:
        """Reset the environment; what could not be done (empty: all of it was)."""
        problems = self._kill()
        for d in self.dirs:
            problems += _empty(d)
        problems += _remove_ipc(self.program_uid)
        if not problems:  # its child takes the uid: with a survivor of that uid there, it could be stopped
            problems += _clear_keyrings(self.uid)
        for p in problems:
            log.error("environment reset incomplete: %s", p)
        return problems

    def _survivors(self) -> list[int]:
        """The uid's processes still there: alive, or zombies this handler has yet to reap (a process that
        was still dying at the last reap; it would show in the next run and count against its limit)."""
        me, uid = os.getpid(), self.program_uid
        return [p.pid for p in processes() if p.pid not in (me, 1) and p.state != "X" and uid_of(p.pid) == uid
                and (p.state != "Z" or _parent_of(p.pid) == me)]

    def _kill(self) -> list[str]:
        deadline = time.monotonic() + KILL_WAIT_S
        while True:
            if self.uid is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(-1, signal.SIGKILL)  # never the caller, never pid 1
            else:
                _kill_as(self.uid)
            _reap()
            left = self._survivors()
            if not left:
                return []
            if time.monotonic() > deadline:
                return [f"processes {left[:10]} of uid {self.program_uid} survived SIGKILL"]
            time.sleep(0.01)


# The real and saved uid the kill's child takes (its effective uid is the programs'): not the programs', so
# that none of them can signal it (a SIGSTOP between its setresuid and its kill hung the reset for good).
# kill(-1) also reaches this uid's processes: nobody's, of which the handler's environment has none.
GUARD_UIDS = (65534, 65533)


def _kill_as(uid: int) -> None:
    """kill(-1, SIGKILL) with the effective uid ``uid``: every process of that uid, from a forked child that
    no process of that uid can signal, trace or stop (its real and saved uid are another's)."""
    guard = next(g for g in GUARD_UIDS if g != uid)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(guard, uid, guard)
            with contextlib.suppress(OSError):
                os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read().decode(errors="replace")
        return int(stat_line[stat_line.rfind(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _reap() -> None:
    """Wait for every child that has ended (the killed programs and the daemons reparented to us)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _empty(directory: Path) -> list[str]:
    """Remove everything inside ``directory``: by descriptors, one directory open at a time (a program may
    nest a tree deeper than PATH_MAX or any recursion), never following symlinks, making its unreadable
    directories readable first. Nothing of the programs runs meanwhile, so ".." leads back up."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    except OSError as e:
        return [f"cannot open {directory}: {e.strerror}"]
    problems: list[str] = []
    stack: list[tuple[str, list[str]]] = []  # (a directory's name in its parent, its entries left)
    try:
        stack.append(("", os.listdir(fd)))
        while stack and len(problems) <= 10:
            here, pending = stack[-1]
            if not pending:  # emptied: up one level, and remove it there
                stack.pop()
                if stack:
                    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    os.close(fd)
                    fd = parent
                    try:
                        os.rmdir(here, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        problems.append(f"cannot remove {_where(directory, stack, here)}: {e.strerror}")
                continue
            name = pending.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=fd)
                    continue
                if st.st_uid == os.geteuid():
                    os.chmod(name, 0o700, dir_fd=fd)
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                continue
            except OSError as e:
                problems.append(f"cannot remove {_where(directory, stack, name)}: {e.strerror}")
                continue
            os.close(fd)
            fd = child
            try:
                stack.append((name, os.listdir(fd)))
            except OSError as e:
                problems.append(f"cannot list {_where(directory, stack, name)}: {e.strerror}")
                stack.append((name, []))
    except OSError as e:
        problems.append(f"cannot empty {directory}: {e.strerror}")
    finally:
        os.close(fd)
    return problems


def _where(top: Path, stack: list[tuple[str, list[str]]], name: str) -> str:
    """An entry's path in words (shortened: it may be longer than any path)."""
    path = "/".join([str(top), *(n for n, _ in stack[1:]), name])
    return path if len(path) < 200 else f"{path[:90]}...{path[-90:]} ({len(stack)} levels deep)"


def _clear_keyrings(uid: int | None) -> list[str]:
    """Clear the keyrings of the programs' uid that outlive its processes (a tenant's keys would reach the
    next): its user, user-session and persistent keyrings, from a forked child that takes that uid (or
    keeps the handler's, when they share it; the handler keeps no keys)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        failed = 0
        try:
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            persistent = keyctl(KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
            for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING, persistent):
                if ring != -1 and keyctl(KEYCTL_CLEAR, ring) < 0 and ctypes.get_errno() not in NO_KEYS:
                    failed = 1
        except BaseException:
            failed = 1
        finally:
            os._exit(failed)
    _, status = os.waitpid(pid, 0)
    return [] if status == 0 else ["cannot clear the programs' keyrings"]


def _remove_ipc(uid: int) -> list[str]:
    """Remove the System V shared memory, semaphore sets and message queues ``uid`` owns or made: they
    outlive every process (a tenant could leave data or exhaust the limits for the next one)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    problems: list[str] = []
    # (table, the columns of the id, uid and cuid, how to remove one)
    tables: tuple[tuple[str, int, int, int, Callable[[int], int]], ...] = (
        ("shm", 1, 7, 9, lambda i: libc.shmctl(i, IPC_RMID, None)),
        ("sem", 1, 4, 6, lambda i: libc.semctl(i, 0, IPC_RMID)),
        ("msg", 1, 7, 9, lambda i: libc.msgctl(i, IPC_RMID, None)))
    for table, id_col, uid_col, cuid_col, remove in tables:
        try:
            lines = Path(f"/proc/sysvipc/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if uid in (int(cols[uid_col]), int(cols[cuid_col])) and remove(int(cols[id_col])) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.EIDRM):  # gone meanwhile
                    problems.append(f"cannot remove System V {table} {cols[id_col]}: {os.strerror(err)}")
    return problems
