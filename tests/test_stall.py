"""The memory-stall watch (providers/host/stall.py) on cgroup files written by the test: which states count as stuck
at the limit. The real case (a node program the kernel never OOM-kills in a docker container on cgroup v1) is
tests/escapes/test_resources.py::test_memory_bomb_javascript_buffers[docker]."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from execbox.providers.host import stall
from execbox.providers.host.stall import MemoryStall

LIMIT = 160 << 20
TICK = stall._TICK_S


def write_v1(d: Path, *, usage: int, file_pages: int, system_s: float, user_s: float = 0.0) -> None:
    (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (d / "memory.limit_in_bytes").write_text(f"{LIMIT}\n")
    (d / "memory.stat").write_text(f"cache {file_pages}\ntotal_active_file 0\ntotal_inactive_file {file_pages}\n")
    (d / "cpuacct.stat").write_text(f"user {round(user_s / TICK)}\nsystem {round(system_s / TICK)}\n")


def write_v2(d: Path, *, usage: int, file_pages: int, system_s: float, user_s: float = 0.0) -> None:
    (d / "memory.current").write_text(f"{usage}\n")
    (d / "memory.max").write_text(f"{LIMIT}\n")
    (d / "memory.stat").write_text(f"anon {usage}\nactive_file {file_pages}\ninactive_file 0\n")
    (d / "cpu.stat").write_text(f"usage_usec {round((system_s + user_s) * 1e6)}\nuser_usec {round(user_s * 1e6)}\n"
                                f"system_usec {round(system_s * 1e6)}\n")


@pytest.fixture(autouse=True)
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stall, "STALL_S", 0.2)


@pytest.mark.parametrize(("version", "write"), [(1, write_v1), (2, write_v2)])
@pytest.mark.parametrize(("usage", "file_pages", "system_share", "user_share", "stuck"), [
    (LIMIT - (100 << 10), 800 << 10, 0.9, 0.05, True),  # the kernel spinning in reclaim: stuck
    (LIMIT - (100 << 10), 800 << 10, 0.15, 0.01, True),  # the same on a loaded host: little CPU, all kernel
    (LIMIT - (100 << 10), 800 << 10, 0.1, 0.9, False),  # computing at its limit in user space
    (LIMIT - (100 << 10), 800 << 10, 0.0, 0.0, False),  # sleeping at its limit
    (LIMIT, 40 << 20, 0.9, 0.05, False),  # at its limit, but with page cache to reclaim
    (LIMIT - (8 << 20), 0, 0.9, 0.05, False),  # 8 MiB below its limit
])
def test_stuck_only_at_the_limit_with_nothing_to_reclaim_in_the_kernel(
        tmp_path: Path, version: int, write, usage: int, file_pages: int, system_share: float,
        user_share: float, stuck: bool) -> None:
    watch = MemoryStall(tmp_path, tmp_path, version)
    start = time.monotonic()
    seen = []
    for _ in range(8):
        elapsed = time.monotonic() - start
        write(tmp_path, usage=usage, file_pages=file_pages, system_s=system_share * elapsed,
              user_s=user_share * elapsed)
        seen.append(watch.stalled())
        time.sleep(0.05)
    assert seen[0] is False  # never at the first sample: a window must pass
    assert seen[-1] is stuck


def test_a_break_in_the_stall_starts_the_window_again(tmp_path: Path) -> None:
    watch = MemoryStall(tmp_path, tmp_path, 2)
    start = time.monotonic()

    def sample(usage: int) -> bool:
        write_v2(tmp_path, usage=usage, file_pages=0, system_s=time.monotonic() - start)
        time.sleep(0.05)
        return watch.stalled()

    assert [sample(LIMIT) for _ in range(6)][-1] is True
    assert sample(LIMIT - (8 << 20)) is False  # it freed memory
    assert sample(LIMIT) is False  # stuck again: a new window begins


def test_missing_files_are_never_a_stall(tmp_path: Path) -> None:
    watch = MemoryStall(tmp_path / "gone", tmp_path / "gone", 1)
    assert not any(watch.stalled() for _ in range(3))
