"""The request's environment must never reach the processes execbox runs outside the sandbox (its launcher,
running as root, and bubblewrap): there the dynamic loader would obey LD_PRELOAD / LD_AUDIT and run the
attacker's code with the host's privileges. Found by review: a preloaded library read from stdin."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Sandbox

PAYLOAD = r"""
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
__attribute__((constructor)) static void pwn(void) {
    char exe[256] = {0};
    readlink("/proc/self/exe", exe, sizeof exe - 1);
    int fd = open("/proc/self/fd/2", O_WRONLY);
    dprintf(fd >= 0 ? fd : 2, "PRELOADED uid=%d euid=%d exe=%s\n", getuid(), geteuid(), exe);
}
"""


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    d = tmp_path_factory.mktemp("preload")
    (d / "p.c").write_text(PAYLOAD)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "p.so"), str(d / "p.c")], check=True)
    return (d / "p.so").read_bytes()


@pytest.mark.parametrize("variable", ["LD_PRELOAD", "LD_AUDIT"])
async def test_loader_variables_reach_only_the_sandboxed_program(sandbox: Sandbox, payload: bytes,
                                                                 variable: str) -> None:
    code = "import sys\nsys.stdin.buffer.read()\nprint('ran')"
    if sandbox.docker:  # stdin is a pipe there, which ld.so cannot map: the library comes as a file
        r = await sandbox.run("python", code, files={"p.so": payload}, env={variable: "/work/p.so"})
    else:
        r = await sandbox.run("python", code, stdin=payload, env={variable: "/proc/self/fd/0"})
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("PRELOADED")]
    assert lines, r  # the library did load (in the program), so a load outside would have shown too
    # Only the program itself (uid 1000 inside its user namespace) may load it; never the launcher (root)
    # nor bubblewrap (the host uid), which run outside the namespaces and the seccomp filter.
    for line in lines:
        assert "uid=1000 euid=1000" in line, line
        assert "execbox-launch" not in line and "bwrap" not in line, line
    assert r.stdout == "ran\n" or r.status.value == "runtime_error", r


async def test_vsock_is_denied(sandbox: Sandbox) -> None:
    # AF_VSOCK is not scoped to the network namespace: it would reach the hypervisor and other guests.
    code = """
import socket
try:
    socket.socket(40, socket.SOCK_STREAM)
    print("created")
except OSError as e:
    print("denied", e.errno)
"""
    r = await sandbox.run("python", code)
    assert r.stdout == "denied 1\n", r


@pytest.mark.local_only("checks the local provider's setuid-free root launcher binary")
def test_launcher_runs_with_an_empty_environment(sandbox: Sandbox) -> None:
    launcher = Path(sandbox.provider.launcher)
    assert launcher.stat().st_mode & 0o777 == 0o700  # only root runs it
