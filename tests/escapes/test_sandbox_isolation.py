"""Hostile programs against persistent sandboxes (issue 5): nothing crosses from one sandbox to another,
the agent (the sandbox's pid 1) is out of reach, host-side file operations cannot be led out of the workdir
by symlinks (also while the program swaps them in a race), and destroy() leaves nothing on the host (the
autouse check in conftest.py runs after every test). The suite's local provider keeps one persistent sandbox
pre-started: each test's first sandbox comes from that pool, the others are started on demand. Each test that
takes ``sandbox`` runs on the docker provider too (a dedicated container per sandbox)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.providers import runtime_dir

from execbox import ExecboxError, Limits, NotFoundError, SandboxError, Status
from execbox.sandbox import AsyncSandbox, SandboxManager

if TYPE_CHECKING:
    from conftest import Sandbox

SECRET = os.environ["EXECBOX_TEST_SECRET"]  # set by conftest.py
LIMITS = Limits(wall_time_s=3, cpu_time_s=3, memory_mb=128, pids=32, output_bytes=64 * 1024, file_size_mb=8,
                disk_mb=16, open_files=64)  # conftest.DEFAULT_LIMITS
# every process's command line, from /proc (the docker images have no procps)
PS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


@pytest.fixture
def leftovers(request: pytest.FixtureRequest) -> Callable[[Any], list[str]]:
    """conftest.leftovers (this directory's conftest module, as pytest loaded it)."""
    for plugin in request.config.pluginmanager.get_plugins():
        if str(getattr(plugin, "__file__", "")).endswith("escapes/conftest.py"):
            return plugin.leftovers  # type: ignore[no-any-return]
    raise AssertionError("tests/escapes/conftest.py is not loaded")


@pytest.fixture
def victim() -> Iterator[Path]:
    """A host directory a naive host-side file operation would reach through a planted symlink."""
    d = runtime_dir(f"victim-{secrets.token_hex(4)}")
    d.mkdir(mode=0o700)
    (d / "victim-marker").write_text(SECRET)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_nothing_leaks_from_one_sandbox_to_another(sandbox: Sandbox, manager: SandboxManager) -> None:
    a = await manager.create("python", limits=LIMITS, env={"MARK_A": "leak-a"})
    b = await manager.create("python", limits=LIMITS)
    setup = ("echo a > /work/from-a; echo a > /tmp/from-a; echo a > /dev/shm/from-a; "
             "(python3 -c 'import time; time.sleep(300)' marker-from-a > /dev/null 2>&1 &); "
             "python3 -c \"import ctypes; l = ctypes.CDLL(None); print(l.shmget(4242, 4096, 0o1666), "
             "l.semget(4243, 1, 0o1666), l.msgget(4244, 0o1666))\"")
    r = await a.exec(setup)
    assert r.ok and "-1" not in r.stdout, r
    assert "marker-from-a" in (await a.exec(PS)).stdout
    r = await b.exec(f"ls -A /work /tmp /dev/shm; {PS}; env; cat /proc/sysvipc/shm /proc/sysvipc/sem "
                     "/proc/sysvipc/msg; ls /proc | grep -c '^[0-9]'")
    assert r.ok, r
    for trace in ("from-a", "marker-from-a", "leak-a", "4242", "4243", "4244", SECRET):
        assert trace not in r.stdout, (trace, r.stdout)
    # local: the agent, sh, ls, grep; docker: also tini and its sleep, and the exec's bash: nothing of a's
    assert r.stdout.split()[-1] in (("3", "4", "5") if sandbox.local else ("5", "6")), r.stdout
    r = await b.exec("kill -9 -1; true")  # kills b's own processes, nothing of a's
    assert "marker-from-a" in (await a.exec(PS)).stdout
    assert (await b.exec("echo b lives")).stdout == "b lives\n"


async def test_the_agent_is_out_of_reach(sandbox: Sandbox, manager: SandboxManager) -> None:
    sb = await manager.create("bash", limits=LIMITS)
    r = await sb.exec("kill -9 1; kill -STOP 1; kill -TERM 1; cat /proc/1/environ; head -c 16 /proc/1/mem; "
                      "ls -l /proc/1/fd; cat /proc/1/status | grep -i ^uid; echo done")
    assert r.stdout.endswith("done\n"), r
    assert "Permission denied" in r.stderr, r
    assert SECRET not in r.stdout + r.stderr
    assert (await sb.exec("echo still here")).stdout == "still here\n"
    r = await sb.exec("python3 -c 'import os; os.kill(1, 9)'; echo $?")
    assert (await sb.exec("echo again")).ok


async def test_a_runaway_tree_cannot_escape_its_exec_cgroup(sandbox: Sandbox, manager: SandboxManager) -> None:
    """setsid, double fork and SIGTERM-ignoring children of a runaway exec all die at its wall limit."""
    sb = await manager.create("bash", limits=LIMITS)
    r = await sb.exec("setsid sh -c 'trap \"\" TERM HUP; sleep 300' > /dev/null 2>&1 & "
                      "(sh -c 'sleep 301 &' > /dev/null 2>&1 &); sleep 100", limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT, r
    assert "sleep 30" not in (await sb.exec(PS)).stdout  # (docker's own init runs "sleep infinity")
    r = await sb.exec("cat /proc/self/cgroup; ls /sys/fs/cgroup 2>&1; echo $$ > /proc/1/cgroup 2>&1; "
                      "for f in /sys/fs/cgroup/*/cgroup.procs; do (echo $$ > $f) 2>/dev/null && echo moved; done; true")
    assert "execbox" not in r.stdout and "moved" not in r.stdout, r
    if sandbox.local:
        assert "No such file" in r.stdout, r  # its group is its root; no cgroupfs
    else:  # the container's cgroupfs, read-only: the exec sees its own group (e<n>) below the container's
        assert r.stdout.count(":/e") >= 3, r
    fork_bomb = await sb.exec(":(){ :|:& };:", limits=Limits(wall_time_s=2, pids=16))
    assert fork_bomb.status in (Status.TIMEOUT, Status.OK, Status.RUNTIME_ERROR)
    r = await sb.exec("echo survived")
    assert r.stdout == "survived\n", r


async def test_symlinks_planted_in_the_workdir_never_lead_the_host_out(sandbox: Sandbox, manager: SandboxManager,
                                                                       victim: Path) -> None:
    sb = await manager.create("bash", limits=LIMITS)
    r = await sb.exec(f"ln -s {victim} hostdir; ln -s {victim}/victim-marker hostfile; ln -s / root; "
                      "ln -s ../../../../../../.. up; ln -s /proc/self/root/etc/shadow magic; mkfifo fifo; "
                      "echo inside > real; ln -s real inner; mkdir sub; ln -s ../real sub/rel")
    assert r.ok, r
    for path in ("hostdir/victim-marker", "hostfile", "root/etc/shadow", "up/etc/shadow", "magic", "fifo",
                 f"root{victim}/victim-marker"):
        with pytest.raises(NotFoundError):
            await sb.files.read(path)
    assert await sb.files.read("inner") == b"inside\n"  # symlinks that stay inside are followed
    assert await sb.files.read("sub/rel") == b"inside\n"
    for path in ("hostdir/new", "hostfile", "root/tmp/x", "up/tmp/x", "magic", "fifo"):
        with pytest.raises(SandboxError):
            await sb.files.write(path, b"pwned")
    for d in ("hostdir", "root", "up", "root/etc"):
        with pytest.raises(NotFoundError):
            await sb.files.list(d)
    for path in ("hostdir/victim-marker", "root/etc/hostname", "up/etc/hostname"):
        with pytest.raises(ExecboxError):
            await sb.files.remove(path)
    assert await sb.files.remove("hostdir")  # the link itself, not its target
    assert await sb.files.remove("hostfile")
    assert sorted(os.listdir(victim)) == ["victim-marker"] and (victim / "victim-marker").read_text() == SECRET
    assert Path("/etc/hostname").exists()
    kinds = {f.name: f.kind for f in await sb.files.list()}
    assert kinds["root"] == "symlink" and kinds["fifo"] == "other" and kinds["sub"] == "dir"


async def test_host_file_ops_race_a_symlink_swap(sandbox: Sandbox, manager: SandboxManager, victim: Path) -> None:
    """The program swaps a directory and a symlink to a host directory as fast as it can (renameat2
    RENAME_EXCHANGE) while the host writes, reads, lists and removes through that path: the host never
    lands outside the workdir."""
    sb = await manager.create("python", limits=LIMITS)
    race = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "os.makedirs('d', exist_ok=True)\n"
            "open('d/victim-marker', 'w').write('decoy')\n"
            f"os.symlink({str(victim)!r}, 'lnk')\n"
            "print('racing', flush=True)\n"
            "while True:\n"
            "    libc.renameat2(-100, b'd', -100, b'lnk', 2)\n")
    await sb.files.write("race.py", race)
    r = await sb.exec("python3 race.py > race.log 2>&1 & sleep 0.3; cat race.log")
    assert r.stdout == "racing\n", r
    ops = {"write": 0, "read": 0, "list": 0, "remove": 0}
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            await sb.files.write("d/victim-marker", b"pwned")
            ops["write"] += 1
        except ExecboxError:
            pass
        try:
            data = await sb.files.read("d/victim-marker")
            assert data in (b"pwned", b"decoy"), data
            ops["read"] += 1
        except NotFoundError:
            pass
        try:
            names = [f.name for f in await sb.files.list("d")]
            assert names in ([], ["victim-marker"]), names
            ops["list"] += 1
        except NotFoundError:
            pass
        try:
            await sb.files.remove("d/victim-marker")
            ops["remove"] += 1
        except ExecboxError:
            pass
        assert (victim / "victim-marker").read_text() == SECRET
        await asyncio.sleep(0)
    assert sorted(os.listdir(victim)) == ["victim-marker"] and (victim / "victim-marker").read_text() == SECRET
    assert all(n > 0 for n in ops.values()), ops  # the race was really run: each operation also succeeded


@pytest.mark.local_only("the local workdir, uid and pools; docker: tests/docker/test_docker_sandbox.py")
async def test_after_destroy_nothing_is_left_on_the_host(sandbox: Sandbox, manager: SandboxManager,
                                                         leftovers: Callable[[Any], list[str]]) -> None:
    sb = await manager.create("bash", limits=LIMITS)
    await sb.exec("setsid sh -c 'trap \"\" TERM HUP; sleep 300' > /dev/null 2>&1 & (sleep 301 &) ; "
                  "python3 -c \"import ctypes; ctypes.CDLL(None).shmget(4245, 4096, 0o1666)\"; "
                  "head -c 1000000 /dev/zero > /tmp/big; echo x > /dev/shm/y")
    assert "sleep 300" in (await sb.exec(PS)).stdout
    workdir = Path(sb._instance.wd.path)  # type: ignore[attr-defined]
    assert workdir.is_dir()
    await sb.destroy()
    assert not workdir.exists()
    with pytest.raises(NotFoundError):
        await sb.exec("true")
    with pytest.raises(NotFoundError):
        await sb.files.read("x")
    # the pools' idle sandboxes (one-shot and persistent) are not leftovers of this test's sandbox
    for pool in (sandbox.provider.warm_pool, sandbox.provider.sandbox_pool):
        assert pool is not None
        await asyncio.to_thread(pool.drain, 30)
    deadline = time.monotonic() + 3
    while (left := leftovers(sandbox)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not left, left
    assert isinstance(sb, AsyncSandbox)


async def test_a_persistent_sandbox_has_no_network_and_no_server_secrets(sandbox: Sandbox,
                                                                          manager: SandboxManager) -> None:
    sb = await manager.create("python", limits=LIMITS)
    r = await sb.exec(["python3", "-c", "import socket, os\n"
                       "print(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else 'no sys')\n"
                       "s = socket.socket(); s.settimeout(2)\n"
                       "try:\n    s.connect(('1.1.1.1', 80)); print('connected')\n"
                       "except OSError as e:\n    print('refused', e.errno)\n"
                       "print(open('/proc/self/environ', 'rb').read())\n"
                       "print(open('/proc/1/cmdline', 'rb').read())"])
    assert r.ok and "connected" not in r.stdout and "refused" in r.stdout, r
    assert SECRET not in r.stdout and "EXECBOX" not in r.stdout, r
