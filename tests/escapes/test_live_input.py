"""Interactive runs (Piston's /api/v2/connect): a client's signals and stdin reach the exec they were sent to
and nothing else. Signals go to the processes of the exec's own cgroup (each pinned by a pidfd before it is
signalled), so neither the sandbox's other processes, nor another run's, nor the host's can be hit; on docker
the AGENT that reports the exec's end (in that cgroup too) and the container's init are spared. Run on both
providers (a persistent instance each: the local sandbox, a docker container of its own)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import TYPE_CHECKING

from execbox.providers.base import ExecSpec, Instance, InstanceSpec, LiveInput, OutputChunk, ProcessOutcome

if TYPE_CHECKING:
    from conftest import Sandbox

SPEC = InstanceSpec(disk_mb=16, persistent=True, memory_mb=128, pids=32)


async def streamed(instance: Instance, exec_spec: ExecSpec, ready: bytes, then: list[int]) -> ProcessOutcome:
    """Run ``exec_spec`` streamed; once its output holds ``ready`` (the program set itself up), send ``then``
    (signals) through its live input."""
    assert exec_spec.live is not None
    out, outcome = b"", None
    async for item in instance.stream(exec_spec):
        if isinstance(item, OutputChunk):
            sent = ready in out
            out += item.data
            if not sent and ready in out:
                for signum in then:
                    exec_spec.live.signal(signum)
        else:
            outcome = item
    assert outcome is not None
    return outcome


def spec(script: str, live: LiveInput | None = None, wall_time_s: float = 10) -> ExecSpec:
    return ExecSpec(argv=("sh", "-c", script), wall_time_s=wall_time_s, cpu_time_s=wall_time_s, memory_mb=64,
                    pids=16, output_bytes=65536, file_size_mb=1, open_files=64, live=live)


async def test_a_clients_signal_kills_its_exec_and_spares_the_sandboxs_other_processes(sandbox: Sandbox) -> None:
    instance = await sandbox.provider.start(SPEC)
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
    instance = await sandbox.provider.start(SPEC)
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


async def test_a_signal_the_program_ignores_hits_nothing_else_the_agent_reports_its_end(sandbox: Sandbox) -> None:
    """SIGTERM and SIGINT reach every process of the exec but the one that reports its end (docker's AGENT,
    in the exec's cgroup too): the program ignores them and ends normally, its exit status reported; the
    sandbox (its init, its agent for the next exec) lives on."""
    instance = await sandbox.provider.start(SPEC)
    async with instance:
        live = LiveInput()
        r = await streamed(instance, spec("trap '' TERM INT HUP; echo ready; sleep 1; echo end", live=live),
                           b"ready", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
        assert r.exit_code == 0 and r.signal is None and r.stopped_by is None, r
        assert r.stdout == b"ready\nend\n", r
        after = await instance.exec(spec("echo next"))
        assert after.exit_code == 0 and after.stdout == b"next\n", after


async def test_a_signal_reaches_its_run_only_never_another_one(sandbox: Sandbox) -> None:
    a = await sandbox.provider.start(SPEC)
    b = await sandbox.provider.start(SPEC)
    async with a, b:
        other = asyncio.ensure_future(a.exec(spec("echo ready; sleep 2; echo survived", live=LiveInput())))
        live = LiveInput()
        hit = await streamed(b, spec("echo ready; sleep 30", live=live), b"ready", [signal.SIGKILL])
        assert hit.signal == signal.SIGKILL and hit.wall_time_s < 10, hit
        spared = await other
        assert spared.exit_code == 0 and spared.stdout == b"ready\nsurvived\n", spared


async def test_a_signal_arrives_while_a_flood_of_stdin_waits_for_a_program_that_never_reads(
        sandbox: Sandbox) -> None:
    """Stdin the program does not read waits (bytes still pending, nothing blocks the host); a signal sent
    behind it is delivered at once, and the run ends."""
    instance = await sandbox.provider.start(SPEC)
    async with instance:
        live = LiveInput()
        for _ in range(64):
            live.write(b"x" * 65536)  # 4 MiB, far more than pipes and socket buffers hold
        started = time.monotonic()
        r = await streamed(instance, spec("trap '' TERM INT; echo ready; sleep 30", live=live, wall_time_s=20),
                           b"ready", [signal.SIGKILL])
        assert r.signal == signal.SIGKILL and r.stopped_by is None and time.monotonic() - started < 10, r
