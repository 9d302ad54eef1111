"""Fixtures for the hostile-program suite.

Each pytest(-xdist) worker gets its own LocalProvider: its own range of instance uids and its own runtime dir,
so the host checks after every test (no process, mount, cgroup, instance dir or IPC object left behind) only
look at what this worker could have created, even with other workers running at the same time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from execbox import Engine, ExecutionRequest, ExecutionResult, File, Limits
from execbox.providers.local import LocalProvider, LocalSettings
from execbox.providers.local.cgroups import Cgroup
from execbox.providers.local.provider import _kill_uid, _umount
from execbox.providers.registry import ProviderRegistry

# A secret of the server's own process: no sandboxed program may ever read it, anywhere (environ, /proc, ...).
SECRET = "execbox-test-secret-" + secrets.token_hex(16)
os.environ["EXECBOX_TEST_SECRET"] = SECRET

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "master")
_WORKER_INDEX = int(WORKER[2:]) if re.fullmatch(r"gw\d+", WORKER) else 63
UID_COUNT = 8
FIRST_UID = 64000 + 8 * _WORKER_INDEX  # 64000..64511: no host user lives there (see /etc/passwd)
RUNTIME_ROOT = Path("/run/execbox-escapes")

# Small limits: every hostile program is stopped within a few seconds (CI has 2 cores).
DEFAULT_LIMITS: dict[str, Any] = dict(
    wall_time_s=3, cpu_time_s=3, compile_wall_time_s=60, memory_mb=128, pids=32, output_bytes=64 * 1024,
    file_size_mb=8, disk_mb=16, open_files=64,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the escape suite needs root (uid slots, tmpfs workdirs, cgroups)")
        for item in items:
            item.add_marker(skip)


@dataclass
class Sandbox:
    """The worker's provider and engine, and a helper to run hostile code through the whole stack."""

    provider: LocalProvider
    engine: Engine

    @property
    def uids(self) -> range:
        return range(FIRST_UID, FIRST_UID + UID_COUNT)

    @property
    def runtime(self) -> Path:
        return self.provider.runtime

    async def run(self, language: str, code: str, *, stdin: str | bytes = "",
                  files: Mapping[str, str | bytes] | None = None, args: Sequence[str] = (),
                  env: Mapping[str, str] | None = None, arguments: dict[str, Any] | None = None,
                  **limits: Any) -> ExecutionResult:
        request = ExecutionRequest(
            language=language, code=code, stdin=stdin, args=list(args), env=dict(env or {}),
            files=[File(name=k, content=v) for k, v in (files or {}).items()], arguments=arguments,
            limits=Limits(**{**DEFAULT_LIMITS, **limits}),
        )
        result = await self.engine.execute(request)
        if result.compile is not None:  # a hostile C program that does not compile proves nothing
            assert result.compile.status.value == "ok", result.compile
        return result


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    runtime = RUNTIME_ROOT / WORKER
    RUNTIME_ROOT.mkdir(mode=0o711, exist_ok=True)
    os.chmod(RUNTIME_ROOT, 0o711)  # the instance uids traverse it to reach their workdirs
    # Every run goes through the warm pool (pre-started sandboxes) when its limits allow it (no network,
    # the suite's disk size), as it does in production; tests/test_local_pool.py covers the cold path too.
    provider = LocalProvider(LocalSettings(first_uid=FIRST_UID, uid_count=UID_COUNT, runtime_dir=runtime,
                                           warm_pool=2, warm_pool_disk_mb=DEFAULT_LIMITS["disk_mb"],
                                           sandbox_pool=1, sandbox_pool_disk_mb=DEFAULT_LIMITS["disk_mb"]))
    assert provider.root and provider.cgroups.usable, provider.cgroups.problem
    assert provider.warm_pool is not None
    yield Sandbox(provider, Engine(providers=ProviderRegistry(instances={"local": provider})))
    provider.warm_pool.close(timeout=30)
    if provider.sandbox_pool is not None:
        provider.sandbox_pool.close(timeout=30)
    shutil.rmtree(runtime, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- host checks

def _proc_uids(pid: str) -> set[int]:
    """The uids of a live process (none for a zombie: bubblewrap's pid-namespace init exits after the outer
    bwrap, so it is reparented to the host's init and reaped there, which may take a moment; a zombie runs
    nothing and holds nothing)."""
    with contextlib.suppress(OSError):
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        if status["State"].split()[0] in ("Z", "X"):
            return set()
        return {int(u) for u in status["Uid"].split()}
    return set()


def leftovers(box: Sandbox) -> list[str]:
    """What this worker's executions left on the host. Empty when the host is clean."""
    found: list[str] = []
    me = str(os.getpid())
    cg_marker = f"/execbox/{me}-"
    uids = set(box.uids)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid == me:
            continue
        if owners := _proc_uids(pid) & uids:
            found.append(f"process {pid} runs as instance uid {sorted(owners)}")
            continue
        with contextlib.suppress(OSError):
            if cg_marker in Path(f"/proc/{pid}/cgroup").read_text() and _proc_uids(pid):
                found.append(f"process {pid} is inside an execbox cgroup of this worker")
    runtime = str(box.runtime)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split(" ")[4].encode().decode("unicode_escape")
        if mnt == runtime or mnt.startswith(runtime + "/"):
            found.append(f"mount left at {mnt}")
    for base in box.provider.cgroups.bases.values():
        for d in base.iterdir():
            if d.is_dir() and d.name.startswith(f"{me}-"):
                found.append(f"cgroup left at {d}")
    for d in (box.runtime / "instances").iterdir():
        found.append(f"instance dir left at {d}")
    if box.provider.slots is not None and box.provider.slots.held:
        found.append(f"uid slots still held: {sorted(box.provider.slots.held)}")
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        with contextlib.suppress(OSError), os.scandir(tmp) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid in uids:
                        found.append(f"file {entry.path} owned by an instance uid")
    for kind in ("shm", "sem", "msg"):  # SysV IPC objects created or owned by an instance uid
        with contextlib.suppress(OSError):
            header, *rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
            cols = [i for i, name in enumerate(header.split()) if name in ("uid", "cuid")]
            for row in rows:
                if any(int(row.split()[i]) in uids for i in cols):
                    found.append(f"SysV {kind} object left: {row.strip()}")
    return found


@pytest.fixture(autouse=True)
def host_is_clean(sandbox: Sandbox) -> Iterator[None]:
    before = leftovers(sandbox)
    assert not before, f"host not clean before the test: {before}"
    pool = sandbox.provider.warm_pool
    assert pool is not None
    assert pool.fill(timeout=30), "the warm pool did not fill"  # the test's runs find sandboxes ready
    yield
    # The pool's idle sandboxes were never used: destroy them, and wait for the used instances' teardown
    # (it runs after their results are returned), so that every trace checked below is a run's.
    pool.drain(timeout=30)
    if sandbox.provider.sandbox_pool is not None:  # pre-started persistent sandboxes (test_sandboxes.py)
        sandbox.provider.sandbox_pool.drain(timeout=30)
    # Killed processes can take a moment to be reaped; anything still there after 3 s survived the run.
    deadline = time.monotonic() + 3
    while (left := leftovers(sandbox)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        _scrub(sandbox)  # so that the next tests start clean and report their own leftovers only
    assert not left, f"the run left traces on the host: {left}"


def _scrub(box: Sandbox) -> None:
    """Best-effort removal of what a failed test left behind."""
    for uid in box.uids:
        _kill_uid(uid)
    runtime = str(box.runtime)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split(" ")[4].encode().decode("unicode_escape")
        if mnt.startswith(runtime + "/"):
            with contextlib.suppress(OSError):
                _umount(Path(mnt))
    for d in (box.runtime / "instances").iterdir():
        shutil.rmtree(d, ignore_errors=True)
    me = f"{os.getpid()}-"
    names = {d.name for base in box.provider.cgroups.bases.values() for d in base.iterdir() if d.is_dir()}
    for name in names:
        if name.startswith(me):
            Cgroup(box.provider.cgroups, name, create=False).remove()
    if box.provider.slots is not None:
        for uid in list(box.provider.slots.held):
            box.provider.slots.release(uid)
