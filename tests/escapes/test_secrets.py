"""The server's secrets: the test process holds EXECBOX_TEST_SECRET in its environment (conftest.py); no
program, in any language, may read it from its environment, /proc, or anywhere else it can reach."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Sandbox

SECRET = os.environ["EXECBOX_TEST_SECRET"]


def _assert_no_secret(text: str) -> None:
    assert SECRET not in text
    assert "EXECBOX_TEST_SECRET" not in text


async def test_secret_not_in_environment_python(sandbox: Sandbox) -> None:
    code = "import os, json\nprint(json.dumps(dict(os.environ), sort_keys=True))"
    r = await sandbox.run("python", code, env={"MINE": "1"})
    assert r.status.value == "ok", r
    _assert_no_secret(r.stdout)
    import json

    env = json.loads(r.stdout)
    # exactly what execbox gives: its own basics, the language's settings and the request's variables
    expected = {"PATH", "HOME", "LANG", "TMPDIR", "PWD", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED",
                "PYTHONIOENCODING", "MINE"}
    if sandbox.docker:  # the container's HOSTNAME, and what the exec's agent shell and env(1) add
        expected |= {"HOSTNAME", "OLDPWD", "SHLVL", "_"}
        assert env["HOSTNAME"] == "sandbox" and env["_"] == "/usr/bin/env", env
    assert set(env) == expected, env


async def test_secret_not_in_any_proc_file_python(sandbox: Sandbox) -> None:
    # Read everything every visible process exposes, bubblewrap's pid-1 (the "parent") included; print it
    # all, so a leak anywhere makes the assertion fail.
    code = r"""
import os
for pid in ["self", "thread-self"] + [p for p in os.listdir("/proc") if p.isdigit()]:
    for name in ("environ", "cmdline", "status", "stat", "maps", "mountinfo", "cgroup", "comm", "limits",
                 "auxv", "task"):
        path = f"/proc/{pid}/{name}"
        try:
            if os.path.isdir(path):
                data = "\n".join(os.listdir(path)).encode()
            else:
                with open(path, "rb") as f:
                    data = f.read()
            print(path, data.replace(b"\0", b" ").decode(errors="replace"))
        except OSError as e:
            print(path, os.strerror(e.errno))
print("ppid", os.getppid())
"""
    r = await sandbox.run("python", code, output_bytes=1024 * 1024)
    assert r.status.value == "ok", r
    # it did read the parent: bubblewrap's init, which execbox starts with an empty environment; or it could
    # not: execbox's waiter (pid 1 of a pre-started sandbox) is not dumpable, its environ closed to all
    assert re.search(r"^/proc/1/environ (Permission denied)?$", r.stdout, re.M), r.stdout
    _assert_no_secret(r.stdout + r.stderr)


async def test_secret_not_readable_from_bash(sandbox: Sandbox) -> None:
    code = ("env; cat /proc/1/environ /proc/*/environ 2>&1 | tr '\\0' '\\n'; set; "
            "grep -rlsaE 'EXECBOX_TEST_SECRE[T]|execbox-test-secre[t]-' "
            "/proc/[0-9]*/environ /etc /tmp /work /dev/shm; echo grep=$?")
    r = await sandbox.run("bash", code, output_bytes=1024 * 1024)
    assert r.status.value == "ok", r
    # grep found nothing: exit 1, or 2 when some files were unreadable; never 0
    assert "\ngrep=" in r.stdout and "\ngrep=0" not in r.stdout
    _assert_no_secret(r.stdout + r.stderr)


async def test_secret_not_readable_from_javascript(sandbox: Sandbox) -> None:
    code = r"""
const fs = require("fs");
console.log(JSON.stringify(process.env));
for (const p of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d)).concat(["self"])) {
  for (const f of ["environ", "cmdline"]) {
    try { console.log(p, f, fs.readFileSync(`/proc/${p}/${f}`, "latin1").replace(/\0/g, " ")); }
    catch (e) { console.log(p, f, e.code); }
  }
}
"""
    r = await sandbox.run("javascript", code)
    assert r.status.value == "ok", r
    # read, and empty: bubblewrap's init gets no environment; or unreadable: execbox's waiter, not dumpable
    assert "\n1 environ \n" in r.stdout or "\n1 environ EACCES\n" in r.stdout, r.stdout
    _assert_no_secret(r.stdout + r.stderr)


async def test_secret_not_reachable_from_c_via_host_pids(sandbox: Sandbox) -> None:
    # The server's real pid and its parent's, used directly: they do not exist in the sandbox's pid space.
    code = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char path[64], buf[65536];
        snprintf(path, sizeof path, "/proc/%s/environ", argv[i]);
        FILE *f = fopen(path, "rb");
        if (!f) { printf("%s: absent\n", argv[i]); continue; }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        for (size_t j = 0; j < n; j++) if (!buf[j]) buf[j] = '\n';
        buf[n] = 0;
        printf("%s: %s\n", argv[i], buf);
    }
    return 0;
}
"""
    pids = [str(os.getpid()), str(os.getppid())]
    r = await sandbox.run("c", code, args=[*pids, "1", "self"])
    assert r.status.value == "ok", r
    _assert_no_secret(r.stdout)
    if sandbox.docker:  # pid 1 is docker-init, uid 0: closed to the sandbox uid; its own environ: the agent's
        assert "\n1: absent\n" in r.stdout, r.stdout
        own = r.stdout.split("\nself: ", 1)[1].strip().splitlines()
        assert {v.split("=", 1)[0] for v in own} == {"HOSTNAME", "PWD", "HOME", "LANG", "TMPDIR", "SHLVL", "PATH",
                                                     "OLDPWD", "_"}, own
    else:
        assert "\n1: \n" in r.stdout  # the sandbox's own init is readable, and its environment is empty
        assert "\nself: PATH=/usr/local/bin:/usr/bin:/bin\n" in r.stdout
    for pid in pids:
        if int(pid) > 2:  # 1 and 2 are the sandbox's own bubblewrap init and program
            assert f"{pid}: absent" in r.stdout
