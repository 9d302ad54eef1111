"""Golden tests of the bubblewrap command line: a pure function, so every flag is pinned exactly."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from execbox.providers.local.bwrap import (
    ETC_ENTRIES,
    ETC_FILES,
    NETWORK_ETC_ENTRIES,
    Bind,
    SandboxSpec,
    build_argv,
    root_binds,
    write_etc,
)

SPEC = SandboxSpec(
    argv=("python3", "main.py", "--", "a b"),
    binds=(Bind("/usr", "/usr"), Bind("usr/bin", "/bin", "symlink"), Bind("/etc/ssl", "/etc/ssl")),
    work_dir="/run/execbox/instances/42/work",
    tmp_dir="/run/execbox/instances/42/tmp",
    etc_dir="/run/execbox/etc",
    seccomp_fd=7,
)

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
    "/etc/ssl",
    "/etc/ssl",
    "--ro-bind",
    "/run/execbox/etc/passwd",
    "/etc/passwd",
    "--ro-bind",
    "/run/execbox/etc/group",
    "/etc/group",
    "--ro-bind",
    "/run/execbox/etc/hosts",
    "/etc/hosts",
    "--ro-bind",
    "/run/execbox/etc/hostname",
    "/etc/hostname",
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


def test_golden_without_seccomp_and_other_binary_and_cwd() -> None:
    got = build_argv(replace(SPEC, seccomp_fd=None, cwd="/work/sub"), bwrap="/usr/bin/bwrap")
    expected = ["/usr/bin/bwrap", *GOLDEN[1:]]
    i = expected.index("--seccomp")
    del expected[i : i + 2]
    expected[expected.index("--chdir") + 1] = "/work/sub"
    assert got == expected


def _options(argv: list[str]) -> list[str]:
    """The bwrap part, before the sandboxed command."""
    return argv[: argv.index("--")]


def _pairs(argv: list[str], flag: str, nargs: int) -> list[tuple[str, ...]]:
    opts = _options(argv)
    return [tuple(opts[i + 1 : i + 1 + nargs]) for i, a in enumerate(opts) if a == flag]


@pytest.mark.parametrize("network", [False, True])
def test_security_flags(network: bool) -> None:
    argv = build_argv(replace(SPEC, network=network))
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
    assert _pairs(argv, "--remount-ro", 1) == [("/",)]
    assert _pairs(argv, "--seccomp", 1) == [("7",)]
    # --remount-ro / comes after every mount, so nothing is mounted on a writable root afterwards
    last_mount = max(
        i for i, a in enumerate(opts) if a in ("--bind", "--ro-bind", "--symlink", "--proc", "--dev")
    )
    assert opts.index("--remount-ro") > last_mount
    # the only writable binds are the workdir and /tmp
    assert _pairs(argv, "--bind", 2) == [(SPEC.work_dir, "/work"), (SPEC.tmp_dir, "/tmp")]
    assert "--dev-bind" not in opts and "--bind-try" not in opts
    dests = [d for _, d in _pairs(argv, "--ro-bind", 2) + _pairs(argv, "--bind", 2)]
    assert "/etc" not in dests and "/" not in dests
    assert not any(
        d == p or d.startswith(p + "/") for d in dests for p in ("/root", "/home", "/proc", "/sys")
    )
    assert not any(a in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers") for a in opts)
    # identity files are execbox's own, never the host's
    etc_sources = {d: s for s, d in _pairs(argv, "--ro-bind", 2) if d in ("/etc/passwd", "/etc/group")}
    assert etc_sources == {"/etc/passwd": "/run/execbox/etc/passwd", "/etc/group": "/run/execbox/etc/group"}
    assert _pairs(argv, "--proc", 1) == [("/proc",)] and _pairs(argv, "--dev", 1) == [("/dev",)]
    assert argv[argv.index("--") + 1 :] == list(SPEC.argv)


def test_command_that_looks_like_options_stays_after_the_separator() -> None:
    argv = build_argv(replace(SPEC, argv=("--bind", "/", "/x")))
    assert argv[-4:] == ["--", "--bind", "/", "/x"]
    assert _pairs(argv, "--bind", 2) == [(SPEC.work_dir, "/work"), (SPEC.tmp_dir, "/tmp")]


# --- root_binds over a fake root tree -----------------------------------------------------------------------


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("usr/bin", "usr/lib", "lib64", "etc/ssl/certs", "etc/ld.so.conf.d", "root", "home/user"):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    (root / "lib32").write_text("a file, not a directory")  # neither dir nor symlink: skipped
    for f in ("ld.so.cache", "resolv.conf", "passwd", "shadow", "hostname", "nsswitch.conf"):
        (root / "etc" / f).write_text("x")
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/Nowhere")  # dangling: still bound
    return root


def test_root_binds_fake_root(fake_root: Path) -> None:
    assert root_binds(root=str(fake_root)) == [
        Bind("/usr", "/usr"),
        Bind("usr/bin", "/bin", "symlink"),
        Bind("usr/lib", "/lib", "symlink"),
        Bind("/lib64", "/lib64"),
        Bind("/etc/ld.so.cache", "/etc/ld.so.cache"),
        Bind("/etc/ld.so.conf.d", "/etc/ld.so.conf.d"),
        Bind("/etc/ssl", "/etc/ssl"),
        Bind("/etc/localtime", "/etc/localtime"),
        Bind("/etc/nsswitch.conf", "/etc/nsswitch.conf"),
    ]


def test_root_binds_network_adds_resolv_conf(fake_root: Path) -> None:
    without = root_binds(root=str(fake_root))
    with_net = root_binds(network=True, root=str(fake_root))
    assert with_net == [*without, Bind("/etc/resolv.conf", "/etc/resolv.conf")]


def test_root_binds_extra_read_only(fake_root: Path) -> None:
    got = root_binds(extra_ro=("/opt/toolchain", "/srv/data"), root=str(fake_root))
    assert got[-2:] == [Bind("/opt/toolchain", "/opt/toolchain"), Bind("/srv/data", "/srv/data")]
    assert all(b.kind in ("ro-bind", "symlink") for b in got)


def test_root_binds_empty_root(tmp_path: Path) -> None:
    assert root_binds(root=str(tmp_path)) == []


def test_root_binds_on_this_host_are_safe() -> None:
    for network in (False, True):
        binds = root_binds(network=network)
        dests = [b.dest for b in binds]
        assert len(dests) == len(set(dests))
        assert all(b.kind in ("ro-bind", "symlink") for b in binds)
        assert "/etc" not in dests and "/" not in dests
        assert not any(
            d in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/sudoers") for d in dests
        )
        assert not any(
            d == p or d.startswith(p + "/") for d in dests for p in ("/root", "/home", "/var", "/run")
        )
        etc = {d.removeprefix("/etc/") for d in dests if d.startswith("/etc/")}
        assert etc <= set(ETC_ENTRIES) | (set(NETWORK_ETC_ENTRIES) if network else set())


def test_etc_entries_never_include_host_identity() -> None:
    assert not {"passwd", "group", "shadow", "gshadow", "sudoers", "hosts", "hostname"} & set(ETC_ENTRIES)
    assert "resolv.conf" not in ETC_ENTRIES


def test_write_etc(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    write_etc(d)
    assert sorted(os.listdir(d)) == ["group", "hostname", "hosts", "passwd"]
    for name, text in ETC_FILES.items():
        assert (d / name).read_text() == text
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    users = [line.split(":")[0] for line in ETC_FILES["passwd"].splitlines()]
    assert users == ["root", "sandbox", "nobody"]
    assert ":1000:1000:" in ETC_FILES["passwd"]
    (d / "passwd").write_text("tampered")
    write_etc(d)  # rewritten when changed
    assert (d / "passwd").read_text() == ETC_FILES["passwd"]
