"""Persistent sandboxes (issue 5) on the real local and docker providers (each test that takes ``manager`` runs
on both): state across execs, per-exec limits, streaming, files, TTL, labels, count limits, the sync facade.
Hostile programs against them: tests/escapes/test_sandbox_isolation.py; docker specifics (the container, its
removal): tests/docker/test_docker_sandbox.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.docker.conftest import provider_or_skip, sandbox_containers
from tests.providers import local_provider

import execbox
from execbox import (
    AsyncSandbox,
    CapacityError,
    Engine,
    ExecEvent,
    Limits,
    NotFoundError,
    RequestError,
    Sandbox,
    Status,
)
from execbox.providers.base import Provider
from execbox.providers.docker import DockerProvider
from execbox.providers.local import LocalProvider
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import SandboxManager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="persistent local sandboxes need root (uids, cgroups)")

LIMITS = Limits(wall_time_s=10, cpu_time_s=10, memory_mb=256, pids=64, disk_mb=128)
# every process's command line, from /proc (the docker images have no procps)
PS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


@pytest.fixture(scope="module", params=["local", "docker"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    if request.param == "docker":
        yield from provider_or_skip("python", "shell")
        return
    p = local_provider("sandbox", warm_pool=0, sandbox_pool=0)  # the cold path; the pool: test_the_sandbox_pool_...
    yield p
    shutil.rmtree(p.runtime, ignore_errors=True)


@pytest.fixture
async def manager(provider: Provider) -> AsyncIterator[SandboxManager]:
    """A manager on the test provider: each test passes it (``AsyncSandbox.create(..., manager=manager)``)."""
    m = SandboxManager(Engine(providers=ProviderRegistry(instances={provider.name: provider}, default=provider.name)),
                       max_sandboxes=4, reap_interval_s=0.1)
    yield m
    await m.aclose()
    assert len(m) == 0
    if isinstance(provider, DockerProvider):
        assert not sandbox_containers(provider), "a destroyed sandbox left its container"
        return
    assert isinstance(provider, LocalProvider)
    assert not list((provider.runtime / "instances").iterdir()), "a sandbox left its workdir"
    assert provider.slots is not None and not provider.slots.held, "a sandbox left its uid held"
    me = f"{os.getpid()}-"
    for base in provider.cgroups.bases.values():
        assert not [d for d in base.iterdir() if d.name.startswith(me)], "a sandbox left a cgroup"


async def test_files_and_a_background_process_persist_across_execs(manager: SandboxManager) -> None:
    async with await AsyncSandbox.create("python", labels={"t": "state"}, limits=LIMITS, manager=manager) as sb:
        r = await sb.exec("echo hello > note.txt && (sleep 300 > /dev/null 2>&1 &) && echo started")
        assert r.status is Status.OK and r.stdout == "started\n", r
        r = await sb.exec(f"cat note.txt; ({PS}) | grep -c '^sleep 300'")
        assert r.stdout == "hello\n1\n", r
        r = await sb.exec(["python3", "-c", "import os; print(sorted(os.listdir('.')))"])
        assert r.stdout == "['note.txt']\n", r
        r = await sb.exec("x=1; export Y=2; echo $x")  # shell state is per exec (a new process each time)
        r = await sb.exec("echo ${Y:-unset}")
        assert r.stdout == "unset\n"
        assert sb.language == "python" and sb.labels == {"t": "state"} and sb.id.startswith("sb_")
    assert not sb.alive
    with pytest.raises(NotFoundError):
        await sb.exec("true")


async def test_a_runaway_exec_is_killed_with_its_tree_and_the_sandbox_lives_on(manager: SandboxManager) -> None:
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as sb:
        assert (await sb.exec("(sleep 300 > /dev/null 2>&1 &); echo ok")).ok  # survives: a finished exec's
        t = time.monotonic()
        r = await sb.exec("sleep 200 > /dev/null 2>&1 & sleep 100", limits=Limits(wall_time_s=1))
        assert r.status is Status.TIMEOUT and r.message == "wall time limit of 1.0s exceeded", r
        assert time.monotonic() - t < 5
        r = await sb.exec(PS)  # the runaway's own background sleep died with it; the other lives
        assert r.stdout.count("sleep 300") == 1 and "sleep 200" not in r.stdout, r
        r = await sb.exec("yes > /dev/null", limits=Limits(cpu_time_s=1))  # (the wall limit, 10 s: a loaded host)
        assert r.status is Status.TIMEOUT and "CPU time" in (r.message or ""), r
        assert (await sb.exec("echo alive")).stdout == "alive\n"


async def test_per_exec_memory_pids_and_output_limits(manager: SandboxManager) -> None:
    async with await AsyncSandbox.create("python", limits=LIMITS, manager=manager) as sb:
        r = await sb.exec(["python3", "-c", "b = bytearray(200 * 1024 * 1024); print(len(b))"],
                          limits=Limits(memory_mb=64))
        assert r.status is Status.MEMORY_LIMIT, r
        r = await sb.exec(["python3", "-c", "b = bytearray(100 * 1024 * 1024); print(len(b))"])
        assert r.ok and r.stdout == f"{100 * 1024 * 1024}\n", r  # the sandbox's own limit is higher
        r = await sb.exec("for i in $(seq 40); do sleep 5 & done; wait", limits=Limits(pids=8, wall_time_s=8))
        assert "fork" in r.stderr.lower() or "resource" in r.stderr.lower(), r
        r = await sb.exec("pkill sleep; yes", limits=Limits(output_bytes=1000))
        assert r.status is Status.OUTPUT_LIMIT and len(r.stdout) == 1000 and r.stdout_truncated, r
        with pytest.raises(RequestError):
            await sb.exec(["echo", "a\0b"])
        assert (await sb.exec("echo fine")).ok


async def test_concurrent_execs_in_one_sandbox(manager: SandboxManager) -> None:
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as sb:
        t = time.monotonic()
        rs = await asyncio.gather(*(sb.exec(f"sleep 1; echo {i}") for i in range(4)),
                                  sb.exec("sleep 30", limits=Limits(wall_time_s=1.5)))
        assert [r.stdout for r in rs[:4]] == [f"{i}\n" for i in range(4)]
        assert rs[4].status is Status.TIMEOUT
        assert time.monotonic() - t < 5  # they ran side by side


async def test_per_exec_limits_never_widen_the_sandbox(manager: SandboxManager) -> None:
    # one limit per sandbox: a 1 s wall cap would also bound the memory check's python (its start and 64 MiB of
    # page faults before the kill take longer than that on a loaded machine)
    async with await AsyncSandbox.create("python", limits=Limits(wall_time_s=1), manager=manager) as sb:
        r = await sb.exec("sleep 3", limits=Limits(wall_time_s=30))
        assert r.status is Status.TIMEOUT and r.message == "wall time limit of 1.0s exceeded", r
    async with await AsyncSandbox.create("python", limits=Limits(memory_mb=64), manager=manager) as sb:
        r = await sb.exec(["python3", "-c", "b = bytearray(100 * 1024 * 1024)"], limits=Limits(memory_mb=1024))
        assert r.status is Status.MEMORY_LIMIT, r


async def test_stream_delivers_the_first_chunk_before_the_command_ends(manager: SandboxManager) -> None:
    """The command prints, then waits for a file the test writes only once it has that output: it can end
    (rather than time out) only if the first chunk came while it was running."""
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as sb:
        events: list[ExecEvent] = []
        async for ev in sb.stream("echo first; while [ ! -e release ]; do sleep 0.05; done; echo second >&2; "
                                  "echo third", limits=Limits(wall_time_s=8)):
            if not events:
                assert (ev.type, ev.data) == ("stdout", "first\n"), ev
                await sb.files.write("release", b"")
            events.append(ev)
        kinds = [(e.type, e.data) for e in events]
        assert ("stderr", "second\n") in kinds and kinds[-1][0] == "exit", kinds
        result = events[-1].result
        assert result is not None and result.ok and result.stdout == "first\nthird\n" and result.stderr == "second\n"
        # leaving the loop early kills the command (as it happens: polled); the sandbox lives on
        async for ev in sb.stream("echo go; sleep 100 > /dev/null & sleep 101"):
            assert ev.type == "stdout"
            break
        r = await sb.exec(f"for i in $(seq 100); do ({PS}) | grep -q '^sleep 10' || break; sleep 0.05; done; "
                          f"({PS}) | grep -c '^sleep 10'")
        assert r.stdout == "0\n", r
        # the output cap holds while streaming
        chunks = [e async for e in sb.stream("yes", limits=Limits(output_bytes=5000))]
        assert sum(len(e.data) for e in chunks if e.type == "stdout") == 5000
        assert chunks[-1].result is not None and chunks[-1].result.status is Status.OUTPUT_LIMIT


async def test_files_round_trip_byte_for_byte(manager: SandboxManager) -> None:
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as sb:
        binary = bytes(range(256)) * 4 + b"\0\r\n\xff"
        await sb.files.write("bin/data.bin", binary)
        assert await sb.files.read("bin/data.bin") == binary
        big = os.urandom(50 * 1024 * 1024)
        await sb.files.write("big.bin", big)
        r = await sb.exec("sha256sum big.bin bin/data.bin && stat -c %U big.bin")
        lines = r.stdout.split("\n")
        assert lines[0].split()[0] == hashlib.sha256(big).hexdigest(), r
        assert lines[1].split()[0] == hashlib.sha256(binary).hexdigest()
        assert lines[2] == "sandbox"  # the program owns what the host wrote
        assert await sb.files.read("big.bin") == big
        await sb.exec("head -c 3000000 /dev/urandom > made.bin")
        made = await sb.files.read("made.bin")
        r = await sb.exec("sha256sum made.bin")
        assert r.stdout.split()[0] == hashlib.sha256(made).hexdigest() and len(made) == 3000000
        await sb.files.write("text.txt", "héllo\n")
        assert (await sb.exec("cat text.txt")).stdout == "héllo\n"
        listing = {(f.name, f.kind, f.size_bytes) for f in await sb.files.list()}
        assert listing == {("bin", "dir", 0), ("big.bin", "file", len(big)), ("made.bin", "file", 3000000),
                           ("text.txt", "file", 7)}
        assert [(f.path, f.kind) for f in await sb.files.list("bin")] == [("bin/data.bin", "file")]
        assert await sb.files.remove("big.bin") and not await sb.files.remove("big.bin")
        assert await sb.files.remove("bin")
        assert (await sb.exec("ls")).stdout == "made.bin\ntext.txt\n"
        with pytest.raises(NotFoundError):
            await sb.files.read("nope")
        with pytest.raises(NotFoundError):
            await sb.files.list("nope")
        for bad in ("../x", "/etc/passwd", "a/../../b", ""):
            with pytest.raises(RequestError):
                await sb.files.write(bad, b"x")
        with pytest.raises(execbox.SandboxError):  # beyond the disk quota
            await sb.files.write("huge.bin", b"\0" * (129 * 1024 * 1024))


async def test_idle_ttl_and_max_lifetime_reaping(manager: SandboxManager) -> None:
    idle = await AsyncSandbox.create("bash", ttl_s=0.5, limits=LIMITS, manager=manager)
    old = await AsyncSandbox.create("bash", ttl_s=60, max_lifetime_s=4, limits=LIMITS, manager=manager)
    busy = await AsyncSandbox.create("bash", ttl_s=0.5, limits=LIMITS, manager=manager)
    r = await busy.exec("sleep 1.5; echo done")  # an exec in progress is never idle
    assert r.ok and busy.alive, r
    await asyncio.sleep(1.0)
    assert not idle.alive and not busy.alive and old.alive
    await asyncio.sleep(2.5)
    assert not old.alive and len(manager) == 0
    with pytest.raises(NotFoundError):
        await old.exec("true")
    assert await AsyncSandbox.list(manager=manager) == []


async def test_get_or_create_creates_one_under_concurrency(manager: SandboxManager) -> None:
    sbs = await asyncio.gather(*(AsyncSandbox.get_or_create({"project": "demo"}, language="bash", limits=LIMITS,
                                                            manager=manager)
                                 for _ in range(6)))
    assert len({s.id for s in sbs}) == 1 and len(manager) == 1
    other = await AsyncSandbox.get_or_create({"project": "other"}, language="bash", limits=LIMITS, manager=manager)
    assert other.id != sbs[0].id
    assert (await AsyncSandbox.find({"project": "demo"}, manager=manager)) is sbs[0]
    assert await AsyncSandbox.find({"project": "none"}, manager=manager) is None
    assert {s.id for s in await AsyncSandbox.list(manager=manager)} == {sbs[0].id, other.id}
    assert [s.id for s in await AsyncSandbox.list({"project": "other"}, manager=manager)] == [other.id]
    assert (await AsyncSandbox.get(other.id, manager=manager)) is other
    await other.destroy()
    with pytest.raises(NotFoundError):
        await AsyncSandbox.get(other.id, manager=manager)
    again = await AsyncSandbox.get_or_create({"project": "demo"}, manager=manager)
    assert again is sbs[0]


async def test_count_limits(manager: SandboxManager) -> None:
    sbs = await asyncio.gather(*(AsyncSandbox.create("bash", limits=LIMITS, manager=manager) for _ in range(4)))
    with pytest.raises(CapacityError, match="the maximum is 4"):
        await AsyncSandbox.create("bash", limits=LIMITS, manager=manager)
    await sbs[0].destroy()
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as sb:
        assert (await sb.exec("echo ok")).ok
    await manager.aclose()
    per_owner = SandboxManager(manager.engine, max_sandboxes=4, max_per_owner=1)
    a = await per_owner.create("bash", owner="key-a", limits=LIMITS)
    with pytest.raises(CapacityError, match="per owner"):
        await per_owner.create("bash", owner="key-a", limits=LIMITS)
    b = await per_owner.create("bash", owner="key-b", labels={"x": "1"}, limits=LIMITS)
    with pytest.raises(NotFoundError):  # another owner's sandbox does not exist for you
        per_owner.get(a.id, owner="key-b")
    assert per_owner.list(owner="key-a") == [a] and per_owner.find({"x": "1"}, owner="key-a") is None
    assert per_owner.find({"x": "1"}, owner="key-b") is b
    await per_owner.aclose()


async def test_run_many_and_unknown_things(manager: SandboxManager) -> None:
    rs = await execbox.arun_many(["echo a > f", "cat f; echo b", "exit 3", "echo after"], limits=LIMITS,
                                 files={"in.txt": "x"}, manager=manager)
    assert [r.status for r in rs] == [Status.OK, Status.OK, Status.RUNTIME_ERROR, Status.OK]
    assert rs[1].stdout == "a\nb\n" and rs[2].exit_code == 3
    rs = await execbox.arun_many(["cat in.txt", "false", "echo never"], files={"in.txt": "x"}, stop_on_error=True,
                                 limits=LIMITS, manager=manager)
    assert [r.stdout for r in rs] == ["x", ""]
    assert len(manager) == 0
    with pytest.raises(execbox.UnknownLanguageError):
        await AsyncSandbox.create("klingon", manager=manager)
    with pytest.raises(RequestError):
        await execbox.arun_many("echo a", manager=manager)  # type: ignore[arg-type]


async def test_run_compiles_and_runs_a_program_in_the_sandbox(manager: SandboxManager) -> None:
    """sb.run: C built and run in a live sandbox, the binary and the files left in its workdir; a compile
    error is a result; the sandbox's caps bound the run."""
    limits = LIMITS.model_copy(update={"wall_time_s": 3})
    async with await AsyncSandbox.create("c", limits=limits, manager=manager) as sb:
        src = '#include <stdio.h>\n#include "msg.h"\nint main(int c, char **v){ char s[16]; scanf("%15s", s);' \
              ' printf("%s %s %s\\n", MSG, s, v[1]); return 3; }\n'
        r = await sb.run(src, files={"msg.h": '#define MSG "built"'}, stdin="in", args=["arg"])
        assert (r.status, r.exit_code, r.stdout, r.language) == (Status.RUNTIME_ERROR, 3, "built in arg\n", "c"), r
        assert r.compile is not None and r.compile.status is Status.OK
        assert (await sb.exec("./main x < /dev/null; ls")).stdout.split("\n")[-4:-1] == ["main", "main.c", "msg.h"]
        r = await sb.run("int main() { return }")
        assert r.status is Status.COMPILE_ERROR and r.compile is not None and "error" in r.compile.stderr
        r = await sb.run("#include <unistd.h>\nint main() { sleep(30); }", limits=Limits(wall_time_s=60))
        assert r.status is Status.TIMEOUT and r.wall_time_s < 10, r  # the sandbox's 3 s, not the run's 60


def test_sync_facade(manager: SandboxManager) -> None:
    with Sandbox.create("bash", labels={"sync": "1"}, limits=LIMITS, manager=manager) as sb:
        assert sb.exec("echo hi > f; cat f").stdout == "hi\n"
        sb.files.write("g.txt", b"bytes")
        assert sb.files.read("g.txt") == b"bytes"
        assert [f.name for f in sb.files.list()] == ["f", "g.txt"]
        events = list(sb.stream("echo 1; echo 2 >&2"))
        assert events[-1].type == "exit" and events[-1].result is not None and events[-1].result.ok
        found = Sandbox.find({"sync": "1"}, manager=manager)
        assert found is not None and found.id == sb.id
        assert Sandbox.get_or_create({"sync": "1"}, manager=manager).id == sb.id
        assert [s.id for s in Sandbox.list({"sync": "1"}, manager=manager)] == [sb.id]
        assert execbox.run_many(["echo x"], limits=LIMITS, manager=manager)[0].stdout == "x\n"
    assert not sb.alive and Sandbox.find({"sync": "1"}, manager=manager) is None


async def test_the_sandbox_pool_hands_out_prestarted_sandboxes_once() -> None:
    p = local_provider("sandbox-pool", warm_pool=0, sandbox_pool=2, sandbox_pool_disk_mb=64)
    runtime = p.runtime
    pool = p.sandbox_pool
    assert pool is not None
    m = SandboxManager(Engine(providers=ProviderRegistry(instances={"local": p}, default="local")))
    try:
        assert await asyncio.to_thread(pool.fill, 30)
        a = await m.create("bash", limits=Limits(disk_mb=64, memory_mb=200, pids=40))
        b = await m.create("bash", limits=Limits(disk_mb=64, memory_mb=100))
        cold = await m.create("bash", limits=Limits(disk_mb=32))  # another disk size: started on demand
        assert pool.taken == 2
        cg = a._instance.cgroup  # type: ignore[attr-defined]
        assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(200 * 1024 * 1024)
        assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "43"  # + the launcher, bwrap, agent
        assert (await a.exec("echo a > f; cat f")).stdout == "a\n"
        assert (await b.exec("ls")).stdout == ""  # never the same sandbox twice
        r = await b.exec(["python3", "-c", "b = bytearray(150 * 1024 * 1024)"])
        assert r.status is Status.MEMORY_LIMIT, r
        assert (await cold.exec("echo cold")).ok
        await m.aclose()
    finally:
        await p.aclose()
        assert not list((runtime / "instances").iterdir())
        assert p.slots is not None and not p.slots.held
        shutil.rmtree(runtime, ignore_errors=True)


async def test_sync_facade_inside_a_running_loop(manager: SandboxManager) -> None:
    """As in a notebook: the blocking facade runs on its own loop thread, not the caller's loop."""
    asyncio.get_running_loop()
    sb = Sandbox.create("bash", limits=LIMITS, manager=manager)
    try:
        assert sb.exec("echo in-loop").stdout == "in-loop\n"
        same = await AsyncSandbox.get(sb.id, manager=manager)  # the same registry, from the async side
        assert (await same.exec("echo async")).stdout == "async\n"
    finally:
        sb.destroy()
    assert not sb.alive


async def test_destroying_a_sandbox_during_an_exec_is_not_found_not_a_failure(manager: SandboxManager) -> None:
    sb = await AsyncSandbox.create("bash", limits=LIMITS, manager=manager)
    running = asyncio.create_task(sb.exec("sleep 30"))
    await asyncio.sleep(0.3)  # (destroyed before or while it runs: the same answer either way)
    await sb.destroy()
    with pytest.raises(NotFoundError, match="destroyed"):
        await asyncio.wait_for(running, 15)  # and the exec ends with the sandbox, not at its wall time
