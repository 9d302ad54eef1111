"""Golden tests of the bubblewrap command line: a pure function, so every flag is pinned exactly.

Also execbox's own /etc (build_etc) and the root binds, both over a fake root tree."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from execbox.providers.local import bwrap
from execbox.providers.local.bwrap import (
    ETC_ENTRIES,
    ETC_FILES,
    ETC_SKIP,
    NETWORK_ETC_ENTRIES,
    Bind,
    SandboxSpec,
    build_argv,
    build_etc,
    root_binds,
)

ETC_DIR = "/run/execbox/etc-0123456789abcdef"

SPEC = SandboxSpec(
    argv=("python3", "main.py", "--", "a b"),
    binds=(Bind("/usr", "/usr"), Bind("usr/bin", "/bin", "symlink"), Bind("/opt/tool", "/opt/tool")),
    work_dir="/run/execbox/instances/42/work",
    tmp_dir="/run/execbox/instances/42/tmp",
    etc_dir=ETC_DIR,
    seccomp_fd=7,
    env=(("PATH", "/usr/bin"), ("LD_PRELOAD", "/work/x.so")),
)

SHM_DIR = "/run/execbox/instances/42/shm"

GOLDEN = [
    "bwrap",
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--unshare-net",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--uid",
    "1000",
    "--gid",
    "1000",
    "--hostname",
    "execbox",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--ro-bind",
    "/opt/tool",
    "/opt/tool",
    "--ro-bind",
    ETC_DIR,
    "/etc",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--bind",
    "/run/execbox/instances/42/work",
    "/work",
    "--bind",
    "/run/execbox/instances/42/tmp",
    "/tmp",
    "--remount-ro",
    "/",
    "--chdir",
    "/work",
    "--clearenv",
    "--setenv",
    "PATH",
    "/usr/bin",
    "--setenv",
    "LD_PRELOAD",
    "/work/x.so",
    "--seccomp",
    "7",
    "--",
    "python3",
    "main.py",
    "--",
    "a b",
]

GOLDEN_SHM = [
    "bwrap",
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--unshare-net",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--uid",
    "1000",
    "--gid",
    "1000",
    "--hostname",
    "execbox",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--ro-bind",
    "/opt/tool",
    "/opt/tool",
    "--ro-bind",
    ETC_DIR,
    "/etc",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--bind",
    "/run/execbox/instances/42/work",
    "/work",
    "--bind",
    "/run/execbox/instances/42/tmp",
    "/tmp",
    "--bind",
    SHM_DIR,
    "/dev/shm",
    "--remount-ro",
    "/",
    "--remount-ro",
    "/dev",
    "--chdir",
    "/work",
    "--clearenv",
    "--setenv",
    "PATH",
    "/usr/bin",
    "--setenv",
    "LD_PRELOAD",
    "/work/x.so",
    "--seccomp",
    "7",
    "--",
    "python3",
    "main.py",
    "--",
    "a b",
]


def test_golden_without_network() -> None:
    assert build_argv(SPEC) == GOLDEN


def test_golden_with_network() -> None:
    expected = [a for a in GOLDEN if a != "--unshare-net"]
    assert len(expected) == len(GOLDEN) - 1
    assert build_argv(replace(SPEC, network=True)) == expected


def test_golden_with_shm_dir() -> None:
    assert build_argv(replace(SPEC, shm_dir=SHM_DIR)) == GOLDEN_SHM


def test_golden_with_shm_dir_and_network() -> None:
    expected = [a for a in GOLDEN_SHM if a != "--unshare-net"]
    assert len(expected) == len(GOLDEN_SHM) - 1
    assert build_argv(replace(SPEC, shm_dir=SHM_DIR, network=True)) == expected


def test_golden_without_seccomp_and_other_binary_and_cwd() -> None:
    got = build_argv(replace(SPEC, seccomp_fd=None, cwd="/work/sub"), bwrap="/usr/bin/bwrap")
    expected = ["/usr/bin/bwrap", *GOLDEN[1:]]
    i = expected.index("--seccomp")
    del expected[i : i + 2]
    expected[expected.index("--chdir") + 1] = "/work/sub"
    assert got == expected


def test_golden_pre_started_sandbox_with_waiter() -> None:
    # A warm pool's sandbox: the same sandbox, whose program is execbox's waiter, executed from a descriptor
    # (nothing extra is mounted), as the pid namespace's init, with an empty environment, in /work.
    got = build_argv(bwrap.with_waiter(replace(SPEC, shm_dir=SHM_DIR, cwd="/work/sub"), waiter_fd=9, control_fd=11))
    expected = list(GOLDEN_SHM)
    expected.insert(expected.index("--unshare-net") + 1, "--as-pid-1")
    clear = expected.index("--clearenv")
    del expected[clear + 1 : expected.index("--seccomp")]  # no --setenv: the request's env reaches the waiter
    expected[expected.index("--") + 1 :] = ["/proc/self/fd/9", "11"]
    assert got == expected
    assert build_argv(replace(SPEC, shm_dir=SHM_DIR)) == GOLDEN_SHM  # the cold path's argv is unchanged


def _options(argv: list[str]) -> list[str]:
    """The bwrap part, before the sandboxed command."""
    return argv[: argv.index("--")]


def _pairs(argv: list[str], flag: str, nargs: int) -> list[tuple[str, ...]]:
    opts = _options(argv)
    return [tuple(opts[i + 1 : i + 1 + nargs]) for i, a in enumerate(opts) if a == flag]


def _under(path: str, *prefixes: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


MOUNT_FLAGS = ("--bind", "--ro-bind", "--symlink", "--proc", "--dev", "--tmpfs", "--dev-bind", "--bind-try")


@pytest.mark.parametrize("shm", [False, True], ids=["no-shm", "shm"])
@pytest.mark.parametrize("network", [False, True], ids=["no-net", "net"])
def test_security_flags(network: bool, shm: bool) -> None:
    spec = replace(SPEC, network=network, shm_dir=SHM_DIR if shm else None)
    argv = build_argv(spec)
    opts = _options(argv)
    assert ("--unshare-net" in opts) is (not network)
    assert "--share-net" not in opts
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ):
        assert opts.count(flag) == 1, flag
    assert _pairs(argv, "--cap-drop", 1) == [("ALL",)]
    assert "--cap-add" not in opts
    assert _pairs(argv, "--uid", 1) == [("1000",)] and _pairs(argv, "--gid", 1) == [("1000",)]
    assert _pairs(argv, "--seccomp", 1) == [("7",)]
    # / is remounted read-only, and /dev as well when /dev/shm is the instance's own (bounded) directory
    assert _pairs(argv, "--remount-ro", 1) == ([("/",), ("/dev",)] if shm else [("/",)])
    # every remount comes after every mount, so nothing is mounted on a writable root afterwards
    last_mount = max(i for i, a in enumerate(opts) if a in MOUNT_FLAGS)
    first_remount = opts.index("--remount-ro")
    assert first_remount > last_mount
    # the only writable binds are the workdir, /tmp and (with shm_dir) /dev/shm; no other writable mounts
    writable = [(SPEC.work_dir, "/work"), (SPEC.tmp_dir, "/tmp")] + ([(SHM_DIR, "/dev/shm")] if shm else [])
    assert _pairs(argv, "--bind", 2) == writable
    for flag in ("--dev-bind", "--dev-bind-try", "--bind-try", "--tmpfs", "--file", "--bind-data", "--chmod"):
        assert flag not in opts, flag
    # /etc is execbox's own directory, bound read-only once; nothing of the host's /etc is bound
    ro = _pairs(argv, "--ro-bind", 2)
    rw = _pairs(argv, "--bind", 2)
    assert [(s, d) for s, d in ro + rw if _under(d, "/etc")] == [(ETC_DIR, "/etc")]
    assert not any(_under(s, "/etc") for s, _ in ro + rw)
    assert not any(_under(a, "/etc") for a in opts if a != "/etc")  # "/etc" only as the bind's destination
    assert opts.count("/etc") == 1
    dests = [d for _, d in ro + rw] + [d for _, d in _pairs(argv, "--symlink", 2)]
    sources = [s for s, _ in ro + rw]
    assert "/" not in dests and "/" not in sources
    assert not any(_under(p, "/root", "/home", "/proc", "/sys") for p in dests + sources)
    assert not any(a in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/passwd") for a in opts)
    assert _pairs(argv, "--proc", 1) == [("/proc",)] and _pairs(argv, "--dev", 1) == [("/dev",)]
    if shm:
        # /dev/shm is bound after bubblewrap's /dev, and /dev is made read-only after both
        assert opts.index("--dev") < opts.index("/dev/shm") < len(opts) - 1 - opts[::-1].index("--remount-ro")
    assert argv[argv.index("--") + 1 :] == list(SPEC.argv)


def test_command_that_looks_like_options_stays_after_the_separator() -> None:
    argv = build_argv(replace(SPEC, argv=("--bind", "/", "/x")))
    assert argv[-4:] == ["--", "--bind", "/", "/x"]
    assert _pairs(argv, "--bind", 2) == [(SPEC.work_dir, "/work"), (SPEC.tmp_dir, "/tmp")]


# --- a fake root tree -------------------------------------------------------------------------------------


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in (
        "usr/bin",
        "usr/lib",
        "lib64",
        "etc/ssl/certs",
        "etc/ssl/private",
        "etc/ld.so.conf.d",
        "etc/alternatives",
        "etc/sudoers.d",
        "root",
        "home/user",
    ):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib32").write_text("a file, not a directory")  # neither dir nor symlink: skipped
    etc = root / "etc"
    files = {
        "ld.so.cache": "host ld cache",
        "ld.so.conf.d/x86_64.conf": "/usr/lib/x86_64\n",
        "nsswitch.conf": "hosts: files dns\n",
        "resolv.conf": "nameserver 192.0.2.53\n",
        "ssl/openssl.cnf": "[openssl]\n",
        "ssl/certs/ca.pem": "CERT\n",
        "ssl/private/host.key": "PRIVATE KEY\n",
        # the host's identity and secrets: never copied
        "passwd": "root:x:0:0:host-root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        "group": "root:x:0:\nalice:x:1000:\nsudo:x:27:alice\n",
        "shadow": "root:$6$hostsecret:19000::::::\n",
        "gshadow": "root:*::\n",
        "hosts": "10.0.0.1\thost-internal\n",
        "hostname": "host-machine\n",
        "machine-id": "0123456789abcdef\n",
        "sudoers.d/alice": "alice ALL=(ALL) NOPASSWD: ALL\n",
    }
    for name, text in files.items():
        (etc / name).write_text(text)
    (etc / "localtime").symlink_to("/usr/share/zoneinfo/Nowhere")  # dangling: still copied as a symlink
    (etc / "ssl/certs/ca-link.pem").symlink_to("ca.pem")  # symlinks inside copied dirs stay symlinks
    (etc / "alternatives/java").symlink_to("/usr/lib/jvm/missing/bin/java")  # dangling, inside a dir
    return root


def _tree(d: Path) -> dict[str, str]:
    """Every path under d: 'dir', 'link:<target>' or 'file:<content>'."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "file:" + p.read_text()
    return out


def _expected_tree(network: bool) -> dict[str, str]:
    tree = {
        "alternatives": "dir",
        "alternatives/java": "link:/usr/lib/jvm/missing/bin/java",
        "ld.so.cache": "file:host ld cache",
        "ld.so.conf.d": "dir",
        "ld.so.conf.d/x86_64.conf": "file:/usr/lib/x86_64\n",
        "localtime": "link:/usr/share/zoneinfo/Nowhere",
        "nsswitch.conf": "file:hosts: files dns\n",
        "ssl": "dir",
        "ssl/certs": "dir",
        "ssl/certs/ca.pem": "file:CERT\n",
        "ssl/certs/ca-link.pem": "link:ca.pem",
        "ssl/openssl.cnf": "file:[openssl]\n",
        **{name: "file:" + text for name, text in ETC_FILES.items()},
    }
    if network:
        tree["resolv.conf"] = "file:nameserver 192.0.2.53\n"
    return tree


# --- root_binds -----------------------------------------------------------------------------------------------


def test_root_binds_fake_root(fake_root: Path) -> None:
    # only the system directories: /etc is build_etc's, never bound entry by entry
    assert root_binds(root=str(fake_root)) == [
        Bind("/usr", "/usr"),
        Bind("usr/bin", "/bin", "symlink"),
        Bind("usr/lib", "/lib", "symlink"),
        Bind("/lib64", "/lib64"),
    ]


def test_root_binds_extra_read_only(fake_root: Path) -> None:
    got = root_binds(extra_ro=("/opt/toolchain", "/srv/data"), root=str(fake_root))
    assert got == [
        Bind("/usr", "/usr"),
        Bind("usr/bin", "/bin", "symlink"),
        Bind("usr/lib", "/lib", "symlink"),
        Bind("/lib64", "/lib64"),
        Bind("/opt/toolchain", "/opt/toolchain"),
        Bind("/srv/data", "/srv/data"),
    ]


def test_root_binds_empty_root(tmp_path: Path) -> None:
    assert root_binds(root=str(tmp_path)) == []


def test_root_binds_on_this_host_are_safe() -> None:
    binds = root_binds()
    assert binds, "a host without /usr?"
    dests = [b.dest for b in binds]
    assert len(dests) == len(set(dests))
    assert all(b.kind in ("ro-bind", "symlink") for b in binds)
    assert set(dests) <= set(bwrap.SYSTEM_DIRS)
    assert not any(_under(b.source, "/etc", "/root", "/home", "/var", "/run") for b in binds if b.kind != "symlink")


def test_etc_entries_never_include_host_identity() -> None:
    identity = {"passwd", "group", "shadow", "gshadow", "sudoers", "sudoers.d", "hosts", "hostname", "machine-id"}
    assert not identity & set(ETC_ENTRIES)
    assert not identity & set(NETWORK_ETC_ENTRIES)
    assert "resolv.conf" not in ETC_ENTRIES
    assert "ssl" in ETC_ENTRIES and "ssl/private" in ETC_SKIP
    assert sorted(ETC_FILES) == ["group", "hostname", "hosts", "passwd"]
    users = [line.split(":")[0] for line in ETC_FILES["passwd"].splitlines()]
    assert users == ["root", "sandbox", "nobody"]
    assert "sandbox:x:1000:1000:" in ETC_FILES["passwd"]


# --- build_etc ------------------------------------------------------------------------------------------------


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    """build_etc's parent, apart from the fake root."""
    return tmp_path / "runtime"


@pytest.mark.parametrize("network", [False, True], ids=["no-net", "net"])
def test_build_etc_copies_only_the_allowed_entries(runtime: Path, fake_root: Path, network: bool) -> None:
    d = build_etc(runtime, network, root=str(fake_root))
    assert d.parent == runtime and d.is_dir() and not d.is_symlink()
    assert d.name.startswith("etc-net-" if network else "etc-") and d.name.startswith("etc-net-") is network
    assert os.listdir(runtime) == [d.name]  # no temporary directory left behind
    assert _tree(d) == _expected_tree(network)
    # the host's identity and secrets are not there; execbox's own identity files are
    for secret in ("shadow", "gshadow", "machine-id", "sudoers.d", "ssl/private"):
        assert not (d / secret).exists() and not (d / secret).is_symlink(), secret
    assert ("resolv.conf" in os.listdir(d)) is network
    for name, text in ETC_FILES.items():
        assert (d / name).read_text() == text
        assert not (d / name).is_symlink()
        assert stat.S_IMODE((d / name).lstat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_build_etc_network_and_not_are_different_directories(runtime: Path, fake_root: Path) -> None:
    a = build_etc(runtime, False, root=str(fake_root))
    b = build_etc(runtime, True, root=str(fake_root))
    assert a != b
    assert sorted(os.listdir(runtime)) == sorted([a.name, b.name])
    assert not (a / "resolv.conf").exists() and (b / "resolv.conf").read_text() == "nameserver 192.0.2.53\n"


def test_build_etc_reuses_the_directory(runtime: Path, fake_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_etc(runtime, False, root=str(fake_root))
    before = {p: p.lstat().st_mtime_ns for p in [first, *first.rglob("*")]}
    inode = first.stat().st_ino

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt")

    monkeypatch.setattr(bwrap.shutil, "copytree", no_rebuild)
    monkeypatch.setattr(bwrap.shutil, "copy2", no_rebuild)
    monkeypatch.setattr(bwrap.os, "symlink", no_rebuild)
    second = build_etc(runtime, False, root=str(fake_root))
    assert second == first
    assert first.stat().st_ino == inode
    assert {p: p.lstat().st_mtime_ns for p in [first, *first.rglob("*")]} == before
    assert os.listdir(runtime) == [first.name]


@pytest.mark.parametrize("source", ["ld.so.cache", "ssl/certs/ca.pem", "nsswitch.conf"])
def test_build_etc_changed_source_makes_a_new_directory(runtime: Path, fake_root: Path, source: str) -> None:
    first = build_etc(runtime, False, root=str(fake_root))
    src = fake_root / "etc" / source
    old = src.lstat().st_mtime_ns
    src.write_text("changed on the host, and longer than before\n")
    os.utime(src, ns=(old + 5_000_000_000, old + 5_000_000_000))
    second = build_etc(runtime, False, root=str(fake_root))
    assert second != first and second.parent == runtime and second.name.startswith("etc-")
    assert (second / source).read_text() == "changed on the host, and longer than before\n"
    assert (first / source).read_text() != (second / source).read_text()  # the old one is left as it was
    # and it is stable again afterwards
    assert build_etc(runtime, False, root=str(fake_root)) == second


def test_build_etc_changed_symlink_makes_a_new_directory(runtime: Path, fake_root: Path) -> None:
    first = build_etc(runtime, False, root=str(fake_root))
    link = fake_root / "etc/localtime"
    old = link.lstat()
    link.unlink()
    link.symlink_to("/usr/share/zoneinfo/Nowherf")  # only the target differs: same size, same mtime
    os.utime(link, ns=(old.st_atime_ns, old.st_mtime_ns), follow_symlinks=False)
    assert (link.lstat().st_size, link.lstat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    second = build_etc(runtime, False, root=str(fake_root))
    assert second != first
    assert os.readlink(second / "localtime") == "/usr/share/zoneinfo/Nowherf"


def test_build_etc_resolv_conf_changes_only_the_network_directory(runtime: Path, fake_root: Path) -> None:
    plain, net = build_etc(runtime, False, root=str(fake_root)), build_etc(runtime, True, root=str(fake_root))
    src = fake_root / "etc/resolv.conf"
    old = src.lstat().st_mtime_ns
    src.write_text("nameserver 198.51.100.53\n")
    os.utime(src, ns=(old + 5_000_000_000, old + 5_000_000_000))
    assert build_etc(runtime, False, root=str(fake_root)) == plain
    net2 = build_etc(runtime, True, root=str(fake_root))
    assert net2 != net and (net2 / "resolv.conf").read_text() == "nameserver 198.51.100.53\n"


def test_build_etc_ignores_changes_outside_its_sources(runtime: Path, fake_root: Path) -> None:
    first = build_etc(runtime, True, root=str(fake_root))
    for name in ("shadow", "passwd", "hostname"):
        src = fake_root / "etc" / name
        old = src.lstat().st_mtime_ns
        src.write_text("changed on the host, and longer than before\n")
        os.utime(src, ns=(old + 5_000_000_000, old + 5_000_000_000))
    assert build_etc(runtime, True, root=str(fake_root)) == first
    assert (first / "passwd").read_text() == ETC_FILES["passwd"]


def test_build_etc_on_this_host(runtime: Path) -> None:
    d = build_etc(runtime, True)
    names = set(os.listdir(d))
    assert names <= set(ETC_ENTRIES) | set(NETWORK_ETC_ENTRIES) | set(ETC_FILES)
    assert set(ETC_FILES) <= names
    for name, text in ETC_FILES.items():
        assert (d / name).read_text() == text
    assert not (d / "shadow").exists() and not (d / "gshadow").exists()
    assert not (d / "ssl/private").exists()
    assert build_etc(runtime, True) == d


def test_build_etc_copies_a_resolv_conf_that_points_outside_usr(runtime: Path, fake_root: Path, tmp_path: Path) -> None:
    # systemd-resolved: /etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf, which the sandbox cannot see
    real = tmp_path / "run-systemd-resolve-stub.conf"
    real.write_text("nameserver 127.0.0.53\n")
    (fake_root / "etc" / "resolv.conf").unlink()
    (fake_root / "etc" / "resolv.conf").symlink_to(real)
    built = build_etc(runtime, True, root=str(fake_root)) / "resolv.conf"
    assert not built.is_symlink()
    assert built.read_text() == "nameserver 127.0.0.53\n"


def test_environment_is_set_by_bwrap_never_inherited() -> None:
    # bubblewrap runs outside the sandbox: the program's environment (which may hold LD_PRELOAD) must be
    # given to it as --setenv after --clearenv, never as bubblewrap's own environment.
    argv = build_argv(SPEC)
    opts = _options(argv)
    assert opts.count("--clearenv") == 1
    assert opts.index("--clearenv") < opts.index("--setenv")
    assert _pairs(argv, "--setenv", 2) == [("PATH", "/usr/bin"), ("LD_PRELOAD", "/work/x.so")]
