"""Resource exhaustion: every bomb is stopped with the right status, and stays inside its limits."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from execbox.providers.docker.container import EXTRA_PIDS

if TYPE_CHECKING:
    from conftest import Sandbox


def _max_children(sandbox: Sandbox, pids: int) -> int:
    """The most processes (or threads) a program may add to itself under ``pids``: pids - 1 (execbox's own
    processes are counted apart: the local provider's launcher, bubblewrap and init; docker's container
    limit is pids + EXTRA_PIDS, of which docker-init, its sleep and the exec's agent shell take 3)."""
    return pids + EXTRA_PIDS - 3 - 1 if sandbox.docker else pids - 1


def _count(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, f"the program did not report {pattern!r}: {text!r}"
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------- processes

async def test_fork_bomb_bash(sandbox: Sandbox) -> None:
    # the classic bomb, then the main shell waits for the deadline: the bomb's tree must hit the pids limit
    # and everything must be gone afterwards (the host check), though the bomb's processes are detached
    r = await sandbox.run("bash", ":(){ :|:& };:\nsleep 30; echo ESCAPED", wall_time_s=1.5, pids=16)
    assert r.status.value == "timeout", r
    assert "fork: retry: Resource temporarily unavailable" in r.stderr
    assert "ESCAPED" not in r.stdout and r.wall_time_s < 3


async def test_fork_bomb_c_hits_the_pids_limit(sandbox: Sandbox) -> None:
    code = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    int n = 0;
    for (;;) {
        pid_t p = fork();
        if (p == 0) { for (;;) pause(); }
        if (p < 0) { printf("forked %d then: %s\n", n, strerror(errno)); fflush(stdout); break; }
        n++;
    }
    for (;;) fork();  /* and keep bombing until the deadline */
}
"""
    r = await sandbox.run("c", code, wall_time_s=1.5, pids=16)
    assert r.status.value == "timeout", r
    # pids=16 for the program's tree (execbox's own processes are counted apart)
    assert _count(r"forked (\d+) then: Resource temporarily unavailable", r.stdout) <= _max_children(sandbox, 16)


async def test_thread_bomb_python_hits_the_pids_limit(sandbox: Sandbox) -> None:
    code = r"""
import threading, time
n = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        n += 1
except RuntimeError as e:
    print(f"started {n} threads then: {e}", flush=True)
"""
    r = await sandbox.run("python", code, pids=16)
    assert r.status.value == "ok", r
    assert _count(r"started (\d+) threads then: can't start new thread", r.stdout) <= _max_children(sandbox, 16)


# ---------------------------------------------------------------------------------------------- memory

async def test_memory_bomb_python(sandbox: Sandbox) -> None:
    code = r"""
chunks = []
while True:
    chunks.append(bytearray(8 * 1024 * 1024))  # zeroed: every page is touched
    print(f"held {len(chunks) * 8} MiB", flush=True)
"""
    r = await sandbox.run("python", code, memory_mb=64)
    assert r.status.value == "memory_limit", r
    assert _count(r"held (\d+) MiB\n$", r.stdout) <= 64
    assert r.max_rss_mb is not None and r.max_rss_mb <= 64 + 1


async def test_memory_bomb_c(sandbox: Sandbox) -> None:
    code = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    for (int mb = 1;; mb++) {
        char *p = malloc(1 << 20);
        if (!p) { printf("malloc failed at %d MiB\n", mb); return 0; }
        memset(p, 1, 1 << 20);
        if (mb % 8 == 0) { printf("held %d MiB\n", mb); fflush(stdout); }
    }
}
"""
    r = await sandbox.run("c", code, memory_mb=48)
    assert r.status.value == "memory_limit", r
    assert _count(r"held (\d+) MiB\n$", r.stdout) <= 48


async def test_memory_bomb_javascript_buffers(sandbox: Sandbox) -> None:
    code = r"""
const held = [];
for (;;) {
  held.push(Buffer.alloc(16 * 1024 * 1024, 1));
  console.log(`held ${held.length * 16} MiB`);
}
"""
    r = await sandbox.run("javascript", code, memory_mb=160)
    assert r.status.value == "memory_limit", r
    assert _count(r"held (\d+) MiB\n$", r.stdout) <= 160


# ---------------------------------------------------------------------------------------------- disk

@pytest.mark.docker_gap(
    "disk_mb is 'the workdir and /tmp together', but the provider mounts /work and /tmp as two tmpfs of disk_mb "
    "each (and /dev/shm as a third, shm_size=disk_mb): a program can write 3x disk_mb")
async def test_disk_fill_python_workdir_and_tmp(sandbox: Sandbox) -> None:
    code = r"""
import os
total = 0
for d in ("/work", "/tmp"):
    for i in range(1000):
        try:
            with open(f"{d}/fill{i}", "wb") as f:
                f.write(b"x" * (1024 * 1024))
            total += 1
        except OSError as e:
            print(f"{d}: {os.strerror(e.errno)}")
            break
print(f"wrote {total} MiB")
"""
    r = await sandbox.run("python", code, disk_mb=8)
    assert r.status.value == "ok", r
    assert "/work: No space left on device" in r.stdout
    assert "/tmp: No space left on device" in r.stdout  # /tmp shares the workdir's capped tmpfs
    assert _count(r"wrote (\d+) MiB", r.stdout) <= 8


async def test_disk_fill_bash_single_file_hits_file_size_limit(sandbox: Sandbox) -> None:
    code = "head -c 100M /dev/zero > /work/big; echo rc=$?; stat -c 'size=%s' /work/big"
    r = await sandbox.run("bash", code, file_size_mb=2, disk_mb=16)
    assert r.status.value == "ok", r
    assert "File size limit exceeded" in r.stderr
    assert _count(r"size=(\d+)", r.stdout) <= 2 * 1024 * 1024


async def test_file_size_limit_c_gets_sigxfsz(sandbox: Sandbox) -> None:
    code = r"""
#include <stdio.h>
#include <string.h>
int main(void) {
    static char buf[1 << 20];
    memset(buf, 'x', sizeof buf);
    FILE *f = fopen("big", "wb");
    for (int i = 1; i <= 64; i++) {
        fwrite(buf, 1, sizeof buf, f); fflush(f); printf("%d MiB\n", i); fflush(stdout);
    }
    puts("ESCAPED: wrote 64 MiB");
}
"""
    r = await sandbox.run("c", code, file_size_mb=2, disk_mb=16)
    assert r.status.value == "runtime_error", r
    assert r.signal == 25 and r.message == "file size limit of 2 MiB exceeded"
    assert "ESCAPED" not in r.stdout


async def test_dev_shm_and_dev_fill_is_bounded_by_the_disk_limit(sandbox: Sandbox) -> None:
    # /dev/shm lives on the instance's capped tmpfs like /work and /tmp; the rest of /dev is read-only
    # (it used to be bubblewrap's own writable tmpfs, sized at half the host's RAM, outside disk_mb)
    code = (
        "touch /dev/planted || echo 'dev: refused'\n"
        "for i in $(seq 1 40); do head -c 1M /dev/zero > /dev/shm/f$i || break; echo \"wrote $i MiB\"; done"
    )
    r = await sandbox.run("bash", code, memory_mb=128, disk_mb=8)
    assert r.status.value == "ok", r
    refused = "Permission denied" if sandbox.docker else "Read-only file system"  # docker: a root-owned /dev
    assert f"touch: cannot touch '/dev/planted': {refused}" in r.stderr
    assert "No space left on device" in r.stderr
    assert _count(r"wrote (\d+) MiB\n$", r.stdout) <= 8


# ---------------------------------------------------------------------------------------------- output

async def test_output_flood_python_stdout(sandbox: Sandbox) -> None:
    r = await sandbox.run("python", "while True:\n    print('A' * 1000)", output_bytes=10_000)
    assert r.status.value == "output_limit", r
    assert r.stdout_truncated and len(r.stdout) == 10_000
    assert r.wall_time_s < 2


async def test_output_flood_c_stderr(sandbox: Sandbox) -> None:
    code = "#include <stdio.h>\nint main(void){for(;;) fputs(\"EEEEEEEEEEEEEEEE\", stderr);}"
    r = await sandbox.run("c", code, output_bytes=5000)
    assert r.status.value == "output_limit", r
    assert r.stderr_truncated and len(r.stderr) == 5000 and not r.stdout_truncated


async def test_output_flood_javascript_from_children(sandbox: Sandbox) -> None:
    # the flood comes from grandchildren sharing the pipe, not the main process
    code = r"""
const { spawn } = require("child_process");
for (let i = 0; i < 4; i++) spawn("yes", ["flood"], { stdio: "inherit" });
setTimeout(() => {}, 60000);
"""
    r = await sandbox.run("javascript", code, output_bytes=20_000)
    assert r.status.value == "output_limit", r
    assert r.stdout_truncated and len(r.stdout) == 20_000
    assert set(r.stdout.split()[:-1]) == {"flood"}  # the last line is cut at the cap


# ---------------------------------------------------------------------------------------------- time

async def test_cpu_spin_c(sandbox: Sandbox) -> None:
    r = await sandbox.run("c", "int main(void){volatile long i=0; for(;;) i++;}", cpu_time_s=0.5,
                          wall_time_s=3)
    assert r.status.value == "timeout", r
    assert r.message == "CPU time limit of 0.5s exceeded"
    assert r.wall_time_s < 2.5


async def test_cpu_spin_javascript_many_processes(sandbox: Sandbox) -> None:
    # CPU time counts every process of the run together: 3 spinning children exhaust it 3x faster
    code = r"""
const { fork } = require("child_process");
if (process.argv[2] === "child") { for (;;) {} }
for (let i = 0; i < 3; i++) fork(__filename, ["child"]);
"""
    r = await sandbox.run("javascript", code, cpu_time_s=1, wall_time_s=3)
    assert r.status.value == "timeout", r
    assert r.message == "CPU time limit of 1.0s exceeded"
    assert r.cpu_time_s is not None and r.cpu_time_s >= 1


async def test_sleep_past_the_deadline_python(sandbox: Sandbox) -> None:
    code = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\nprint('ESCAPED')"
    r = await sandbox.run("python", code, wall_time_s=1)
    assert r.status.value == "timeout", r
    assert r.message == "wall time limit of 1.0s exceeded"
    assert r.stdout == "sleeping\n" and 1 <= r.wall_time_s < 2


async def test_ignoring_sigterm_does_not_help(sandbox: Sandbox) -> None:
    code = r"""
import os, signal, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGXCPU):
    signal.signal(s, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()
print("ignoring", flush=True)
time.sleep(60)
print("ESCAPED", flush=True)
"""
    r = await sandbox.run("python", code, wall_time_s=1)
    assert r.status.value == "timeout", r
    assert "ESCAPED" not in r.stdout and r.wall_time_s < 2


async def test_sleep_past_the_deadline_bash_background_jobs(sandbox: Sandbox) -> None:
    r = await sandbox.run("bash", "trap '' TERM HUP INT; sleep 60 & sleep 60 & wait; echo ESCAPED",
                          wall_time_s=1)
    assert r.status.value == "timeout", r
    assert "ESCAPED" not in r.stdout and r.wall_time_s < 2


# ---------------------------------------------------------------------------------------------- descriptors

async def test_fd_exhaustion_python(sandbox: Sandbox) -> None:
    code = r"""
import os
fds = []
try:
    while True:
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    print(f"opened {len(fds)} then: {os.strerror(e.errno)}")
"""
    r = await sandbox.run("python", code, open_files=32)
    assert r.status.value == "ok", r
    assert _count(r"opened (\d+) then: Too many open files", r.stdout) < 32


async def test_fd_exhaustion_c_cannot_raise_the_limit(sandbox: Sandbox) -> None:
    code = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
int main(void) {
    struct rlimit rl = {1 << 20, 1 << 20};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) printf("raise: %s\n", strerror(errno));
    int n = 0;
    while (open("/dev/null", O_RDONLY) >= 0) n++;
    printf("opened %d then: %s\n", n, strerror(errno));
}
"""
    r = await sandbox.run("c", code, open_files=32)
    assert r.status.value == "ok", r
    assert "raise: Operation not permitted" in r.stdout
    assert _count(r"opened (\d+) then: Too many open files", r.stdout) < 32
