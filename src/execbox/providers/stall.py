"""Out of memory without an OOM kill: a group stuck at its memory limit.

The kernel is meant to OOM-kill a cgroup that hits its limit with nothing left to reclaim. It does not always:
on cgroup v1 (this project's CI hosts, kernel 6.x) a node program filling a docker container's limit spins for
seconds in the kernel's reclaim loop (within 200 KiB of its limit, under 1 MiB of page cache, 80% system
time, the failure counter not even moving) until the wall-time limit kills it and the run reads as a timeout.
A run in that state is out of memory, so the watchers of both providers sample the group with this class
and kill it as a memory-limit stop once it has been stuck for ``STALL_S``: at its limit, with (almost) no
page cache left to reclaim, spending most of a CPU in the kernel. A program computing near its limit (user
time) or streaming a file through the page cache (plenty to reclaim) does not match.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STALL_S = 1.0
SYSTEM_SHARE = 0.5  # of one CPU over the window
AT_LIMIT_BYTES = 512 << 10  # usage this close to the limit is at it
RECLAIMABLE_SHARE = 0.02  # file pages left, as a share of the limit (at least RECLAIMABLE_MIN_BYTES)
RECLAIMABLE_MIN_BYTES = 2 << 20

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _fields(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


class MemoryStall:
    """Samples one group's memory (cgroup v1 or v2 files) and tells when it is stuck at its limit."""

    def __init__(self, memory_dir: Path, cpu_dir: Path, version: int) -> None:
        self.memory_dir, self.cpu_dir, self.v1 = memory_dir, cpu_dir, version == 1
        self._start: tuple[float, float] | None = None  # (monotonic time, system CPU seconds) when it began

    def stalled(self) -> bool:
        """Take a sample; True once the group has been stuck at its limit for ``STALL_S``."""
        system_s = self._sample()
        if system_s is None:
            self._start = None
            return False
        if self._start is None:
            self._start = (time.monotonic(), system_s)
            return False
        t0, s0 = self._start
        window = time.monotonic() - t0
        return window >= STALL_S and system_s - s0 >= SYSTEM_SHARE * window

    def _sample(self) -> float | None:
        """The group's system CPU seconds when it is at its limit with nothing to reclaim; None otherwise.
        Reads two files in the common case (far from the limit)."""
        m = self.memory_dir
        usage = _read(m / ("memory.usage_in_bytes" if self.v1 else "memory.current")).strip()
        limit = _read(m / ("memory.limit_in_bytes" if self.v1 else "memory.max")).strip()
        if not (usage.isdigit() and limit.isdigit()) or int(usage) < int(limit) - AT_LIMIT_BYTES:
            return None
        stat = _fields(_read(m / "memory.stat"))
        prefix = "total_" if self.v1 else ""
        reclaimable = stat.get(f"{prefix}active_file", 0) + stat.get(f"{prefix}inactive_file", 0)
        if reclaimable > max(RECLAIMABLE_MIN_BYTES, int(limit) * RECLAIMABLE_SHARE):
            return None
        if self.v1:
            ticks = _fields(_read(self.cpu_dir / "cpuacct.stat")).get("system")
            return None if ticks is None else ticks * _TICK_S
        usec = _fields(_read(self.cpu_dir / "cpu.stat")).get("system_usec")
        return None if usec is None else usec / 1e6
