"""Interactive runs (Piston's /api/v2/connect): a client's signals and stdin reach the exec they were sent to
and nothing else. Signals go to the processes of the exec's own cgroup (each pinned by a pidfd before it is
signalled), so neither the sandbox's other processes nor the host's can be hit."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from execbox.providers.base import ExecSpec, InstanceSpec, LiveInput

if TYPE_CHECKING:
    from conftest import Sandbox

pytestmark = pytest.mark.local_only("docker instances take no live input: an interactive run there is a RequestError")


def spec(script: str, live: LiveInput | None = None, wall_time_s: float = 10) -> ExecSpec:
    return ExecSpec(argv=("sh", "-c", script), wall_time_s=wall_time_s, cpu_time_s=wall_time_s, memory_mb=64,
                    pids=16, output_bytes=65536, file_size_mb=1, open_files=64, live=live)


async def test_a_clients_signal_kills_its_exec_and_spares_the_sandboxs_other_processes(sandbox: Sandbox) -> None:
    instance = await sandbox.provider.start(InstanceSpec(disk_mb=16, persistent=True, memory_mb=128, pids=32))
    async with instance:
        bg = await instance.exec(spec("sleep 60 >/dev/null 2>&1 & echo $!"))
        pid = bg.stdout.decode().strip()
        live = LiveInput()
        live.signal(signal.SIGKILL)
        hit = await instance.exec(spec("trap '' TERM INT; sleep 30", live=live, wall_time_s=20))
        assert hit.signal == signal.SIGKILL and hit.stopped_by is None and hit.wall_time_s < 10, hit
        alive = await instance.exec(spec(f"kill -0 {pid} && echo alive"))
        assert alive.stdout == b"alive\n", alive  # the earlier exec's background process was not signalled


async def test_live_stdin_ends_with_eof_and_a_flood_does_not_block_the_host(sandbox: Sandbox) -> None:
    instance = await sandbox.provider.start(InstanceSpec(disk_mb=16, persistent=True, memory_mb=128, pids=32))
    async with instance:
        live = LiveInput()
        live.write(b"x" * (4 * 1024 * 1024))  # far more than a pipe holds, to a program that reads 10 bytes
        live.write(b"tail")
        live.close()
        r = await instance.exec(spec("head -c 10; echo; echo done", live=live))
        assert r.exit_code == 0 and r.stdout == b"xxxxxxxxxx\ndone\n", r
        counted = LiveInput()
        counted.write(b"a\nb\nc\n")
        counted.close()  # EOF: wc ends
        r = await instance.exec(spec("wc -l", live=counted))
        assert r.stdout.strip() == b"3", r
