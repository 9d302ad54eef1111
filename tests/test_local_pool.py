"""The warm pool: the generic PrestartPool (no root needed) and the local provider's pre-started sandboxes
(root: uid slots, tmpfs workdirs, cgroups). Hostile programs through the pool: tests/escapes/test_pool.py."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.providers import local_provider

from execbox import Engine, ExecutionRequest, Limits, RequestError
from execbox.pool import PrestartPool
from execbox.providers.base import ExecSpec, InstanceSpec
from execbox.providers.local import LocalProvider
from execbox.providers.registry import ProviderRegistry

# ---------------------------------------------------------------------------------------------- PrestartPool


class Things:
    def __init__(self) -> None:
        self.made: list[int] = []
        self.destroyed: list[int] = []
        self.fail = False
        self.lock = threading.Lock()

    def make(self) -> int | None:
        if self.fail:
            raise RuntimeError("cannot")
        with self.lock:
            self.made.append(len(self.made))
            return self.made[-1]

    def destroy(self, item: int) -> None:
        self.destroyed.append(item)


def test_pool_makes_nothing_until_asked_then_fills() -> None:
    t = Things()
    pool = PrestartPool(3, t.make, t.destroy)
    try:
        time.sleep(0.05)
        assert t.made == []
        assert pool.take() is None  # empty: the caller goes the slow way; refilling starts
        assert pool.fill(timeout=5)
        assert pool.idle == 3
        assert pool.take() == 0 and pool.taken == 1
        assert pool.fill(timeout=5) and pool.idle == 3 and t.made == [0, 1, 2, 3]
    finally:
        pool.close(timeout=5)
    assert sorted(t.destroyed) == [1, 2, 3]  # the idle ones; the taken one is its taker's


def test_pool_drain_destroys_idle_and_waits_for_deferred_jobs() -> None:
    t = Things()
    pool = PrestartPool(2, t.make, t.destroy)
    done = threading.Event()
    try:
        assert pool.fill(timeout=5)
        pool.defer(lambda: (time.sleep(0.1), done.set()))
        pool.drain(timeout=5)
        assert done.is_set() and sorted(t.destroyed) == [0, 1] and pool.idle == 0
        time.sleep(0.05)
        assert len(t.made) == 2  # drained: no refilling until the next take() or fill()
    finally:
        pool.close(timeout=5)


def test_pool_backs_off_when_make_fails_and_recovers() -> None:
    t = Things()
    t.fail = True
    pool = PrestartPool(1, t.make, t.destroy)
    try:
        assert not pool.fill(timeout=0.3)
        t.fail = False
        assert pool.fill(timeout=5) and pool.idle == 1
    finally:
        pool.close(timeout=5)


def test_closed_pool_runs_deferred_jobs_at_once_and_hands_out_nothing() -> None:
    t = Things()
    pool = PrestartPool(1, t.make, t.destroy)
    pool.close(timeout=5)
    ran: list[int] = []
    pool.defer(lambda: ran.append(1))
    assert ran == [1] and pool.take() is None


# ---------------------------------------------------------------------------------------------- LocalProvider

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the warm pool needs root (uids, tmpfs, cgroups)")
SPEC = dict(wall_time_s=5, cpu_time_s=5, memory_mb=128, pids=32, output_bytes=65536, file_size_mb=8,
            open_files=64)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    p = local_provider("pool", warm_pool=2, warm_pool_disk_mb=16)
    runtime = p.runtime
    yield p
    await p.aclose()
    assert not list((runtime / "instances").iterdir()), "aclose() left instance dirs"
    assert p.slots is not None and not p.slots.held, "aclose() left uid slots held"
    shutil.rmtree(runtime, ignore_errors=True)


@needs_root
async def test_matching_requests_take_the_pool_others_go_cold(provider: LocalProvider) -> None:
    pool = provider.warm_pool
    assert pool is not None and pool.fill(timeout=30)
    for spec, pooled in ((InstanceSpec(disk_mb=16), True), (InstanceSpec(disk_mb=32), False),
                         (InstanceSpec(disk_mb=16, network=True), False)):
        before = pool.taken
        async with await provider.start(spec) as inst:
            out = await inst.exec(ExecSpec(argv=("/bin/echo", "hi"), **SPEC))
        assert out.exit_code == 0 and out.stdout == b"hi\n", out
        assert pool.taken - before == int(pooled), spec


@needs_root
async def test_a_pooled_instance_runs_its_later_execs_cold(provider: LocalProvider) -> None:
    # compile + run: the pre-started sandbox serves the first exec; the second gets a sandbox of its own
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    async with await provider.start(InstanceSpec(disk_mb=16)) as inst:
        await inst.write_files({"a.sh": b"echo $$ > /tmp/first; echo one"})
        first = await inst.exec(ExecSpec(argv=("bash", "a.sh"), **SPEC))
        second = await inst.exec(ExecSpec(argv=("cat", "/tmp/first", "/work/a.sh"), **SPEC))
    assert first.stdout == b"one\n", first
    assert second.stdout == b"2\necho $$ > /tmp/first; echo one", second  # the workdir is the instance's


@needs_root
async def test_a_dead_pre_started_sandbox_falls_back_to_the_cold_path(provider: LocalProvider) -> None:
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    inst = await provider.start(InstanceSpec(disk_mb=16))
    try:
        assert inst.wd.prepared is not None
        os.kill(inst.wd.prepared.proc.pid, 9)
        inst.wd.prepared.proc.wait()
        out = await inst.exec(ExecSpec(argv=("/bin/echo", "still"), **SPEC))
        assert out.stdout == b"still\n", out
    finally:
        await inst.close()


@needs_root
async def test_a_missing_program_is_reported_as_on_the_cold_path(provider: LocalProvider) -> None:
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    outs = []
    for disk in (16, 32):  # pooled, then cold
        async with await provider.start(InstanceSpec(disk_mb=disk)) as inst:
            outs.append(await inst.exec(ExecSpec(argv=("no-such-program",), **SPEC)))
    assert outs[0].exit_code == outs[1].exit_code == 1
    assert outs[0].stderr == outs[1].stderr == b"bwrap: execvp no-such-program: No such file or directory\n"


@needs_root
async def test_too_large_arguments_are_the_requests_fault(provider: LocalProvider) -> None:
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    async with await provider.start(InstanceSpec(disk_mb=16)) as inst:
        with pytest.raises(RequestError, match="too large"):
            await inst.exec(ExecSpec(argv=("/bin/true", "A" * 200_000), **SPEC))


@needs_root
async def test_engine_results_through_the_pool(provider: LocalProvider) -> None:
    engine = Engine(providers=ProviderRegistry(instances={"local": provider}))
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    r = await engine.execute(ExecutionRequest(
        language="python", code="import os, sys\nprint(sys.stdin.read(), os.environ['X'], os.getcwd())",
        stdin="in", env={"X": "y"}, limits=Limits(disk_mb=16)))
    assert r.ok and r.stdout == "in y /work\n", r
    assert r.wall_time_s < 5 and r.cpu_time_s is not None and r.cpu_time_s < 1, r
    assert provider.warm_pool.taken == 1


@needs_root
async def test_aclose_waits_for_teardown_of_used_instances(provider: LocalProvider) -> None:
    assert provider.warm_pool is not None and provider.warm_pool.fill(timeout=30)
    paths = []
    for _ in range(3):
        async with await provider.start(InstanceSpec(disk_mb=16)) as inst:
            paths.append(inst.path)
            await inst.exec(ExecSpec(argv=("/bin/true",), **SPEC))
    await provider.aclose()
    assert not any(p.exists() for p in paths)


def test_uids_are_handed_out_in_turn(tmp_path: Path) -> None:
    """A uid given back is the last one handed out again (its zombies may still count against the next
    instance's RLIMIT_NPROC), and two holders never share one."""
    from execbox.providers.local.host import UidSlots

    slots = UidSlots(tmp_path, 5000, 3)
    a = slots.try_acquire()
    slots.release(a)  # type: ignore[arg-type]
    b, c = slots.try_acquire(), slots.try_acquire()
    assert (a, b, c) == (5000, 5001, 5002)
    assert slots.try_acquire() == 5000 and slots.try_acquire() is None  # every uid held
    slots.release(c)  # type: ignore[arg-type]
    assert slots.try_acquire() == 5002
