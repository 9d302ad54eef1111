"""What every provider's supervisor decides the same way: why a process stopped."""

from __future__ import annotations

import signal

from execbox.providers.base import StopReason


def signal_stop(sig: int | None, cpu_time_s: float | None, cpu_limit_s: float) -> StopReason | None:
    """The stop reason a signal that ended the program stands for, if execbox measured it: SIGXCPU is the
    CPU-time rlimit firing only once the CPU time used (the cgroup's, or the reaped tree's) reached the limit
    (the rlimit is set above it). A program can send SIGXCPU to itself, its group or its parent after no CPU
    at all: that is a runtime error ("killed by signal 24"), never a timeout. Unmeasured: not a timeout."""
    if sig == signal.SIGXCPU and cpu_time_s is not None and cpu_time_s >= cpu_limit_s:
        return StopReason.CPU_TIME
    return None
