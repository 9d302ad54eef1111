"""The docker provider: each instance is a hardened container from a warm pool; each process is a ``docker exec``.

Containers are created hardened: no network, read-only root filesystem, size-capped tmpfs for /work, /tmp and
/dev/shm, every capability dropped, ``no-new-privileges``, Docker's default seccomp profile, no host mounts,
memory/pids/CPU limits, a private IPC namespace and no POSIX message queues. The container's own process (tini +
``sleep``) runs as uid 0 *without capabilities*, so the sandboxed uid (1000) cannot signal it; every process of an
execution runs as uid 1000.

The image is chosen by the first process an instance runs: argv[0]'s base name looked up in images/images.toml
(data: ``binaries = [...]``). Files written before that process are sent with it (a tar on the exec's stdin,
ahead of the program's own stdin), so a run costs one ``docker exec``.

Between executions a container is reset (every uid-1000 process killed, IPC objects removed, every writable
place emptied, verified) before it is handed out again; a failed reset destroys it.

Persistent instances (``InstanceSpec(persistent=True)``) are persistent.py's: a dedicated container each, never
the pool's, with each exec in its own cgroup.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import posixpath
import re
import secrets
import signal
import socket
import struct
import tarfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from execbox.errors import ExecboxError, IsolationError, ProviderUnavailable, RequestError, SandboxError
from execbox.providers.base import (
    ExecSpec,
    Instance,
    InstanceSpec,
    OutputChunk,
    ProcessOutcome,
    Provider,
    StopReason,
    pump_live,
    to_thread_to_end,
)
from execbox.providers.docker import images
from execbox.providers.docker.pool import Item, PoolSettings, State, WarmPool
from execbox.providers.host import seccomp
from execbox.providers.host.stall import MemoryStall
from execbox.providers.supervisor import PIPE_GRACE_S, Scope, Watch, exit_of_code, stop_reason

if TYPE_CHECKING:
    from execbox.providers.docker.persistent import DockerSandbox

log = logging.getLogger(__name__)
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

# The process every execution starts as: bash reading a header from stdin (NUL-terminated fields: magic, bytes
# of tar, cwd, CPU seconds soft/hard, file size KiB, open files, the environment's count and entries, argv's
# count and entries), then the tar of the instance's pending files, then the program's own stdin. When the
# program ends, bash writes its exit status to stderr after a nonce the program never saw (a trailer the
# provider strips), which saves asking dockerd; without it (killed, or output past the cap) dockerd is asked. bash's
# `read` takes a pipe one byte at a time, so nothing past the header is consumed. It is started either when
# the execution comes (one `docker exec`) or ahead of time, right after the container's reset, so that a warm
# execution only writes to an exec that is already waiting.
AGENT = r"""
r() { IFS= read -r -d '' "$1" || exit 219; }
r magic; [ "$magic" = execbox1 ] || exit 219
r nonce; r size; r cwd; r cs; r ch; r fs; r nf
r ne; envs=(); for ((i = 0; i < ne; i++)); do r v; envs+=("$v"); done
r na; args=(); for ((i = 0; i < na; i++)); do r v; args+=("$v"); done
if [ "$size" != 0 ]; then
  head -c "$size" | tar -x -C /work --no-same-owner -m 2>/tmp/.execbox-tar || {
    cat /tmp/.execbox-tar >&2; rm -f /tmp/.execbox-tar; echo "execbox: cannot write the files" >&2; exit 218; }
  rm -f /tmp/.execbox-tar
fi
cd -- "$cwd" || exit 218
ulimit -c 0; ulimit -S -t "$cs"; ulimit -H -t "$ch"; ulimit -f "$fs"; ulimit -n "$nf"
env -- "${envs[@]}" "${args[@]}"
rc=$?
printf '\0execbox-exit:%s:%s\n' "$nonce" "$rc" >&2
exit "$rc"
"""
AGENT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp",
             "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def _header(nonce: str, size: int, cwd: str, spec: ExecSpec) -> bytes:
    cpu_soft = int(spec.cpu_time_s) + 1
    env = [f"{k}={v}" for k, v in spec.env.items()]
    fields = ["execbox1", nonce, str(size), cwd, str(cpu_soft), str(cpu_soft + 1), str(spec.file_size_mb * 1024),
              str(spec.open_files), str(len(env)), *env, str(len(spec.argv)), *spec.argv]
    if any("\0" in f for f in fields):
        raise RequestError("arguments and environment cannot contain NUL characters")
    return b"".join(f.encode() + b"\0" for f in fields)


# Run as the sandbox uid: leaves no process, IPC object or file of the previous execution; prints "clean".
RESET = r"""
kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null
ipcrm --all 2>/dev/null
for d in /work /tmp /dev/shm /dev/mqueue; do
  chmod -R u+rwX "$d" 2>/dev/null; find "$d" -mindepth 1 -delete 2>/dev/null
done
left=$(find /work /tmp /dev/shm /dev/mqueue -mindepth 1 2>/dev/null | head -n 3)
[ -z "$left" ] || { echo "files left: $left"; exit 1; }
[ -z "$(ipcs -m -s -q 2>/dev/null | grep -E '^0x')" ] || { echo "IPC objects left"; exit 1; }
for p in /proc/[0-9]*; do
  n=${p#/proc/}; [ "$n" = 1 ] || [ "$n" = "$$" ] && continue
  st=; uid=
  while read -r k a _; do case $k in State:) st=$a;; Uid:) uid=$a;; esac; done < "$p/status" 2>/dev/null
  if [ "$uid" = 1000 ] && [ "$st" != Z ] && [ -n "$st" ]; then echo "process left: $n"; exit 1; fi
done
echo clean
"""

KILL_ALL = "kill -9 -1 2>/dev/null; kill -9 -1 2>/dev/null; exit 0"

# a regular file inside the workdir (no symlink anywhere on its path); exit 3 otherwise
READ_FILE = r"""
p=$(realpath -e -- "$1" 2>/dev/null) || exit 3
case $p in /work/*) ;; *) exit 3;; esac
[ "$p" = "/work/$1" ] && [ -f "$p" ] || exit 3
head -c "$2" -- "$p"
"""


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DockerSettings:
    """The docker provider's settings. ``from_env`` reads ``EXECBOX_DOCKER_*`` (see the README)."""

    pool: PoolSettings = field(default_factory=PoolSettings)
    runtime: str | None = None  # e.g. "runsc" (gVisor): refused when configured but not installed
    cpus: float = 1.0
    memory_mb: int = 256  # at creation; each exec sets its own
    pids: int = 64  # at creation; each exec sets its own
    default_image: str = "shell"  # for a first process that is a path (./main), not a known binary
    prewarm: tuple[str, ...] = ()  # image names whose pools are filled at start (default disk size)
    prewarm_disk_mb: int = 256
    official: bool = False  # use the images built with `execbox images build --official`
    images_dir: Path | None = None

    @classmethod
    def from_env(cls) -> DockerSettings:
        e = os.environ
        pool = PoolSettings(
            size=int(e.get("EXECBOX_DOCKER_POOL_SIZE", 3)),
            max_items=int(e.get("EXECBOX_DOCKER_POOL_MAX", 16)),
            ttl_s=float(e.get("EXECBOX_DOCKER_TTL_S", 3600)),
            max_idle_s=float(e.get("EXECBOX_DOCKER_MAX_IDLE_S", 600)),
            health_interval_s=float(e.get("EXECBOX_DOCKER_HEALTH_INTERVAL_S", 30)),
            wait_s=float(e.get("EXECBOX_DOCKER_WAIT_S", 30)),
            reuse=_env_bool("EXECBOX_DOCKER_REUSE", True),
        )
        prewarm = tuple(n for n in e.get("EXECBOX_DOCKER_PREWARM", "").replace(",", " ").split() if n)
        return cls(pool=pool, runtime=e.get("EXECBOX_DOCKER_RUNTIME") or None,
                   cpus=float(e.get("EXECBOX_DOCKER_CPUS", 1.0)), prewarm=prewarm,
                   official=_env_bool("EXECBOX_DOCKER_OFFICIAL_IMAGES", False),
                   images_dir=Path(e["EXECBOX_IMAGES_DIR"]) if e.get("EXECBOX_IMAGES_DIR") else None)


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


def _read_number(path: Path | None, key: str | None = None) -> float | None:
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


def _cpu_seconds(c: Container) -> float | None:
    if c.cpu_file is None:
        return None
    v = _read_number(c.cpu_file, "usage_usec" if c.cpu_file.name == "cpu.stat" else None)
    return None if v is None else v * c.cpu_scale


def _tar(files: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                    info.uid = info.gid = SANDBOX_UID
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            info.uid = info.gid = SANDBOX_UID
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _map_error(e: Exception, what: str) -> ExecboxError:
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


class DockerProvider(Provider):
    name = "docker"
    supports_persistent = True  # persistent.py: one dedicated container per sandbox

    def __init__(self, settings: DockerSettings | None = None) -> None:
        self.settings = settings or DockerSettings.from_env()
        self.client = images.client()  # ProviderUnavailable when dockerd is down or the SDK is missing
        self.api = self.client.api
        self.catalog = images.Catalog.load(self.settings.images_dir)
        self.host = socket.gethostname()
        self._present: set[str] = set()
        if self.settings.runtime:
            runtimes = self.api.info().get("Runtimes", {})
            if self.settings.runtime not in runtimes:
                raise IsolationError(f"docker runtime {self.settings.runtime!r} is configured but not installed "
                                     f"in dockerd (has: {', '.join(runtimes)}); refusing to run without it")
        self._sandboxes: set[DockerSandbox] = set()  # live persistent sandboxes: removed by close()
        self._sandboxes_lock = threading.Lock()
        self.removed_stale = self._remove_stale()
        self.pool: WarmPool[Key] = WarmPool(self.settings.pool, self._create, self._reset, self._destroy,
                                            self._healthy)
        for name in self.settings.prewarm:
            self.pool.prewarm(self._key(name, self.settings.prewarm_disk_mb, False))
        ref = weakref.ref(self)

        def _at_exit() -> None:
            p = ref()
            if p is not None:
                p.close_sandboxes()
                p.pool.close()
        atexit.register(_at_exit)
        self._atexit = _at_exit

    # ------------------------------------------------------------------ provider
    async def start(self, spec: InstanceSpec) -> Instance:
        if spec.persistent:
            from execbox.providers.docker import persistent

            return await persistent.DockerSandbox.start(self, spec)
        return DockerInstance(self, spec)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self.close_sandboxes()
        self.pool.close()
        atexit.unregister(self._atexit)

    def close_sandboxes(self) -> None:
        """Remove every persistent sandbox's container (the provider is shutting down)."""
        with self._sandboxes_lock:
            live, self._sandboxes = list(self._sandboxes), set()
        for sb in live:
            with contextlib.suppress(Exception):
                sb.teardown()

    def active_containers(self) -> int:
        """Containers that exist now (pooled in any state but TERMINATING, and persistent sandboxes'): for
        the service's metrics."""
        return self.pool.count(State.CREATING, State.WARM, State.BUSY, State.RESETTING) + len(self._sandboxes)

    def active_sandboxes(self) -> int | None:
        return self.active_containers()

    def image_for(self, binary: str) -> str:
        image = self.catalog.for_binary(binary)
        if image is None:
            if "/" not in binary:
                known = ", ".join(sorted(b for i in self.catalog.images.values() for b in i.binaries))
                raise ProviderUnavailable(f"no docker image provides {binary!r} (images provide: {known}); "
                                          "add it to images/images.toml")
            image = self.catalog.images[self.settings.default_image]
        return image.name

    def image_for_any(self, binaries: tuple[str, ...]) -> str:
        """The image of the first of ``binaries`` (a persistent sandbox's language: compile, then run) that
        an image provides; the default image when they are all paths; ProviderUnavailable otherwise."""
        for b in binaries:
            if (image := self.catalog.for_binary(b)) is not None:
                return image.name
        named = [b for b in binaries if "/" not in b]
        return self.image_for(named[0] if named else "./")

    def _key(self, image_name: str, disk_mb: int, network: bool) -> Key:
        return (self.catalog.tag(image_name, self.settings.official), disk_mb, network)

    async def ensure_image(self, tag: str) -> None:
        if tag in self._present:
            return
        try:
            exists = await asyncio.to_thread(images.image_exists, self.api, tag)
        except Exception as e:
            raise _map_error(e, "inspect image") from e
        if not exists:
            name = tag.split("/", 1)[1].split(":", 1)[0]
            raise ProviderUnavailable(f"docker image {tag} is not built: run `execbox images build {name}`")
        self._present.add(tag)

    # ------------------------------------------------------------------ containers (pool callbacks, threads)
    def _remove_stale(self) -> int:
        """Remove containers left by a crashed execbox process on this host (found by label)."""
        try:
            found = self.api.containers(all=True, filters={"label": [f"{OWNER_LABEL}=execbox",
                                                                     f"{HOST_LABEL}={self.host}"]})
        except Exception as e:
            raise _map_error(e, "list containers") from e
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
        if removed:
            log.info("docker provider: removed %d container(s) left by a crashed run", removed)
        return removed

    def _create(self, key: Key, memory_mb: int | None = None, pids: int | None = None,
                kind: str = "pool") -> Container:
        """A hardened container, started, its first AGENT exec waiting (pool callback; persistent.py too,
        with the sandbox's own caps)."""
        import docker.types

        tag, disk_mb, network = key
        s = self.settings
        memory_mb = s.memory_mb if memory_mb is None else memory_mb
        pids = s.pids if pids is None else pids
        tmpfs_opts = "nosuid,nodev,exec"
        host_config = self.api.create_host_config(
            network_mode="bridge" if network else "none",
            read_only=True, cap_drop=["ALL"], init=True, cgroupns="private",
            security_opt=["no-new-privileges", f"seccomp={seccomp.docker_profile()}"],
            pids_limit=pids, mem_limit=f"{memory_mb}m", memswap_limit=f"{memory_mb}m",
            nano_cpus=int(s.cpus * 1e9), ipc_mode="private", shm_size=f"{disk_mb}m",
            tmpfs={WORKDIR: f"size={disk_mb}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700,{tmpfs_opts}",
                   "/tmp": f"size={disk_mb}m,mode=1777,{tmpfs_opts}"},
            ulimits=[docker.types.Ulimit(name="msgqueue", soft=0, hard=0),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
            runtime=s.runtime, log_config=docker.types.LogConfig(type="none"),
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
            raise _map_error(e, "create a container") from e
        c = Container(cid, key, memory_mb, pids, pid=pid, **_cgroup_files(pid))
        try:
            self._prepare(c)
        except BaseException:
            with contextlib.suppress(Exception):
                self.api.remove_container(cid, force=True)
            raise
        return c

    def _start_agent(self, c: Container) -> tuple[str, socket.socket]:
        exec_id = self.api.exec_create(c.id, ["bash", "-c", AGENT, "execbox"], stdin=True, user=USER,
                                       workdir=WORKDIR, environment=AGENT_ENV)["Id"]
        raw = self.api.exec_start(exec_id, socket=True)
        return exec_id, getattr(raw, "_sock", raw)

    def _prepare(self, c: Container) -> None:
        """Start the next execution's process ahead of time (it waits for its header)."""
        _close_agent(c)
        c.agent = self._start_agent(c)

    def _destroy(self, c: Container) -> None:
        import docker.errors

        _close_agent(c)
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

    def _healthy(self, c: Container) -> bool:
        state = self.api.inspect_container(c.id)["State"]
        if not state.get("Running") or state.get("Restarting"):
            return False
        return c.agent is None or bool(self.api.exec_inspect(c.agent[0]).get("Running"))

    def _reset(self, c: Container) -> None:
        _close_agent(c)  # (an unused one is killed by the reset with everything else)
        if c.pids < HELPER_PIDS:  # (the next program's exec sets its own again)
            self.set_limits(c, c.memory_mb, HELPER_PIDS)
        code, out, err = self._run_helper(c, ["bash", "-c", RESET, "reset"])
        if code != 0 or not out.strip().endswith(b"clean"):
            raise SandboxError(f"reset failed ({code}): {(out + err).decode(errors='replace').strip()[:300]}")
        self._prepare(c)

    def _run_helper(self, c: Container, argv: list[str]) -> tuple[int, bytes, bytes]:
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


def _close_agent(c: Container) -> None:
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


async def _thread(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except Exception as e:
        raise _map_error(e, what) from e


async def _thread_to_end(what: str, fn: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None) -> T:
    """``_thread`` for making or removing a container: a cancel never loses it (base.to_thread_to_end)."""
    try:
        return await to_thread_to_end(fn, *args, undo=undo)
    except Exception as e:
        raise _map_error(e, what) from e


class DockerInstance(Instance):
    """One execution environment: a pooled container, chosen lazily by the first process it runs."""

    def __init__(self, provider: DockerProvider, spec: InstanceSpec) -> None:
        self.provider, self.spec = provider, spec
        self.item: Item[Key] | None = None
        self._pending: dict[str, bytes] = {}
        self._closed = False
        self._dirty = False  # a process ran: the container must be reset before reuse
        self._broken = False

    @property
    def container(self) -> Container | None:
        return None if self.item is None else self.item.handle

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        if self._closed:
            raise SandboxError("instance is closed")
        size = sum(len(d) for d in {**self._pending, **files}.values())
        if size > self.spec.disk_mb * 1024 * 1024:
            raise SandboxError("the files do not fit in the sandbox's disk limit")
        self._pending.update(files)  # sent with the next process (one docker exec for both)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        if self._closed:
            raise SandboxError("instance is closed")
        c = self.container
        if c is None:
            data = self._pending.get(path)
            return None if data is None else data[:max_bytes]
        if self._pending:
            await self._flush(c)
        code, out, _ = await _thread("read a file", self.provider._run_helper, c,
                                     ["bash", "-c", READ_FILE, "read", path, str(max_bytes)])
        return out if code == 0 else None

    async def _flush(self, c: Container) -> None:
        """Files written after the last process, before a read: sent with a no-op process."""
        o = await self._exec(c, ExecSpec(argv=("true",), wall_time_s=30, cpu_time_s=30, memory_mb=c.memory_mb,
                                         pids=c.pids - EXTRA_PIDS, output_bytes=4096, file_size_mb=1024,
                                         open_files=64))
        if o.exit_code != 0:
            raise SandboxError(f"cannot write the files: {o.stderr.decode(errors='replace')[:300]}")

    async def _acquire(self, argv0: str) -> Container:
        p = self.provider
        key = p._key(p.image_for(argv0), self.spec.disk_mb, self.spec.network)
        await p.ensure_image(key[0])
        try:
            self.item = await p.pool.acquire(key)
        except Exception as e:
            raise _map_error(e, "start a container") from e
        container: Container = self.item.handle
        return container

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        if self._closed:
            raise SandboxError("instance is closed")
        if not spec.argv:
            raise SandboxError("empty argv")
        if spec.live is not None:  # (its processes cannot be told from the reset's and kill's helpers)
            raise RequestError("one-shot docker instances take no live input; persistent ones do")
        retried = False
        while True:
            c = self.container or await self._acquire(spec.argv[0])
            try:
                return await self._exec(c, spec)
            except _NotRunning as e:
                # a WARM container killed from outside: never the program's fault before it started
                if self._dirty or retried or self.item is None:
                    self._broken = True
                    raise SandboxError(f"the container stopped: {e}") from e
                self.provider.pool.discard(self.item)
                self.item, retried = None, True

    async def _exec(self, c: Container, spec: ExecSpec) -> ProcessOutcome:
        p = self.provider
        if (c.memory_mb, c.pids) != (spec.memory_mb, spec.pids + EXTRA_PIDS):
            await _thread("set limits", p.set_limits, c, spec.memory_mb, spec.pids + EXTRA_PIDS)
        payload = _tar(self._pending) if self._pending else b""
        cwd = posixpath.normpath(posixpath.join(WORKDIR, spec.cwd))
        nonce = secrets.token_hex(8)
        header = _header(nonce, len(payload), cwd, spec)
        import docker.errors

        agent, c.agent = c.agent, None
        if agent is None:  # not prepared (a second process in this instance): start it now
            try:
                agent = await asyncio.to_thread(p._start_agent, c)
            except docker.errors.APIError as e:
                if e.status_code == 409 or "not running" in str(e):
                    raise _NotRunning(str(e)) from e
                raise _map_error(e, "docker exec") from e
            except Exception as e:
                raise _map_error(e, "docker exec") from e
        exec_id, sock = agent
        cpu0 = _cpu_seconds(c)
        oom0 = _read_number(c.oom_file, c.oom_key)
        if c.peak_file is not None and c.peak_file.name == "memory.max_usage_in_bytes":
            with contextlib.suppress(OSError):
                c.peak_file.write_text("0")
        start = time.monotonic()
        outcome = await _Session(p, c, sock, spec, header + payload + spec.stdin, start, cpu0, exec_id,
                                 nonce).run()
        if (outcome.stopped_by is None and (outcome.exit_code in (None, 126) or outcome.signal is not None)
                and not await _thread("inspect the container", p._healthy, c)):
            # the container was gone before the program started (docker's "OCI runtime exec failed" is 126)
            raise _NotRunning("the container stopped")
        self._pending.clear()
        self._dirty = True
        if outcome.exit_code == FILES_FAILED and b"execbox: cannot write the files" in outcome.stderr:
            raise SandboxError("cannot write the files into the sandbox: "
                               + outcome.stderr.decode(errors="replace").strip()[-300:])
        oom1 = _read_number(c.oom_file, c.oom_key)
        cpu1 = _cpu_seconds(c)
        cpu = None if cpu0 is None or cpu1 is None else max(cpu1 - cpu0, 0.0)
        peak = _read_number(c.peak_file)
        oom = oom0 is not None and oom1 is not None and oom1 > oom0
        return replace(outcome, stopped_by=stop_reason(outcome.stopped_by, outcome.signal, cpu, spec.cpu_time_s, oom),
                       cpu_time_s=cpu, max_rss_mb=None if peak is None else peak / (1024 * 1024))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        item, self.item = self.item, None
        if item is not None:
            if self._broken:
                self.provider.pool.discard(item)
            else:
                self.provider.pool.release(item)


class _NotRunning(Exception):
    pass


def _container_scope(p: DockerProvider, c: Container) -> Scope:
    """A one-shot instance's limits act on the whole container: everything of the sandbox uid in it is the
    execution's."""
    stall = None
    if c.oom_file is not None and c.cpu_file is not None:
        stall = MemoryStall(c.oom_file.parent, c.cpu_file.parent, 2 if c.cpu_file.name == "cpu.stat" else 1)
    return Scope(lambda: p.kill_all(c), lambda: _cpu_seconds(c), stall)


class _Session:
    """One docker exec's attached stream: stdin in, multiplexed stdout/stderr out into a supervisor.Watch
    (caps, limits, stop reason); the program's end is the AGENT's trailer, or the stream's end."""

    def __init__(self, provider: DockerProvider, c: Container, sock: socket.socket, spec: ExecSpec, stdin: bytes,
                 start: float, cpu0: float | None, exec_id: str, nonce: str, scope: Scope | None = None,
                 on_chunk: Callable[[OutputChunk], None] | None = None) -> None:
        self.p, self.c, self.sock, self.spec, self.stdin = provider, c, sock, spec, stdin
        self.start, self.exec_id = start, exec_id
        self.scope = scope or _container_scope(provider, c)
        # no baseline: no CPU watch (a remote dockerd); the kill runs on a thread (it may ask dockerd)
        watched = replace(self.scope, kill=self._kill, cpu_base_s=cpu0 or 0.0,
                          cpu_seconds=self.scope.cpu_seconds if cpu0 is not None else None)
        self.watch = Watch(watched, output_bytes=spec.output_bytes, wall_time_s=spec.wall_time_s,
                           cpu_time_s=spec.cpu_time_s, on_chunk=on_chunk)
        self.trailer = re.compile(b"\\x00execbox-exit:" + nonce.encode() + b":(\\d+)\\n\\Z")
        self.exit_status: int | None = None  # from the trailer
        self.exited = asyncio.Event()
        self.ended_at: float | None = None

    def _kill(self) -> None:
        threading.Thread(target=self._kill_now, daemon=True).start()

    def _kill_now(self) -> None:
        with contextlib.suppress(Exception):
            self.scope.kill()

    async def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        live = self.spec.live
        try:
            if self.stdin:
                await loop.sock_sendall(self.sock, self.stdin)
            if live is not None:  # an interactive run: the header went first, the client's input follows
                assert self.scope.signal is not None
                await pump_live(live, lambda data: loop.sock_sendall(self.sock, data),
                                lambda: self.sock.shutdown(socket.SHUT_WR), self.scope.signal)
        except OSError:
            pass  # the program exited without reading all of it
        finally:
            if live is None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    async def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        buf = bytearray()
        while True:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                kind, size = buf[0], struct.unpack(">I", bytes(buf[4:8]))[0]
                if len(buf) < 8 + size:
                    break
                payload = bytes(buf[8:8 + size])
                del buf[:8 + size]
                if kind not in (1, 2):
                    continue
                if kind == 2 and self.exit_status is None and (m := self.trailer.search(payload)):
                    payload = payload[:m.start()]
                    self.exit_status = int(m.group(1))
                    self.ended_at = time.monotonic()
                    self.exited.set()
                self.watch.add("stdout" if kind == 1 else "stderr", payload)

    async def run(self) -> ProcessOutcome:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        sender = asyncio.create_task(self._send(loop))
        reader = asyncio.create_task(self._read(loop))
        exited = asyncio.create_task(self.exited.wait())

        async def ended() -> None:  # the trailer came, or the stream ended
            await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)

        try:
            try:
                if await self.watch.run(ended, self.start, after_kill_s=10):
                    if reader.done():
                        reader.result()  # (raises the stream's error, if any)
                    else:  # the program ended; its pipes close at once unless a descendant still holds them
                        try:
                            await asyncio.wait_for(asyncio.shield(reader), PIPE_GRACE_S)
                        except TimeoutError:
                            if self.scope.kill_lingering:
                                await _thread("kill the sandbox's processes", self.scope.kill)
                                with contextlib.suppress(TimeoutError):
                                    await asyncio.wait_for(asyncio.shield(reader), 10)
                elif not reader.done():  # (the trailer came just as the wall time ran out)
                    await asyncio.wait_for(asyncio.shield(reader), 10)
            except TimeoutError as e:
                raise SandboxError("the container did not stop its processes after a kill") from e
            except OSError as e:
                raise SandboxError(f"docker exec stream failed: {e}") from e
        except asyncio.CancelledError:
            self.watch.stop(StopReason.CANCELLED)
            raise
        finally:
            tasks = (sender, reader, exited)
            for t in tasks:
                t.cancel()
            try:  # ended before the socket closes: none may still wait on its descriptor's number
                await asyncio.wait(tasks, timeout=1)
            finally:
                self.sock.close()
        wall = (self.ended_at or time.monotonic()) - self.start
        info: dict[str, Any] = {"ExitCode": self.exit_status}
        for _ in range(0 if self.exit_status is not None else 300):
            info = await _thread("docker exec inspect", self.p.api.exec_inspect, self.exec_id)
            if not info.get("Running"):
                break
            await asyncio.sleep(0.01)
        else:
            if self.exit_status is None:
                self.watch.stop(StopReason.WALL_TIME)
        code = info.get("ExitCode")
        exit_code, sig = (None, None) if code is None else exit_of_code(int(code))
        # the CPU time, OOM kills and peak memory are the caller's to read (it knows the group's baselines)
        return self.watch.outcome(exit_code, sig, wall_time_s=wall, cpu_time_s=None, max_rss_mb=None)
