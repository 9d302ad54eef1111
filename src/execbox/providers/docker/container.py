"""Docker containers as execbox makes them: the ``Container`` record, the hardened creation, the host-side cgroup
files, and the helpers execbox runs in a container (its bash scripts are package files, in scripts/).

``Containers`` is every operation on one dockerd that both instance kinds need (the one-shot pool's
containers, provider.py; the persistent sandboxes' dedicated ones, persistent.py): create, prepare the next
AGENT exec, reset, kill, set limits, check health, remove. It knows nothing of pools or instances.

Containers are created hardened: no network, read-only root filesystem, size-capped tmpfs for /work, /tmp and
/dev/shm, every capability dropped, ``no-new-privileges``, execbox's seccomp profile, no host mounts,
memory/pids/CPU limits, a private IPC namespace and no POSIX message queues. The container's own process (tini +
``sleep``) runs as uid 0 *without capabilities*, so the sandboxed uid (1000) cannot signal it; every process of an
execution runs as uid 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from execbox.errors import ExecboxError, ProviderUnavailable, SandboxError
from execbox.providers.base import to_thread_to_end
from execbox.providers.host import seccomp

T = TypeVar("T")

OWNER_LABEL = "io.execbox.owner"
PID_LABEL = "io.execbox.pid"
HOST_LABEL = "io.execbox.host"
KEY_LABEL = "io.execbox.key"
KIND_LABEL = "io.execbox.kind"  # "pool" (one-shot, reused) or "sandbox" (persistent, dedicated)
SANDBOX_UID = 1000
USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
WORKDIR = "/work"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WRITABLE = (WORKDIR, "/tmp", "/dev/shm", "/dev/mqueue")
FILES_FAILED = 218
# execbox's own processes in a container while a program runs: tini, its sleep (root: out of the program's
# reach) and the exec's bash wrapper (AGENT). The container's pids.max is the request's pids plus exactly
# these. The reset and the other helpers run between programs, with the limit raised to HELPER_PIDS if lower.
EXTRA_PIDS = 3
HELPER_PIDS = 16


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("scripts", name).read_text()


# The process every execution starts as: bash reading a header from stdin (session.py's agent_header), then
# the tar of the instance's pending files, then the program's own stdin. When the program ends, bash writes
# its exit status to stderr after a nonce the program never saw (a trailer the session strips), which saves
# asking dockerd; without it (killed, or output past the cap) dockerd is asked. bash's `read` takes a pipe one
# byte at a time, so nothing past the header is consumed. It is started either when the execution comes (one
# `docker exec`) or ahead of time, right after the container's reset, so that a warm execution only writes to
# an exec that is already waiting.
AGENT = _script("agent.sh")
AGENT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp",
             "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
# Run as the sandbox uid: leaves no process, IPC object or file of the previous execution; prints "clean".
RESET = _script("reset.sh")
KILL_ALL = _script("kill_all.sh")
# a regular file inside the workdir (no symlink anywhere on its path); exit 3 otherwise
READ_FILE = _script("read_file.sh")

Key = tuple[str, int, bool]  # (image tag, disk MiB, network)


@dataclass
class Container:
    id: str
    key: Key
    memory_mb: int
    pids: int
    cpu_file: Path | None = None  # host-side cgroup files (None when dockerd is remote)
    cpu_scale: float = 1e-9
    oom_file: Path | None = None
    oom_key: str = "oom_kill"
    peak_file: Path | None = None
    pid: int = 0  # the container's init on the host (0: unknown)
    agent: tuple[str, socket.socket] | None = None  # an AGENT exec already waiting for its header


class NotRunning(Exception):
    """The container is not running (killed from outside, or gone)."""


def _cgroup_files(pid: int) -> dict[str, Any]:
    """Host paths of the container's CPU usage, OOM-kill counter and peak memory (cgroup v1 or v2)."""
    out: dict[str, Any] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    root = Path("/sys/fs/cgroup")
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hid == "0" and ctrls == "":  # v2
            base = root / rel
            if (base / "cpu.stat").exists():
                out.setdefault("cpu_file", base / "cpu.stat")
                out.setdefault("cpu_scale", 1e-6)
                out.setdefault("oom_file", base / "memory.events")
                out.setdefault("peak_file", base / "memory.peak")
            continue
        names = ctrls.split(",")
        if "cpuacct" in names:
            for d in (root / ctrls, root / "cpuacct", root / "cpu,cpuacct"):
                if (d / rel / "cpuacct.usage").exists():
                    out["cpu_file"], out["cpu_scale"] = d / rel / "cpuacct.usage", 1e-9
                    break
        if "memory" in names and (root / "memory" / rel / "memory.oom_control").exists():
            out["oom_file"] = root / "memory" / rel / "memory.oom_control"
            out["peak_file"] = root / "memory" / rel / "memory.max_usage_in_bytes"
    return out


def _kill_uid_in_cgroup(procs: Path, uid: int, rounds: int = 50) -> bool:
    """SIGKILL the processes of ``uid`` listed in a cgroup's ``procs`` file, again until none is left (forks
    racing the kill). False when the file cannot be read (the caller falls back)."""
    for _ in range(rounds):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except (OSError, ValueError):
            return False
        mine = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    mine.append(pid)
        if not mine:
            return True
        for pid in mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)
    return True


def read_number(path: Path | None, key: str | None = None) -> float | None:
    """A cgroup file's number (the first word, or the value of the line ``key``); None when unreadable."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is None:
        try:
            return float(text.split()[0])
        except (ValueError, IndexError):
            return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return float(parts[1])
    return None


def cpu_seconds(c: Container) -> float | None:
    if c.cpu_file is None:
        return None
    v = read_number(c.cpu_file, "usage_usec" if c.cpu_file.name == "cpu.stat" else None)
    return None if v is None else v * c.cpu_scale


def map_error(e: Exception, what: str) -> ExecboxError:
    """Every engine error as execbox's own: ProviderUnavailable when dockerd is unreachable."""
    import docker.errors
    import requests.exceptions

    if isinstance(e, ExecboxError):
        return e
    if isinstance(e, requests.exceptions.ConnectionError | ConnectionError | FileNotFoundError):
        return ProviderUnavailable(f"the Docker engine is not reachable ({what}: {e}); start dockerd "
                                   "(scripts/bootstrap starts it) or set DOCKER_HOST")
    if isinstance(e, docker.errors.ImageNotFound):
        return ProviderUnavailable(f"{what}: image missing ({e.explanation}); run `execbox images build`")
    if isinstance(e, docker.errors.APIError):
        return SandboxError(f"docker: {what} failed: {e.explanation or e}")
    return SandboxError(f"docker: {what} failed: {e}")


async def in_thread(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` on a thread, its errors as execbox's (map_error)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except Exception as e:
        raise map_error(e, what) from e


async def in_thread_to_end(what: str, fn: Callable[..., T], *args: Any,
                           undo: Callable[[T], object] | None = None) -> T:
    """``in_thread`` for making or removing a container: a cancel never loses it (base.to_thread_to_end)."""
    try:
        return await to_thread_to_end(fn, *args, undo=undo)
    except Exception as e:
        raise map_error(e, what) from e


def close_agent(c: Container) -> None:
    if c.agent is not None:
        with contextlib.suppress(OSError):
            c.agent[1].close()
        c.agent = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Containers:
    """The containers of one dockerd (``api``, the SDK's low-level client) that execbox makes on this host
    (labelled with ``host`` and this process's pid). Its methods block: call them on a thread."""

    def __init__(self, api: Any, host: str, cpus: float, runtime: str | None) -> None:
        self.api, self.host, self.cpus, self.runtime = api, host, cpus, runtime

    def remove_stale(self) -> int:
        """Remove containers left by a crashed execbox process on this host (found by label)."""
        try:
            found = self.api.containers(all=True, filters={"label": [f"{OWNER_LABEL}=execbox",
                                                                     f"{HOST_LABEL}={self.host}"]})
        except Exception as e:
            raise map_error(e, "list containers") from e
        removed = 0
        for c in found:
            pid = int(c.get("Labels", {}).get(PID_LABEL, "0") or 0)
            if pid and pid != os.getpid() and _alive(pid):
                continue
            if pid == os.getpid():
                continue
            with contextlib.suppress(Exception):
                self.api.remove_container(c["Id"], force=True)
                removed += 1
        return removed

    def create(self, key: Key, memory_mb: int, pids: int, kind: str = "pool") -> Container:
        """A hardened container, started, its first AGENT exec waiting (the pool's containers, with the
        provider's default caps; a persistent sandbox's, with its own)."""
        import docker.types

        tag, disk_mb, network = key
        tmpfs_opts = "nosuid,nodev,exec"
        host_config = self.api.create_host_config(
            network_mode="bridge" if network else "none",
            read_only=True, cap_drop=["ALL"], init=True, cgroupns="private",
            security_opt=["no-new-privileges", f"seccomp={seccomp.docker_profile()}"],
            pids_limit=pids, mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m",
            nano_cpus=int(self.cpus * 1e9), ipc_mode="private", shm_size=f"{disk_mb}m",
            tmpfs={WORKDIR: f"size={disk_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,{tmpfs_opts}",
                   "/tmp": f"size={disk_mb}m,mode=1777,{tmpfs_opts}"},
            ulimits=[docker.types.Ulimit(name="msgqueue", soft=0, hard=0),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
            runtime=self.runtime, log_config=docker.types.LogConfig(type="none"),
        )
        try:
            c = self.api.create_container(
                tag, command=["sleep", "infinity"], user="0:0", working_dir=WORKDIR, hostname="sandbox",
                network_disabled=not network, host_config=host_config,
                labels={OWNER_LABEL: "execbox", PID_LABEL: str(os.getpid()), HOST_LABEL: self.host,
                        KEY_LABEL: f"{tag} {disk_mb} {int(network)}", KIND_LABEL: kind},
            )
            cid = c["Id"]
            try:
                self.api.start(cid)
                pid = self.api.inspect_container(cid)["State"]["Pid"]
            except BaseException:
                with contextlib.suppress(Exception):
                    self.api.remove_container(cid, force=True)
                raise
        except Exception as e:
            raise map_error(e, "create a container") from e
        c = Container(cid, key, memory_mb, pids, pid=pid, **_cgroup_files(pid))
        try:
            self.prepare(c)
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.remove_container(cid, force=True)
            raise
        return c

    def start_agent(self, c: Container) -> tuple[str, socket.socket]:
        """A new AGENT exec, waiting for its header: (exec id, its attached socket)."""
        exec_id = self.api.exec_create(c.id, ["bash", "-c", AGENT, "execbox"], stdin=True, user=USER,
                                       workdir=WORKDIR, environment=AGENT_ENV)["Id"]
        raw = self.api.exec_start(exec_id, socket=True)
        return exec_id, getattr(raw, "_sock", raw)

    def prepare(self, c: Container) -> None:
        """Start the next execution's process ahead of time (it waits for its header)."""
        close_agent(c)
        c.agent = self.start_agent(c)

    def destroy(self, c: Container) -> None:
        import docker.errors

        close_agent(c)
        for attempt in range(4):  # a loaded dockerd may refuse once ("removal already in progress", timeouts)
            try:
                self.api.remove_container(c.id, force=True)
                return
            except docker.errors.NotFound:
                return
            except Exception:
                if attempt == 3:
                    raise
                time.sleep(0.5 * (attempt + 1))

    def stopped_at(self, c: Container) -> float | None:
        """When the container stopped (Unix seconds, by the engine's clock), or None while it runs."""
        state = self.api.inspect_container(c.id)["State"]
        finished = str(state.get("FinishedAt") or "")
        if state.get("Running") or not finished or finished.startswith("0001-"):
            return None
        head, _, frac = finished.rstrip("Z").partition(".")  # nanoseconds: datetime takes six digits
        stamp = datetime.datetime.fromisoformat(f"{head}.{(frac or '0')[:6]}+00:00")
        return stamp.timestamp()

    def healthy(self, c: Container) -> bool:
        state = self.api.inspect_container(c.id)["State"]
        if not state.get("Running") or state.get("Restarting"):
            return False
        return c.agent is None or bool(self.api.exec_inspect(c.agent[0]).get("Running"))

    def reset(self, c: Container) -> None:
        close_agent(c)  # (an unused one is killed by the reset with everything else)
        if c.pids < HELPER_PIDS:  # (the next program's exec sets its own again)
            self.set_limits(c, c.memory_mb, HELPER_PIDS)
        code, out, err = self.run_helper(c, ["bash", "-c", RESET, "reset"])
        if code != 0 or not out.strip().endswith(b"clean"):
            raise SandboxError(f"reset failed ({code}): {(out + err).decode(errors='replace').strip()[:300]}")
        self.prepare(c)

    def run_helper(self, c: Container, argv: list[str]) -> tuple[int, bytes, bytes]:
        """A short helper process as the sandbox uid; (exit code, stdout, stderr)."""
        exec_id = self.api.exec_create(c.id, argv, user=USER, workdir=WORKDIR, environment={"PATH": SANDBOX_PATH})
        out, err = self.api.exec_start(exec_id["Id"], demux=True)
        for _ in range(200):
            info = self.api.exec_inspect(exec_id["Id"])
            if not info.get("Running"):
                break
            time.sleep(0.01)
        code = info.get("ExitCode")
        return (-1 if code is None or info.get("Running") else int(code)), out or b"", err or b""

    def kill_all(self, c: Container) -> None:
        """SIGKILL every process of the sandbox uid in the container (the whole tree of an execution): from
        the host through the container's cgroup when dockerd is local (a `docker exec` cannot even start
        while a fork bomb holds every pid), else with a `docker exec` of kill -9 -1."""
        if c.cpu_file is not None and _kill_uid_in_cgroup(c.cpu_file.parent / "cgroup.procs", SANDBOX_UID):
            return
        exec_id = self.api.exec_create(c.id, ["bash", "-c", KILL_ALL], user=USER, workdir=WORKDIR)
        self.api.exec_start(exec_id["Id"], detach=True)

    def set_limits(self, c: Container, memory_mb: int, pids: int) -> None:
        if (memory_mb, pids) == (c.memory_mb, c.pids):
            return
        data = {"Memory": memory_mb * 1024 * 1024, "MemorySwap": memory_mb * 1024 * 1024, "PidsLimit": pids}
        self.api._raise_for_status(self.api._post_json(self.api._url("/containers/{0}/update", c.id), data=data))
        c.memory_mb, c.pids = memory_mb, pids
