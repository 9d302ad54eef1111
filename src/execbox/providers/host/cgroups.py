"""Per-execution cgroups: memory, pids and CPU accounting, on cgroup v1 or v2.

Each execution gets its own group under ``<execbox's own cgroup>/execbox/``. The sandbox's first process
writes itself into the group before it drops privileges (local: launch.c, see local/host.py), so every
descendant is inside from birth. At the end every process in the group is killed and the group removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from execbox.providers.host.stall import MemoryStall

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class CgroupHost:
    """Where this host's cgroups live and whether execbox may create them."""

    version: int | None  # 1, 2 or None (unusable)
    bases: dict[str, Path] = field(default_factory=dict)  # controller -> execbox's base dir
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.version is not None


def _own_paths() -> dict[str, str]:
    """controller (or '' for v2) -> this process's cgroup path."""
    paths = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path
    return paths


def _mounts() -> dict[str, Path]:
    """controller (or '' for v2) -> mount point."""
    mounts: dict[str, Path] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _, opts = [*post.split(" "), "", ""][:3]
        mnt = Path(pre.split(" ")[4])
        if fstype == "cgroup2":
            mounts.setdefault("", mnt)
        elif fstype == "cgroup":
            for opt in opts.split(","):
                mounts.setdefault(opt, mnt)
    return mounts


def probe() -> CgroupHost:
    """Find and prepare execbox's base cgroups. Never raises: an unusable host is reported, not fatal."""
    if os.geteuid() != 0:
        return CgroupHost(None, problem="not running as root: cgroups cannot be created (rlimits only)")
    mounts, own = _mounts(), _own_paths()
    if all(c in mounts for c in V1_CONTROLLERS):
        bases = {c: mounts[c] / own.get(c, "/").lstrip("/") / "execbox" for c in V1_CONTROLLERS}
        try:
            for base in bases.values():
                base.mkdir(exist_ok=True)
        except OSError as e:
            return CgroupHost(None, problem=f"cannot create cgroup v1 groups: {e}")
        return CgroupHost(1, bases)
    if "" in mounts:
        base = mounts[""] / own.get("", "/").lstrip("/") / "execbox"
        try:
            base.mkdir(exist_ok=True)
            wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS)
            if not _write(base.parent / "cgroup.subtree_control", wanted):
                # v2 forbids controllers on a group that holds processes: move ourselves into a leaf.
                leaf = base.parent / "execbox-supervisor"
                leaf.mkdir(exist_ok=True)
                _write(leaf / "cgroup.procs", str(os.getpid()))
                if not _write(base.parent / "cgroup.subtree_control", wanted):
                    raise OSError("cannot enable memory, pids and cpu controllers")
            if not _write(base / "cgroup.subtree_control", wanted):
                raise OSError("cannot enable controllers for execbox's groups")
        except OSError as e:
            return CgroupHost(None, problem=f"cgroup v2 delegation failed: {e}")
        return CgroupHost(2, {"": base})
    return CgroupHost(None, problem="no cgroup filesystem with memory, pids and cpu accounting is mounted")


def remove_stale(host: CgroupHost, is_stale: Callable[[str], bool]) -> None:
    """Kill and remove groups left by an execbox process that died (``is_stale`` judges a group's name)."""
    names = {d.name for base in host.bases.values() if base.is_dir() for d in base.iterdir() if d.is_dir()}
    for name in filter(is_stale, names):
        Cgroup(host, name, create=False).remove()


class Cgroup:
    """The cgroup(s) of one execution."""

    def __init__(self, host: CgroupHost, name: str, *, memory_mb: int = 0, pids: int = 0,
                 create: bool = True) -> None:
        self.version = host.version
        self.dirs = {c: base / name for c, base in host.bases.items()}
        if not create:
            return
        for d in self.dirs.values():
            d.mkdir()
        if not self.set_limits(memory_mb, pids):
            self.remove()
            raise OSError(f"cannot set limits on cgroup {name}")

    def set_limits(self, memory_mb: int, pids: int) -> bool:
        """Set the memory (no swap) and pids limits, raising or lowering them. True when both are set."""
        limit = str(memory_mb * 1024 * 1024)
        if self.version == 1:
            mem = self.dirs["memory"]
            # the memory limit may never exceed memory+swap's: raise memsw first, lower it last
            memsw = mem / "memory.memsw.limit_in_bytes"
            _write(memsw, limit)
            ok = _write(mem / "memory.limit_in_bytes", limit)
            if not _write(memsw, limit) and memsw.exists():  # no swap to hide in, where accounted
                ok = False
            ok &= _write(self.dirs["pids"] / "pids.max", str(pids))
        else:
            d = self.dirs[""]
            ok = _write(d / "memory.max", limit) and _write(d / "pids.max", str(pids))
            _write(d / "memory.swap.max", "0")
        return ok

    def reset_peak(self) -> None:
        """Forget the peak memory so far (a pre-started sandbox's own setup), where the kernel allows."""
        if self.version == 1:
            _write(self.dirs["memory"] / "memory.max_usage_in_bytes", "0")

    @property
    def procs_files(self) -> list[str]:
        """Files a process writes its pid into to join this execution's group(s)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> list[int]:
        return sorted({int(p) for d in self.dirs.values() for p in _read(d / "cgroup.procs").split()})

    def cpu_time_s(self) -> float | None:
        if self.version == 1:
            ns = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
            return int(ns) / 1e9 if ns else None
        for line in _read(self.dirs[""] / "cpu.stat").splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None

    def peak_memory_mb(self) -> float | None:
        f = ("memory", "memory.max_usage_in_bytes") if self.version == 1 else ("", "memory.peak")
        raw = _read(self.dirs[f[0]] / f[1]).strip()
        return int(raw) / (1024 * 1024) if raw else None

    def memory_stall(self) -> MemoryStall:
        """A watch for this group stuck at its memory limit without an OOM kill (see stall.py)."""
        if self.version == 1:
            return MemoryStall(self.dirs["memory"], self.dirs["cpuacct"], 1)
        return MemoryStall(self.dirs[""], self.dirs[""], 2)

    def oom_killed(self) -> bool:
        f = ("memory", "memory.oom_control") if self.version == 1 else ("", "memory.events")
        for line in _read(self.dirs[f[0]] / f[1]).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and int(value) > 0:
                return True
        return False

    def signal(self, signum: int, spare: Collection[int] = ()) -> int:
        """Send ``signum`` to the group's processes but ``spare`` (host pids); how many it reached. Each is
        pinned by a pidfd and signalled only if still in the group then: never a host process that reused
        the pid of one that has just ended."""
        sent = 0
        for pid in self.pids():
            if pid in spare:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if pid in self.pids():
                    signal.pidfd_send_signal(pidfd, signum)
                    sent += 1
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
        return sent

    def kill_all(self, wait: bool = True) -> None:
        """SIGKILL every process in the group until none is left (forks racing the kill are caught).
        ``wait=False``: until no process that was not already sent SIGKILL is left (a killed process cannot
        fork any more), without waiting for the killed ones to be gone."""
        if self.version == 2 and _write(self.dirs[""] / "cgroup.kill", "1"):
            return
        killed: set[int] = set()
        for _ in range(100):
            pids = self.pids()
            if not pids or (not wait and killed.issuperset(pids)):
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.update(pids)
            if wait:
                time.sleep(0.001)

    def remove(self) -> bool:
        """Kill what is left, then remove the group(s); retries while the kernel reaps the last tasks.
        True when every group is gone (so no process of this execution can be left anywhere). Child groups
        (a persistent sandbox's exec groups) are removed first."""
        gone = True
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                for child in [c for c in d.iterdir() if c.is_dir()]:
                    sub = Cgroup.__new__(Cgroup)
                    sub.version, sub.dirs = self.version, {k: v / child.name for k, v in self.dirs.items()}
                    gone &= sub.remove()
        self.kill_all()
        for d in self.dirs.values():
            for attempt in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt % 20 == 0:
                        self.kill_all()
                    time.sleep(0.005)
            else:
                gone = False
        return gone
