"""Hostile programs against the docker provider (the approach of tests/escapes/, for containers).

The cross-run checks run two executions in the *same* pooled container (asserted: the pool has one
container and each run records the container it got) and prove that the second sees nothing of the first:
files, processes, environment, IPC objects.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.docker.conftest import settings

from execbox import Engine, ExecutionRequest, ExecutionResult, File, Limits, Status
from execbox.providers.docker import DockerProvider, State
from execbox.providers.registry import ProviderRegistry

SECRET = "execbox-docker-secret-" + secrets.token_hex(12)
os.environ["EXECBOX_DOCKER_TEST_SECRET"] = SECRET  # a secret of the host process: never visible inside
LIMITS: dict[str, Any] = dict(wall_time_s=5, cpu_time_s=5, memory_mb=128, pids=32, output_bytes=64 * 1024,
                              file_size_mb=8, disk_mb=16, open_files=64)


@dataclass
class Box:
    provider: DockerProvider
    engine: Engine
    seen: list[str]

    async def run(self, language: str, code: str, *, files: dict[str, str] | None = None,
                  env: dict[str, str] | None = None, **limits: Any) -> ExecutionResult:
        request = ExecutionRequest(language=language, code=code, env=env or {}, provider="docker",
                                   files=[File(name=k, content=v) for k, v in (files or {}).items()],
                                   limits=Limits(**{**LIMITS, **limits}))
        return await self.engine.execute(request)

    def same_container(self) -> None:
        assert len(self.seen) >= 2 and len(set(self.seen)) == 1, self.seen


@pytest.fixture(scope="module")
def box_provider() -> Iterator[DockerProvider]:
    p = DockerProvider(settings(size=1, max_items=1))  # one container per image: every run reuses it
    yield p
    p.close()


@pytest.fixture
def box(box_provider: DockerProvider) -> Iterator[Box]:
    seen: list[str] = []
    pool = box_provider.pool
    original = pool.acquire

    async def recording(key: Any) -> Any:
        item = await original(key)
        seen.append(item.handle.id)
        return item

    pool.acquire = recording  # type: ignore[method-assign]
    try:
        yield Box(box_provider, Engine(providers=ProviderRegistry(instances={"docker": box_provider})), seen)
    finally:
        pool.acquire = original  # type: ignore[method-assign]
    # after every hostile test the pool is healthy: the container was reset (or replaced), none is stuck
    assert pool.wait_until(lambda: pool.count(State.BUSY, State.RESETTING, State.TERMINATING) == 0, 30)


async def test_files_do_not_persist_into_the_next_run(box: Box) -> None:
    plant = ("import os\n"
             "for d in ('/work', '/tmp', '/dev/shm'):\n"
             "    open(os.path.join(d, 'planted'), 'w').write('x')\n"
             "    os.makedirs(os.path.join(d, 'locked/deeper'), exist_ok=True)\n"
             "    os.chmod(os.path.join(d, 'locked'), 0)\n"
             "os.symlink('/etc/passwd', '/work/link')\n"
             "print('planted')\n")
    r = await box.run("python", plant)
    assert r.stdout == "planted\n", r
    look = ("import os\n"
            "print(sorted(f for d in ('/work', '/tmp', '/dev/shm') for f in os.listdir(d)))\n")
    r = await box.run("python", look)
    assert r.stdout == "['main.py']\n", r
    box.same_container()


async def test_background_processes_do_not_survive_into_the_next_run(box: Box) -> None:
    daemon = ("import os, time\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              "        os.close(1); os.close(2)\n"
              "        while True:\n"
              "            try: open('/tmp/alive', 'a').write('x')\n"
              "            except OSError: pass\n"
              "            time.sleep(0.05)\n"
              "    os._exit(0)\n"
              "time.sleep(0.3)\n"
              "print('spawned')\n")
    r = await box.run("python", daemon)
    assert r.stdout == "spawned\n", r
    look = ("import os, time\n"
            "me = os.getpid()\n"
            "def others():\n"
            "    out = []\n"
            "    for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "        try: st = open(f'/proc/{p}/status').read()\n"
            "        except OSError: continue\n"
            "        uid = [l.split()[1] for l in st.splitlines() if l.startswith('Uid:')][0]\n"
            "        state = [l.split()[1] for l in st.splitlines() if l.startswith('State:')][0]\n"
            "        if uid == '1000' and int(p) not in (me, os.getppid()) and state != 'Z': out.append(p)\n"
            "    return out\n"
            "time.sleep(0.3)\n"
            "print(others(), os.path.exists('/tmp/alive'))\n")
    r = await box.run("python", look)
    assert r.stdout == "[] False\n", r
    box.same_container()


async def test_environment_does_not_persist_into_the_next_run(box: Box) -> None:
    r = await box.run("bash", "export PERSIST=1; echo \"export LEAK=1\" >> ~/.bashrc; echo $SECRET_OF_RUN_1",
                      env={"SECRET_OF_RUN_1": "s1"})
    assert r.stdout == "s1\n", r
    r = await box.run("bash", "echo \"[${SECRET_OF_RUN_1}][${PERSIST}][${LEAK}]\"; ls -A ~")
    assert r.stdout == "[][][]\nmain.sh\n" or r.stdout == "[][][]\n", r  # HOME is /tmp, emptied
    box.same_container()


async def test_sysv_ipc_does_not_persist_and_posix_queues_are_refused(box: Box) -> None:
    plant = ("import ctypes, os\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "print(libc.shmget(0x1234, 4096, 0o1666) >= 0, libc.semget(0x1235, 1, 0o1666) >= 0,\n"
             "      libc.msgget(0x1236, 0o1666) >= 0)\n"
             "rt = ctypes.CDLL('librt.so.1', use_errno=True)\n"
             "print(rt.mq_open(b'/q', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0)\n")
    r = await box.run("python", plant)
    assert r.stdout == "True True True\nFalse\n", r
    r = await box.run("python", "print(open('/proc/sysvipc/shm').read().count('\\n') - 1,"
                                " open('/proc/sysvipc/sem').read().count('\\n') - 1,"
                                " open('/proc/sysvipc/msg').read().count('\\n') - 1)\n")
    assert r.stdout == "0 0 0\n", r
    box.same_container()


async def test_the_host_secret_is_not_visible(box: Box) -> None:
    code = ("import glob, os\n"
            f"secret = {SECRET[::-1]!r}[::-1].encode()\n"  # not spelled out in the program's own files
            "hits = []\n"
            "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
            "    try:\n        hits += [path] if secret in open(path, 'rb').read() else []\n"
            "    except OSError: pass\n"
            "print(hits, [k for k in os.environ if 'EXECBOX' in k])\n")
    r = await box.run("python", code)
    assert r.stdout == "[] []\n", r


async def test_no_network(box: Box) -> None:
    code = ("import socket\n"
            "s = socket.socket()\n"
            "s.settimeout(2)\n"
            "try:\n    s.connect(('1.1.1.1', 80)); print('connected')\n"
            "except OSError as e:\n    print('refused', e.errno)\n"
            "print(sorted(n for _, n in socket.if_nameindex()))\n")
    r = await box.run("python", code)
    assert "connected" not in r.stdout and r.stdout.endswith("['lo']\n"), r


async def test_pid1_and_the_rootfs_are_out_of_reach(box: Box) -> None:
    code = ("kill -9 1 2>&1 | head -c 80; echo; awk '$2 == \"/\" {print $4}' /proc/mounts; "
            "mount -t tmpfs x /mnt 2>&1 | head -c 60; echo; su -c id root </dev/null 2>&1 | head -c 60; echo; id -u")
    r = await box.run("bash", code)
    lines = r.stdout.splitlines()
    assert "kill: (1) - Operation not permitted" in r.stdout, r
    assert any(line.startswith("ro,") for line in lines), r  # the root filesystem is mounted read-only
    assert "must be superuser" in r.stdout and "Authentication failure" in r.stdout, r
    assert lines[-1] == "1000", r
    r = await box.run("bash", "echo alive")
    assert r.stdout == "alive\n"
    box.same_container()


async def test_fork_bomb_is_contained_and_the_container_recovers(box: Box) -> None:
    r = await box.run("bash", ":(){ :|:& };:", wall_time_s=3)
    assert r.status in (Status.TIMEOUT, Status.RUNTIME_ERROR, Status.OK), r
    r = await box.run("bash", "echo recovered")
    assert r.stdout == "recovered\n", r


async def test_filling_the_disk_is_contained(box: Box) -> None:
    r = await box.run("bash", "head -c 40000000 /dev/zero > /work/big; echo $?; du -sm /work | cut -f1",
                      file_size_mb=64)
    lines = r.stdout.split()
    assert lines[0] != "0" and int(lines[1]) <= 16, r
    r = await box.run("bash", "ls /work")
    assert r.stdout == "main.sh\n", r
    box.same_container()


async def test_a_daemon_holding_the_output_pipe_does_not_hang_the_run(box: Box) -> None:
    r = await box.run("bash", "sleep 1000 & echo started", wall_time_s=10)
    assert r.stdout == "started\n" and r.wall_time_s < 5, r


async def test_memory_bomb_is_a_memory_limit(box: Box) -> None:
    r = await box.run("python", "x = []\nwhile True: x.append(bytearray(10**6))\n", memory_mb=64)
    assert r.status is Status.MEMORY_LIMIT, r
