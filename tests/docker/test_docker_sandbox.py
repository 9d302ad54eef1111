"""Persistent sandboxes (issue 5), what is docker's own: one dedicated hardened container each (never the warm
pool's) with the sandbox's caps, a runaway exec killed in its own cgroup while the container and the earlier
execs' processes live on, and every way a sandbox's container goes (TTL, destroy, the provider's close, the
crashed-run cleanup, dying from outside). The behaviour shared with the local provider (state, limits,
streaming, files byte for byte, TTL, labels) is tests/test_sandbox.py, run on both providers; hostile
programs: tests/escapes/test_sandbox_isolation.py, on both too."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import docker.errors
import pytest
from tests.docker.conftest import sandbox_containers, settings

from execbox import Engine, Limits, NotFoundError, SandboxError, Status
from execbox.errors import ProviderUnavailable
from execbox.providers.docker import DockerProvider
from execbox.providers.docker.container import EXTRA_PIDS
from execbox.providers.docker.persistent import DockerSandbox
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import AsyncSandbox, SandboxManager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="persistent docker sandboxes need root (exec cgroups)")

LIMITS = Limits(wall_time_s=10, cpu_time_s=10, memory_mb=256, pids=64, disk_mb=128)
# the images have no procps: every process's command line, from /proc
PS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


def container(sb: AsyncSandbox) -> str:
    inst = sb._instance
    assert isinstance(inst, DockerSandbox)
    return inst.container.id


@pytest.fixture
async def manager(docker_provider: DockerProvider) -> AsyncIterator[SandboxManager]:
    m = SandboxManager(Engine(providers=ProviderRegistry(default="docker", instances={"docker": docker_provider})),
                       max_sandboxes=4, reap_interval_s=0.1)
    yield m
    await m.aclose()
    assert not sandbox_containers(docker_provider), "a destroyed sandbox left its container"


async def test_one_hardened_container_of_its_own_with_the_sandbox_caps(manager: SandboxManager,
                                                                       docker_provider: DockerProvider) -> None:
    pooled = {i.handle.id for i in docker_provider.pool.items() if i.handle is not None}
    a = await manager.create("python", limits=LIMITS)
    b = await manager.create("bash", limits=LIMITS)
    assert container(a) != container(b) and not {container(a), container(b)} & pooled
    info = docker_provider.api.inspect_container(container(a))
    host = info["HostConfig"]
    assert info["Config"]["Image"] == docker_provider.catalog.tag("python")  # the language's image
    assert docker_provider.api.inspect_container(container(b))["Config"]["Image"] == \
        docker_provider.catalog.tag("shell")
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["NetworkMode"] == "none"
    assert "no-new-privileges" in host["SecurityOpt"] and host["CgroupnsMode"] == "private"
    assert host["Memory"] == 256 * 1024 * 1024 and host["PidsLimit"] == 64 + EXTRA_PIDS
    assert "size=128m" in host["Tmpfs"]["/work"]
    r = await a.exec("id -u; python3 -c 'print(6 * 7)'; touch /etc/x 2>&1 | grep -c Read-only")
    assert r.stdout == "1000\n42\n1\n", r


async def test_a_runaway_exec_is_killed_with_its_tree_and_the_sandbox_lives_on(manager: SandboxManager) -> None:
    sb = await manager.create("bash", limits=LIMITS)
    assert (await sb.exec("(sleep 300 > /dev/null 2>&1 &); echo ok")).ok  # a finished exec's: it lives on
    r = await sb.exec("setsid sh -c 'trap \"\" TERM HUP; sleep 201' > /dev/null 2>&1 & "
                      "(sh -c 'sleep 202 &' > /dev/null 2>&1 &); trap '' TERM; sleep 100",
                      limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT and r.message == "wall time limit of 1.0s exceeded", r
    left = (await sb.exec(PS)).stdout
    assert left.count("sleep 300") == 1 and "sleep 20" not in left and "sleep 100" not in left, left
    r = await sb.exec(":(){ :|:& };:", limits=Limits(wall_time_s=2, pids=16))
    assert r.status in (Status.TIMEOUT, Status.OK, Status.RUNTIME_ERROR), r
    r = await sb.exec("yes > /dev/null", limits=Limits(cpu_time_s=1))  # (the wall limit, 10 s: a loaded host)
    assert r.status is Status.TIMEOUT and "CPU time" in (r.message or ""), r
    r = await sb.exec(f"({PS}) | grep -c '^sleep 300'")  # the first exec's process outlived all of that
    assert r.stdout == "1\n", r
    r = await sb.exec("for f in /sys/fs/cgroup/*/cgroup.procs; do (echo $$ > $f) 2>/dev/null && echo moved $f; "
                      "done; grep -c ':/e[0-9]*$' /proc/self/cgroup")
    assert "moved" not in r.stdout and int(r.stdout) >= 3, r  # in its own exec group, which it cannot leave


async def test_an_agent_killed_while_it_waited_is_replaced(manager: SandboxManager,
                                                           docker_provider: DockerProvider) -> None:
    """The next exec's AGENT is started ahead of time; a program (same uid) may kill it while it waits (here the
    host does, as a kill -9 -1 would): the next exec starts another and runs."""
    sb = await manager.create("bash", limits=LIMITS)
    inst = sb._instance
    assert isinstance(inst, DockerSandbox)
    for _ in range(3):
        assert (await sb.exec("echo ok")).stdout == "ok\n"
        for _ in range(400):  # the prestart runs on a thread once the exec is over
            if (agent := inst.container.agent) is not None:
                break
            await asyncio.sleep(0.025)
        assert agent is not None
        for _ in range(400):
            if pid := int(docker_provider.api.exec_inspect(agent[0]).get("Pid") or 0):
                break
            await asyncio.sleep(0.025)
        os.kill(pid, signal.SIGKILL)
        for _ in range(400):  # dead, as after a program's kill -9 -1 (one killed mid-handoff is the exec's death)
            try:
                if Path(f"/proc/{pid}/stat").read_text().split()[2] in "ZX":
                    break
            except (FileNotFoundError, ProcessLookupError):  # gone (reaped) while we looked
                break
            await asyncio.sleep(0.025)
    assert (await sb.exec("echo still ok")).stdout == "still ok\n"


async def test_idle_ttl_reaps_the_sandbox_and_its_container(manager: SandboxManager,
                                                            docker_provider: DockerProvider) -> None:
    idle = await manager.create("bash", ttl_s=0.5, limits=LIMITS)
    kept = await manager.create("bash", ttl_s=600, limits=LIMITS)
    cid = container(idle)
    for _ in range(200):  # reaped, then its container removed
        if cid not in sandbox_containers(docker_provider):
            break
        await asyncio.sleep(0.05)
    assert not idle.alive and kept.alive
    with pytest.raises(NotFoundError):
        await idle.exec("true")
    assert cid not in sandbox_containers(docker_provider) and container(kept) in sandbox_containers(docker_provider)


async def test_destroy_and_close_remove_the_containers() -> None:
    p = DockerProvider(settings())
    try:
        m = SandboxManager(Engine(providers=ProviderRegistry(default="docker", instances={"docker": p})))
        gone = await m.create("bash", limits=LIMITS)
        cid = container(gone)
        await gone.exec("(sleep 300 > /dev/null 2>&1 &)")
        await gone.destroy()
        with pytest.raises(docker.errors.NotFound):
            p.api.inspect_container(cid)
        left = [await m.create("bash", limits=LIMITS) for _ in range(2)]
        assert {container(s) for s in left} <= set(sandbox_containers(p))
        assert p.active_containers() >= 2
    finally:
        p.close()  # the provider's shutdown removes the sandboxes it still has
    assert not sandbox_containers(p)
    with pytest.raises(SandboxError):
        await left[0].exec("true")
    await m.aclose()


async def test_a_crashed_run_s_sandbox_containers_are_removed_at_the_next_start() -> None:
    code = ("import asyncio, os, sys\n"
            "from execbox import Engine, Limits\n"
            "from execbox.providers.docker import DockerProvider\n"
            "from execbox.providers.registry import ProviderRegistry\n"
            "from execbox.sandbox import SandboxManager\n"
            "async def main():\n"
            "    p = DockerProvider()\n"
            "    m = SandboxManager(Engine(providers=ProviderRegistry(default='docker', instances={'docker': p})))\n"
            "    sb = await m.create('bash', limits=Limits(disk_mb=16))\n"
            "    print(sb._instance.container.id, flush=True)\n"
            "    os._exit(0)\n"  # no cleanup at all: a crash
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    cid = out.stdout.strip()
    assert out.returncode == 0 and cid, out.stderr
    p = DockerProvider(settings())  # (another test worker's provider starting meanwhile may be the one)
    try:
        with pytest.raises(docker.errors.NotFound):
            p.api.inspect_container(cid)
    finally:
        p.close()


async def test_a_sandbox_whose_container_died_says_so(manager: SandboxManager,
                                                      docker_provider: DockerProvider) -> None:
    sb = await manager.create("bash", limits=LIMITS)
    await sb.files.write("f", b"x")
    docker_provider.api.kill(container(sb))
    for _ in range(200):
        if not docker_provider.api.inspect_container(container(sb))["State"]["Running"]:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(SandboxError, match="died"):
        await sb.exec("true")
    with pytest.raises(SandboxError, match="died"):
        await sb.files.read("f")


async def test_languages_without_an_image_are_refused(manager: SandboxManager) -> None:
    with pytest.raises(ProviderUnavailable, match="no docker image provides 'go'"):
        await manager.create("go", limits=LIMITS)
    assert len(manager) == 0
