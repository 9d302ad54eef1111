"""Hostile programs against the warm pool: a pre-started sandbox is used once, by one request, with that
request's limits, and nothing of one run is visible to the next.

Every run here is checked to have been served by the pool (``pooled``); the suite's fixtures fill the pool
before each test, and the host leftover check after each test covers the pool's teardown too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from execbox import ExecutionResult

if TYPE_CHECKING:
    from conftest import Sandbox

pytestmark = pytest.mark.local_only("the local provider's pool of pre-started bwrap sandboxes "
                                    "(the docker pool: tests/docker/test_docker_pool.py)")


@contextlib.asynccontextmanager
async def pooled(sandbox: Sandbox, runs: int = 1) -> AsyncIterator[None]:
    """Asserts that the enclosed ``runs`` runs each took a pre-started sandbox from the pool."""
    pool = sandbox.provider.warm_pool
    assert pool is not None
    await asyncio.to_thread(pool.fill, 30)
    before = pool.taken
    yield
    assert pool.taken - before == runs, "a run did not go through the warm pool"


async def run_pooled(sandbox: Sandbox, language: str, code: str, **kw: Any) -> ExecutionResult:
    async with pooled(sandbox):
        return await sandbox.run(language, code, **kw)


# ---------------------------------------------------------------------------------------- one run, one sandbox

async def test_a_daemon_left_by_one_run_is_gone_for_the_next(sandbox: Sandbox) -> None:
    tag = secrets.token_hex(8)
    leave = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            with open("/tmp/daemon-{tag}", "w") as f:
                f.write(str(time.time()))
            time.sleep(0.01)
    os._exit(0)
print("left")
"""
    look = f"""
import os
mine = os.getpid()
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, mine))
print(others, os.path.exists("/tmp/daemon-{tag}"))
"""
    first = await run_pooled(sandbox, "python", leave)
    assert first.stdout == "left\n", first
    second = await run_pooled(sandbox, "python", look)
    assert second.stdout == "[] False\n", second


async def test_files_env_and_ipc_of_one_run_are_not_visible_to_the_next(sandbox: Sandbox) -> None:
    tag = secrets.token_hex(8)
    leave = f"""
import os
for d in ("/work", "/tmp", "/dev/shm"):
    with open(f"{{d}}/left-{tag}", "w") as f:
        f.write("x")
os.environ["LEFT_{tag}"] = "1"
os.putenv("LEFT_{tag}", "1")
print(sorted(os.listdir("/tmp")))
"""
    look = f"""
import os
print([d for d in ("/work", "/tmp", "/dev/shm") if os.path.exists(f"{{d}}/left-{tag}")],
      [k for k in os.environ if "{tag}" in k], sorted(os.listdir("/tmp")), sorted(os.listdir("/dev/shm")))
"""
    first = await run_pooled(sandbox, "python", leave, env={f"MINE_{tag}": "1"})
    assert first.status.value == "ok", first
    second = await run_pooled(sandbox, "python", look)
    assert second.stdout == "[] [] [] []\n", second


async def test_concurrent_pooled_runs_do_not_see_each_other(sandbox: Sandbox) -> None:
    code = """
import os, time
with open("/tmp/mine", "w") as f:
    f.write(str(os.getpid()))
time.sleep(0.5)
print(sorted(os.listdir("/tmp")), sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
"""
    async with pooled(sandbox, runs=2):
        a, b = await asyncio.gather(sandbox.run("python", code), sandbox.run("python", code))
    assert a.stdout == b.stdout == "['mine'] [1, 2]\n", (a, b)


async def test_the_waiter_cannot_be_signalled_or_read_from_inside(sandbox: Sandbox) -> None:
    # pid 1 of a pre-started sandbox is execbox's waiter: as init it ignores signals sent from inside the
    # sandbox, and it is not dumpable, so its memory (the way to forge what it reports) is closed.
    code = r"""
import os, signal, time
for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
    try:
        os.kill(1, sig); print("sent", sig.name)
    except OSError as e:
        print(sig.name, os.strerror(e.errno))
for name in ("mem", "environ", "maps"):
    try:
        open(f"/proc/1/{name}", "rb").read(1); print("READ", name)
    except OSError as e:
        print(name, os.strerror(e.errno))
time.sleep(0.2)
print(open("/proc/1/comm").read().strip(), os.getppid())
"""
    r = await run_pooled(sandbox, "python", code)
    assert r.status.value == "ok", r
    lines = r.stdout.splitlines()
    assert "READ" not in r.stdout, r.stdout
    assert lines[3:6] == ["mem Permission denied", "environ Permission denied", "maps Permission denied"], r
    assert lines[-1] == "execbox-waiter 1", r


async def test_a_program_cannot_reach_the_waiters_control_socket(sandbox: Sandbox) -> None:
    # the program's descriptors are 0, 1 and 2 only (the control socket, bubblewrap's and the waiter's
    # own descriptors are closed on exec), and pid 1's are out of reach
    code = r"""
import os
print(sorted(os.listdir("/proc/self/fd")))
try:
    print(os.listdir("/proc/1/fd"))
except OSError as e:
    print(os.strerror(e.errno))
"""
    r = await run_pooled(sandbox, "python", code)
    assert r.stdout == "['0', '1', '2', '3']\nPermission denied\n", r  # 3: listdir's own


# ---------------------------------------------------------------------------------------- the request's limits

async def test_pooled_memory_limit(sandbox: Sandbox) -> None:
    code = "x = []\nwhile True:\n    x.append(bytearray(8 * 1024 * 1024))"
    r = await run_pooled(sandbox, "python", code, memory_mb=48)
    assert r.status.value == "memory_limit", r


async def test_pooled_memory_limit_larger_than_the_idle_one(sandbox: Sandbox) -> None:
    # the idle sandbox's cgroup is kept small; the request's larger limit is what applies
    code = "x = bytearray(150 * 1024 * 1024)\nprint(len(x) // 2**20)"
    r = await run_pooled(sandbox, "python", code, memory_mb=256)
    assert r.status.value == "ok" and r.stdout == "150\n", r


async def test_pooled_pids_limit(sandbox: Sandbox) -> None:
    code = r"""
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as e:
    print("forked", n, os.strerror(e.errno))
"""
    r = await run_pooled(sandbox, "python", code, pids=8, wall_time_s=3)
    assert r.stdout.startswith("forked ") and "Resource temporarily unavailable" in r.stdout, r
    assert int(r.stdout.split()[1]) <= 8, r


async def test_pooled_cpu_limit(sandbox: Sandbox) -> None:
    r = await run_pooled(sandbox, "python", "while True:\n    pass", cpu_time_s=1, wall_time_s=5)
    assert r.status.value == "timeout" and "CPU" in (r.message or ""), r
    assert r.cpu_time_s is not None and 0.9 <= r.cpu_time_s < 2.5, r


async def test_pooled_wall_limit(sandbox: Sandbox) -> None:
    start = time.monotonic()
    r = await run_pooled(sandbox, "python", "import time\ntime.sleep(30)", wall_time_s=1)
    assert r.status.value == "timeout" and "wall" in (r.message or ""), r
    assert time.monotonic() - start < 4


async def test_pooled_file_size_limit(sandbox: Sandbox) -> None:
    code = r"""
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
try:
    with open("/tmp/big", "wb") as f:
        f.write(b"x" * (3 * 1024 * 1024))
    print("WROTE")
except OSError as e:
    print(e.strerror)
"""
    r = await run_pooled(sandbox, "python", code, file_size_mb=2)
    assert r.stdout == "File too large\n", r


async def test_pooled_open_files_limit_cannot_be_raised(sandbox: Sandbox) -> None:
    code = r"""
import resource
print(resource.getrlimit(resource.RLIMIT_NOFILE))
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000)); print("RAISED")
except (ValueError, OSError) as e:
    print("refused")
fds = []
try:
    while True:
        fds.append(open("/dev/null"))
except OSError as e:
    print(len(fds) + 3 <= 40, e.strerror)
"""
    r = await run_pooled(sandbox, "python", code, open_files=40)
    assert r.stdout == "(40, 40)\nrefused\nTrue Too many open files\n", r


async def test_pooled_rlimits_are_the_requests(sandbox: Sandbox) -> None:
    code = r"""
import json, resource
print(json.dumps({n: resource.getrlimit(getattr(resource, n)) for n in
                  ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE")}))
"""
    r = await run_pooled(sandbox, "python", code, cpu_time_s=2, file_size_mb=3, open_files=50, pids=10)
    limits = json.loads(r.stdout)
    assert limits == {"RLIMIT_CPU": [3, 4], "RLIMIT_FSIZE": [3 * 2**20] * 2, "RLIMIT_NOFILE": [50, 50],
                      "RLIMIT_NPROC": [11, 11], "RLIMIT_CORE": [0, 0]}, limits  # NPROC: + the waiter


async def test_pooled_stdin_is_read_only(sandbox: Sandbox) -> None:
    code = r"""
import os, sys
print(sys.stdin.read())
try:
    os.write(0, b"x"); print("WROTE")
except OSError as e:
    print(os.strerror(e.errno))
"""
    r = await run_pooled(sandbox, "python", code, stdin="hello")
    assert r.stdout == "hello\nBad file descriptor\n", r


async def test_pooled_run_reports_the_same_as_a_cold_one(sandbox: Sandbox) -> None:
    # exit codes, output, signals: the same result whichever path ran
    r = await run_pooled(sandbox, "bash", "echo out; echo err >&2; exit 3")
    assert (r.status.value, r.exit_code, r.stdout, r.stderr) == ("runtime_error", 3, "out\n", "err\n"), r
    r = await run_pooled(sandbox, "bash", "kill -SEGV $$")
    assert r.signal == 11, r
