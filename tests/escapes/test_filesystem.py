"""The filesystem: nothing of the host is visible or writable beyond the toolchains; submitted names and
planted symlinks cannot make execbox itself read or write outside the workdir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic
import pytest
from tests.providers import RUNTIME_ROOT

import execbox
from execbox.providers.local import bwrap

if TYPE_CHECKING:
    from conftest import Sandbox


async def test_etc_shadow_is_absent(sandbox: Sandbox) -> None:
    code = r"""
import os
for p in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh/ssh_host_ed25519_key", "/root/.ssh"):
    try:
        print(p, open(p).read()[:40])
    except OSError as e:
        print(p, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    if sandbox.docker:  # the image's own (empty) shadow files and root-only /root: there, but unreadable
        assert r.stdout == ("/etc/shadow Permission denied\n/etc/gshadow Permission denied\n"
                            "/etc/sudoers No such file or directory\n"
                            "/etc/ssh/ssh_host_ed25519_key No such file or directory\n"
                            "/root/.ssh Permission denied\n")
        return
    assert r.stdout == ("/etc/shadow No such file or directory\n/etc/gshadow No such file or directory\n"
                        "/etc/sudoers No such file or directory\n"
                        "/etc/ssh/ssh_host_ed25519_key No such file or directory\n"
                        "/root/.ssh No such file or directory\n")


async def test_etc_shadow_bash(sandbox: Sandbox) -> None:
    r = await sandbox.run("bash", "cat /etc/shadow; echo rc=$?; ls /etc")
    assert r.status.value == "ok", r
    if sandbox.docker:  # the image's own /etc/shadow: listed, but unreadable by the sandbox uid
        assert "cat: /etc/shadow: Permission denied" in r.stderr
        assert "rc=1" in r.stdout and "root:" not in r.stdout
        return
    assert "cat: /etc/shadow: No such file or directory" in r.stderr
    assert "rc=1" in r.stdout and "shadow" not in r.stdout


async def test_etc_passwd_is_execboxs_own(sandbox: Sandbox) -> None:
    r = await sandbox.run("bash", "cat /etc/passwd; echo ---; cat /etc/group; echo ---; hostname; id")
    assert r.status.value == "ok", r
    passwd, group, rest = r.stdout.split("---\n")
    if sandbox.docker:  # the image's own files (Debian's, with the sandbox user), never the host's
        assert passwd != Path("/etc/passwd").read_text() and group != Path("/etc/group").read_text()
        assert "sandbox:x:1000:1000:" in passwd, passwd
        assert rest.startswith("sandbox\nuid=1000(") and "gid=1000(" in rest, rest
        return
    assert passwd == bwrap.ETC_FILES["passwd"]
    assert group == bwrap.ETC_FILES["group"]
    assert rest == "execbox\nuid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)\n"
    assert passwd != Path("/etc/passwd").read_text()


async def test_host_paths_are_invisible(sandbox: Sandbox, tmp_path: Path) -> None:
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text("HOST-FILE-SECRET")
    os.chmod(tmp_path, 0o755)
    host_only = ["/work/main", "/run/execbox", str(RUNTIME_ROOT), "/var/run/docker.sock", "/run/systemd",
                 str(secret_file), os.getcwd()]
    # the image's own directories, empty or root-only: a docker container has them (never the host's)
    image_dirs = ["/root", "/home", "/run", "/var", "/opt", "/srv", "/mnt", "/media", "/boot", "/sys",
                  "/sys/fs/cgroup", str(Path.home()), "/usr/local/share/../../../root"]
    paths = host_only + image_dirs
    code = f"""
import json, os
paths = {json.dumps(paths)}
print(json.dumps({{p: os.path.exists(p) for p in paths}}))
print(json.dumps(sorted(os.listdir("/"))))
print(json.dumps(sorted(os.listdir("/work"))))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    seen, root, work = (json.loads(line) for line in r.stdout.splitlines())
    allowed = set(image_dirs) if sandbox.docker else set()
    assert {p for p, exists in seen.items() if exists} <= allowed, seen
    fhs = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr", "work"}
    if sandbox.docker:  # Debian's root directories, from the image
        fhs |= {"boot", "home", "media", "mnt", "opt", "root", "run", "srv", "sys", "var", ".dockerenv"}
    assert set(root) <= fhs, root
    assert work == ["main.py"]


async def test_home_and_server_dirs_from_javascript(sandbox: Sandbox) -> None:
    code = r"""
const fs = require("fs");
for (const p of ["/root/.bashrc", "/work/main/pyproject.toml", "/etc/hostname", "/proc/1/root/root"]) {
  try { console.log(p, JSON.stringify(fs.readFileSync(p, "utf8").slice(0, 30))); }
  catch (e) { console.log(p, e.code); }
}
"""
    r = await sandbox.run("javascript", code)
    assert r.status.value == "ok", r
    if sandbox.docker:  # the image's /root is root-only; pid 1 is docker-init (uid 0): its root is closed
        assert r.stdout == ('/root/.bashrc EACCES\n/work/main/pyproject.toml ENOENT\n/etc/hostname "sandbox\\n"\n'
                            "/proc/1/root/root EACCES\n"), r.stdout
        return
    # (/proc/1/root is the sandbox's own root: pid 1 is bubblewrap's init inside the sandbox, or, in a
    # pre-started sandbox, execbox's waiter, which is not dumpable: its /proc/1/root is closed to all)
    assert r.stdout in (
        '/root/.bashrc ENOENT\n/work/main/pyproject.toml ENOENT\n/etc/hostname "execbox\\n"\n'
        f"/proc/1/root/root {e}\n" for e in ("ENOENT", "EACCES")), r.stdout


async def test_writing_outside_the_workdir_fails(sandbox: Sandbox) -> None:
    marker = f"execbox-escape-{os.getpid()}"
    targets = ["/", "/etc", "/usr", "/usr/bin", "/usr/local", "/bin", "/lib", "/etc/ssl", "/proc", "/dev"]
    code = f"""
import os
for d in {targets!r}:
    p = os.path.join(d, {marker!r})
    try:
        with open(p, "w") as f:
            f.write("x")
        print(d, "WROTE")
    except OSError as e:
        print(d, os.strerror(e.errno))
for p in ("/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/proc/sys/vm/drop_caches"):
    try:
        with open(p, "w") as f:
            f.write("h")
        print(p, "WROTE")
    except OSError as e:
        print(p, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert "WROTE" not in r.stdout, r.stdout
    assert len(r.stdout.splitlines()) == len(targets) + 3
    for line in r.stdout.splitlines():
        assert line.endswith(("Read-only file system", "Permission denied", "No such file or directory")), \
            line
    for d in targets:  # and nothing appeared on the host
        assert not os.path.exists(os.path.join(d, marker))


async def test_overwriting_host_binaries_fails(sandbox: Sandbox) -> None:
    # runc's CVE-2019-5736 wrote through /proc/self/exe; here every binary is a read-only bind
    code = r"""
import os, sys
for p in ("/proc/self/exe", "/proc/1/exe", sys.executable, "/usr/bin/bwrap", "/bin/sh"):
    try:
        fd = os.open(p, os.O_WRONLY)
        print(p, "OPENED FOR WRITING")
    except OSError as e:
        print(p, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert "OPENED" not in r.stdout
    assert all(line.endswith(("Read-only file system", "Text file busy", "Permission denied",
                              "No such file or directory")) for line in r.stdout.splitlines()), r.stdout


async def test_devices_are_not_reachable(sandbox: Sandbox) -> None:
    code = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    const char *devs[] = {"/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda",
                          "/dev/nvme0n1", "/dev/fuse", "/dev/net/tun", "/dev/kvm"};
    for (int i = 0; i < 10; i++) {
        int fd = open(devs[i], O_RDONLY);
        printf("%s %s\n", devs[i], fd >= 0 ? "OPENED" : strerror(errno));
    }
    return 0;
}
"""
    r = await sandbox.run("c", code)
    assert r.status.value == "ok", r
    assert "OPENED" not in r.stdout
    assert r.stdout.count("No such file or directory") == 10, r.stdout


async def test_cgroupfs_release_agent_is_unreachable(sandbox: Sandbox) -> None:
    # CVE-2022-0492 wrote a cgroup v1 release_agent; there is no cgroupfs to write to (docker: a read-only
    # one), nor any to mount
    code = r"""
import glob, os
print(os.path.exists("/sys"), os.path.exists("/sys/fs/cgroup"))
targets = ["/sys/fs/cgroup/release_agent"] + sorted(glob.glob("/sys/fs/cgroup/*/release_agent"))
targets += sorted(glob.glob("/sys/fs/cgroup/*/notify_on_release"))[:2] + ["/sys/fs/cgroup/x"]
for p in targets:
    try:
        with open(p, "w") as f:
            f.write("/work/pwn")
        print(p, "WROTE")
    except OSError as e:
        print(p, os.strerror(e.errno))
try:
    os.mkdir("/sys/fs/cgroup/execbox-escape"); print("mkdir WROTE")
except OSError as e:
    print("mkdir", os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    exists, *writes = r.stdout.splitlines()
    assert exists == ("True True" if sandbox.docker else "False False")
    assert writes and not any("WROTE" in w for w in writes), writes
    denied = ("Read-only file system", "Permission denied", "No such file or directory")
    assert all(w.endswith(denied) for w in writes), writes


async def test_cgroup_namespace_hides_the_host_location(sandbox: Sandbox) -> None:
    code = 'print([l.split(":", 2)[2] for l in open("/proc/self/cgroup").read().splitlines()])'
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert "execbox" not in r.stdout and "docker" not in r.stdout, r.stdout


# ------------------------------------------------------------------------- submitted file names (the models)

@pytest.mark.parametrize("name", ["../../x", "../x", "a/../../x", "/etc/passwd", "/x", "a/./b", "a//b",
                                  "..", ".", "", "a\\..\\b", "x\x00y", "a/\nb"])
def test_path_traversal_in_submitted_file_names_is_rejected(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="file name"):
        execbox.File(name=name, content="owned")
    with pytest.raises(pydantic.ValidationError, match="file name"):
        execbox.ExecutionRequest(language="python", code="print(1)",
                                 files=[{"name": name, "content": "owned"}])
    with pytest.raises(pydantic.ValidationError, match="file name"):
        execbox.ExecutionRequest(language="python", code="print(1)", entry=name)


def test_path_traversal_through_the_library_api_is_rejected() -> None:
    # rejected before anything runs: the library face reports pydantic's error as a RequestError
    with pytest.raises((pydantic.ValidationError, execbox.RequestError), match=r"may not contain '\.\.'"):
        execbox.run("print(1)", "python", files={"../../x": "owned"})
    assert not Path("/x").exists() and not Path("../../x").exists()


def test_invalid_file_error_is_a_request_error() -> None:
    with pytest.raises(execbox.InvalidFileError, match="may not contain"):
        execbox.models.check_file_name("../../x")
    assert issubclass(execbox.InvalidFileError, execbox.RequestError)


async def test_code_and_file_with_the_entry_name_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(execbox.InvalidFileError, match="given twice"):
        await sandbox.run("python", "print(1)", files={"main.py": "print(2)"})


# ------------------------------------------------------------------------------- symlinks pointing out

async def test_symlinks_pointing_out_lead_nowhere_inside(sandbox: Sandbox) -> None:
    code = r"""
import os
for name, target in (("s1", "/etc/shadow"), ("s2", "../../../../../../root/.bashrc"),
                     ("s3", "/proc/1/root/etc/shadow"), ("s4", "/work/../../root")):
    os.symlink(target, name)
    try:
        print(name, repr(open(name).read()[:20]))
    except OSError as e:
        print(name, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert r.stdout.count("No such file or directory") + r.stdout.count("Permission denied") + \
        r.stdout.count("Is a directory") == 4, r.stdout


async def test_planted_symlink_is_not_followed_by_the_host_read_file(sandbox: Sandbox) -> None:
    # With `arguments`, execbox reads .execbox_return.json from the workdir on the host side, as root.
    # The program replaces it with a symlink to the host's /etc/shadow after the driver wrote it; the host
    # must not follow it (the result must not contain the host's shadow file).
    code = r"""
import atexit, os
def swap():
    os.replace(".execbox_return.json", "keep.json")
    os.symlink("/etc/shadow", ".execbox_return.json")
    print("planted", os.readlink(".execbox_return.json"), flush=True)
def main():
    atexit.register(swap)
    return {"harmless": True}
"""
    r = await sandbox.run("python", code, arguments={})
    assert "planted /etc/shadow" in r.stdout, r
    shadow = Path("/etc/shadow").read_text()
    assert r.return_value is None and r.status.value == "runtime_error", r
    assert r.message == "main() did not return (no return value written)"
    assert "root:" not in r.model_dump_json() and shadow[:20] not in r.model_dump_json()


@pytest.mark.parametrize("target", ["/proc/self/environ", "../../../../../../../etc/shadow", "/dev/zero",
                                    "/work/main/pyproject.toml"])
async def test_planted_symlink_variants_for_the_host_read(sandbox: Sandbox, target: str) -> None:
    # /proc/self/environ on the host side would be the *server's* environment, with its secret
    code = f"""
import atexit, os
def swap():
    os.remove(".execbox_return.json")
    os.symlink({target!r}, ".execbox_return.json")
def main():
    atexit.register(swap)
    return 1
"""
    r = await sandbox.run("python", code, arguments={})
    assert r.return_value is None and r.status.value == "runtime_error", r
    assert os.environ["EXECBOX_TEST_SECRET"] not in r.model_dump_json()


async def test_planted_fifo_does_not_hang_the_host_read(sandbox: Sandbox) -> None:
    code = r"""
import atexit, os
def swap():
    os.remove(".execbox_return.json")
    os.mkfifo(".execbox_return.json")
def main():
    atexit.register(swap)
    return 1
"""
    r = await sandbox.run("python", code, arguments={})
    assert r.return_value is None and r.status.value == "runtime_error", r


async def test_planted_symlinked_directory_for_the_host_read(sandbox: Sandbox) -> None:
    # javascript's driver writes .execbox_return.json too: main() turns the workdir's file into a path
    # through a symlinked directory; the host-side read must stay in the workdir.
    code = r"""
const fs = require("fs");
async function main() {
  process.on("exit", () => {
    fs.rmSync(".execbox_return.json");
    fs.symlinkSync("/etc", "etcdir");
    fs.symlinkSync("etcdir/shadow", ".execbox_return.json");
    console.log("planted");
  });
  return 1;
}
"""
    r = await sandbox.run("javascript", code, arguments={})
    assert "planted" in r.stdout, r
    assert r.return_value is None and r.status.value == "runtime_error", r
    assert "root:" not in r.model_dump_json()


async def test_hardlinking_host_files_is_impossible(sandbox: Sandbox) -> None:
    code = r"""
import os
for src in ("/usr/bin/python3", "/etc/ssl/certs/ca-certificates.crt", "/etc/passwd"):
    try:
        os.link(src, "/work/link"); print(src, "LINKED"); os.remove("/work/link")
    except OSError as e:
        print(src, os.strerror(e.errno))
"""
    r = await sandbox.run("python", code)
    assert r.status.value == "ok", r
    assert "LINKED" not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0] == "/usr/bin/python3 Invalid cross-device link"
    assert lines[2] == "/etc/passwd Invalid cross-device link"
    # the CA bundle is on a read-only layer too, where the image has one (docker's python image may not)
    assert lines[1] in ("/etc/ssl/certs/ca-certificates.crt Invalid cross-device link",
                        *(["/etc/ssl/certs/ca-certificates.crt No such file or directory"] if sandbox.docker else []))
    assert len(lines) == 3, r.stdout
