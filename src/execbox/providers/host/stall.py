"""Out of memory without an OOM kill: a group stuck at its memory limit.

The kernel is meant to OOM-kill a cgroup that hits its limit with nothing left to reclaim. It does not always:
on cgroup v1 (this project's CI hosts, kernel 6.x) a node program filling a docker container's limit spins for
seconds in the kernel's reclaim loop (within 200 KiB of its limit, under 1 MiB of page cache, 80% system
time, the failure counter not even moving) until the wall-time limit kills it and the run reads as a timeout.
A run in that state is out of memory, so the watchers of both providers sample the group with this class
and kill it as a memory-limit stop once it has been stuck for ``STALL_S``: at its limit, with (almost) no
page cache left to reclaim, spending most of the CPU time it gets in the kernel. A program computing near
its limit (user time), sleeping at it (no CPU) or streaming a file through the page cache (plenty to
reclaim) does not match.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STALL_S = 1.0
SYSTEM_SHARE = 0.8  # of the CPU time the group got in the window (on a loaded host it gets little)
BUSY_SHARE = 0.05  # the group used at least this much of one CPU in the window: not just sleeping
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
        self._start: tuple[float, float, float] | None = None  # (time, system s, all CPU s) when it began

    def stalled(self) -> bool:
        """Take a sample; True once the group has been stuck at its limit for ``STALL_S``."""
        cpu = self._sample()
        if cpu is None:
            self._start = None
            return False
        now = time.monotonic()
        if self._start is None:
            self._start = (now, *cpu)
            return False
        t0, system0, total0 = self._start
        window, system, total = now - t0, cpu[0] - system0, cpu[1] - total0
        return window >= STALL_S and total >= BUSY_SHARE * window and system >= SYSTEM_SHARE * total

    def _sample(self) -> tuple[float, float] | None:
        """The group's (system, user + system) CPU seconds when it is at its limit with nothing to reclaim;
        None otherwise. Reads two files in the common case (far from the limit)."""
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
            ticks = _fields(_read(self.cpu_dir / "cpuacct.stat"))
            if "system" not in ticks or "user" not in ticks:
                return None
            return ticks["system"] * _TICK_S, (ticks["system"] + ticks["user"]) * _TICK_S
        usec = _fields(_read(self.cpu_dir / "cpu.stat"))
        if "system_usec" not in usec or "usage_usec" not in usec:
            return None
        return usec["system_usec"] / 1e6, usec["usage_usec"] / 1e6
