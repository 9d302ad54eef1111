"""Persistent docker sandboxes: one dedicated container per sandbox, many execs in it (issue 5).

The container is created like a pooled one (container.py: no network, read-only root, size-capped tmpfs,
every capability dropped, ``no-new-privileges``, execbox's seccomp profile, private cgroup and IPC
namespaces, the program as uid 1000) with the sandbox's memory and pids caps as the container's limits and
``disk_mb`` as its tmpfs size. It never comes from the shared warm pool and never goes back to it: it is
removed by ``close()``, by the provider's ``close()`` and, after a crash, by the provider's label cleanup.

Each exec is a ``docker exec`` of container.py's AGENT (a bash waiting for its header on stdin), run by
session.py as for a one-shot run. Why per-exec cgroups: a runaway exec must lose its whole tree (setsid,
double forks and SIGTERM-ignoring children included) while background processes of earlier execs live on.
Process groups and sessions cannot hold that (a program leaves them with one setsid), and ``kill -9 -1`` as
uid 1000 would take every exec's processes. A cgroup can only be left by writing to cgroupfs, which the
program cannot (no capability, uid 1000, read-only ``/sys/fs/cgroup``). So before sending the header, the host
moves the waiting AGENT (its host pid, from the exec's inspect) into a child cgroup of the container's,
created with the exec's memory/pids limits: everything the exec starts is born there. Its CPU time, peak
memory and OOM kills are read there, and a kill (wall time, CPU, output, cancellation) SIGKILLs that group
only. The container's own cgroup still caps everything alive in the sandbox at once. This needs dockerd on
this host, root and cgroup v1 (on v2 a cgroup with processes cannot have controlled children without moving
the container's init, which runc's execs would then fail to join); elsewhere persistent sandboxes are refused.

Files: the host reaches the container's ``/work`` through ``/proc/<init pid>/root/work``, opened once when
the container starts (before any program ran), then only with ``openat2(RESOLVE_BENEATH)`` beneath that
descriptor (host/files.py, as for local sandboxes): no ``docker exec`` per operation, byte-exact, and a
symlink the program plants or swaps cannot lead the host out of the workdir. (``docker cp`` cannot write
into a tmpfs of a container with a read-only root, and an in-container helper would resolve paths racing
the program.)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import posixpath
import secrets
import select
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from execbox.errors import IsolationError, SandboxError
from execbox.providers.base import (
    ExecSpec,
    InstanceSpec,
    OutputChunk,
    ProcessOutcome,
)
from execbox.providers.docker.container import (
    EXTRA_PIDS,
    FILES_FAILED,
    SANDBOX_UID,
    WORKDIR,
    Container,
    Containers,
    NotRunning,
    in_thread,
    in_thread_to_end,
    read_number,
)
from execbox.providers.docker.session import Session, agent_header
from execbox.providers.host import cgroups, files
from execbox.providers.supervisor import Scope, stop_reason

EXEC_START_S = 10.0  # a docker exec's process has a pid within this


def _container_cgroups(pid: int) -> cgroups.CgroupHost:
    """The container's own cgroup directories (v1: memory, pids, cpuacct), as a base for per-exec groups."""
    mounts, paths = cgroups._mounts(), {}
    for line in cgroups._read(Path(f"/proc/{pid}/cgroup")).splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            paths[c] = path
    if all(c in mounts and c in paths for c in cgroups.V1_CONTROLLERS):
        bases = {c: mounts[c] / paths[c].lstrip("/") for c in cgroups.V1_CONTROLLERS}
        if all(b.is_dir() for b in bases.values()):
            return cgroups.CgroupHost(1, bases)
    return cgroups.CgroupHost(None, problem="no cgroup v1 memory, pids and cpuacct groups of the container "
                                            "(cgroup v2 hosts are not supported yet)")


class _AgentGone(SandboxError):
    """An AGENT that was waiting for its header is no longer there."""


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in cgroups._read(Path(f"/proc/{pid}/status")).splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


class Sandboxes:
    """One provider's live persistent sandboxes (thread-safe): its ``close()`` tears down those left."""

    def __init__(self) -> None:
        self._live: set[DockerSandbox] = set()
        self._lock = threading.Lock()

    def add(self, sb: DockerSandbox) -> None:
        with self._lock:
            self._live.add(sb)

    def discard(self, sb: DockerSandbox) -> None:
        with self._lock:
            self._live.discard(sb)

    def take_all(self) -> list[DockerSandbox]:
        with self._lock:
            live, self._live = list(self._live), set()
        return live

    def __len__(self) -> int:
        return len(self._live)


class DockerSandbox(files.WorkdirInstance):
    """A persistent sandbox: one dedicated container; start it with ``start()``."""

    supports_live = True  # ExecSpec.live: stdin pumped into the exec's stream, signals to its cgroup

    def __init__(self, containers: Containers, spec: InstanceSpec, c: Container, sandboxes: Sandboxes) -> None:
        self.containers, self.spec, self.container, self.sandboxes = containers, spec, c, sandboxes
        self.cghost = cgroups.CgroupHost(None)
        self.pidfd = -1  # the container's init: readable once it has died
        self.workdir: files.Workdir | None = None
        self._ids = itertools.count(1)
        self._groups: dict[str, cgroups.Cgroup] = {}  # every exec group not removed yet (running or lingering)
        self._running: set[str] = set()
        self._agent_lock = threading.Lock()  # c.agent is set by prestart threads and taken by execs
        self._closed = False

    # ------------------------------------------------------------------ life
    @classmethod
    async def start(cls, containers: Containers, spec: InstanceSpec, sandboxes: Sandboxes,
                    image: Callable[[InstanceSpec], Awaitable[str]]) -> DockerSandbox:
        """A new sandbox in a container of ``image(spec)`` (the tag of a built image), in ``sandboxes``
        until it is closed."""
        if containers.runtime:
            raise IsolationError(f"persistent docker sandboxes need runc (per-exec cgroups, host-side file "
                                 f"access); the configured runtime is {containers.runtime!r}")
        if os.geteuid() != 0:
            raise IsolationError("persistent docker sandboxes need root (each exec gets its own cgroup under "
                                 "the container's); refusing to run them weaker")
        if problem := files.available():
            raise IsolationError(f"persistent docker sandboxes need {problem}")
        tag = await image(spec)
        c = await in_thread_to_end("create a sandbox container", containers.create, (tag, spec.disk_mb, spec.network),
                                   spec.memory_mb, spec.pids + EXTRA_PIDS, "sandbox", undo=containers.destroy)
        inst = cls(containers, spec, c, sandboxes)
        sandboxes.add(inst)
        try:
            await in_thread_to_end("open the sandbox", inst._open)  # (done before a cancel's close)
        except BaseException:
            await asyncio.shield(inst.close())
            raise
        return inst

    def _open(self) -> None:
        c = self.container
        # (a remote dockerd's pid is some other process here, or none: its cgroup path does not name the container)
        if not c.pid or c.cpu_file is None or c.id not in cgroups._read(Path(f"/proc/{c.pid}/cgroup")):
            raise IsolationError("persistent docker sandboxes need dockerd on this host (its containers' "
                                 "cgroups and /proc); refusing to run them weaker")
        self.cghost = _container_cgroups(c.pid)
        if not self.cghost.usable:
            raise IsolationError(f"persistent docker sandboxes: {self.cghost.problem}")
        self.pidfd = os.pidfd_open(c.pid)
        # no program has run in the container yet: its /work is the tmpfs docker mounted
        self.workdir = files.Workdir(f"/proc/{c.pid}/root{WORKDIR}", SANDBOX_UID)
        st = os.fstat(self.workdir.fd)
        if not self.alive or not stat.S_ISDIR(st.st_mode) or st.st_uid != SANDBOX_UID:
            raise SandboxError("the sandbox container's workdir is not what it was created with")

    @property
    def alive(self) -> bool:
        """The container's init still runs (its pidfd turns readable when it dies: no engine round trip)."""
        if self.pidfd < 0:
            return False
        poll = select.poll()
        poll.register(self.pidfd, select.POLLIN)
        return not poll.poll(0)

    async def close(self) -> None:
        """Kill every process and remove the container. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.sandboxes.discard(self)
        # to the end whatever cancels the caller: this sandbox is no longer the provider's to remove
        await in_thread_to_end("remove the sandbox container", self.teardown)

    def teardown(self) -> None:
        with self._agent_lock:  # (waits for a prestart under way: its AGENT is closed with the container)
            self._closed = True
        if self.workdir is not None:
            self.workdir.close()
        # our groups first: the container's cgroup is removed by runc only once it has no child left
        for g in list(self._groups.values()):
            g.remove()
        self._groups.clear()
        self.containers.destroy(self.container)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    # ------------------------------------------------------------------ files
    def _files(self) -> files.Workdir:
        if self._closed or self.workdir is None:
            raise SandboxError("the sandbox is closed")
        if not self.alive:
            raise SandboxError("the sandbox has died")
        return self.workdir

    def _sweep(self) -> None:
        """Remove finished execs' groups whose background processes have all ended (kills nothing: a
        group without processes cannot gain any, only the host moves processes in)."""
        for name, g in list(self._groups.items()):
            if name not in self._running and not g.pids() and g.remove():
                del self._groups[name]

    def _prestart(self) -> None:
        """Start the next exec's AGENT now, off the next exec's path (a runc exec takes tens of ms)."""
        c = self.container
        with self._agent_lock:
            if self._closed or c.agent is not None:
                return
            try:
                c.agent = self.containers.start_agent(c)
            except Exception:  # the next exec starts its own (and reports what is wrong)
                return

    def _join(self, exec_id: str, cg: cgroups.Cgroup) -> int:
        """Move the exec's waiting AGENT into its group, before it has read its header (so before it can
        start anything); its host pid. Only a process of the sandbox uid inside this container's cgroup is
        moved."""
        api = self.containers.api
        deadline = time.monotonic() + EXEC_START_S
        while not (pid := int((info := api.exec_inspect(exec_id)).get("Pid") or 0)):
            if not info.get("Running") and info.get("ExitCode") is not None:
                raise _AgentGone("the exec's process is gone")
            if time.monotonic() > deadline:
                raise SandboxError("docker exec did not start")
            time.sleep(0.002)
        where = cgroups._read(Path(f"/proc/{pid}/cgroup"))
        mine = cgroups._read(Path(f"/proc/{self.container.pid}/cgroup"))
        status = _status(pid)
        uids = status.get("Uid", "").split()
        if not where or not uids or status.get("State", "Z")[:1] in ("Z", "X"):
            raise _AgentGone("the exec's process is gone")
        if where != mine or set(uids) != {str(SANDBOX_UID)}:
            raise SandboxError("the exec's process is not the sandbox's")
        for procs in cg.procs_files:
            try:
                Path(procs).write_text(str(pid))
            except ProcessLookupError as e:
                raise _AgentGone("the exec's process is gone") from e
            except OSError as e:
                raise IsolationError(f"cannot move the exec into its cgroup: {e}") from e
        if _status(pid).get("State", "Z")[:1] in ("Z", "X"):  # killed meanwhile (a dying task is not moved)
            raise _AgentGone("the exec's process is gone")
        return pid

    async def _run(self, spec: ExecSpec, on_chunk: Callable[[OutputChunk], None] | None) -> ProcessOutcome:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if not self.alive:
            raise SandboxError("the sandbox has died")
        if not spec.argv:
            raise SandboxError("empty argv")
        c = self.container
        cwd = posixpath.normpath(posixpath.join(WORKDIR, spec.cwd))
        nonce = secrets.token_hex(8)
        header = agent_header(nonce, 0, cwd, spec)  # (files are written from the host, never sent with an exec)
        self._sweep()
        name = f"e{next(self._ids)}"
        try:  # +1: the AGENT bash, the program's parent, is in the group too
            cg = cgroups.Cgroup(self.cghost, name, memory_mb=min(spec.memory_mb, self.spec.memory_mb),
                                pids=min(spec.pids, self.spec.pids) + 1)
        except OSError as e:
            raise IsolationError(f"cannot create the exec's cgroup: {e}") from e
        self._groups[name] = cg
        self._running.add(name)
        try:
            return await self._supervise(c, cg, spec, header, nonce, on_chunk)
        finally:
            self._running.discard(name)
            threading.Thread(target=self._prestart, daemon=True).start()
            if not cg.pids() and cg.remove():  # else its background processes live on; swept later
                self._groups.pop(name, None)

    async def _supervise(self, c: Container, cg: cgroups.Cgroup, spec: ExecSpec,
                         header: bytes, nonce: str,
                         on_chunk: Callable[[OutputChunk], None] | None) -> ProcessOutcome:
        with self._agent_lock:  # one started ahead of time (with the container, or after the last exec)
            agent, c.agent = c.agent, None
        try:
            while True:
                fresh = agent is None
                if agent is None:
                    agent = await in_thread("docker exec", self.containers.start_agent, c)
                exec_id, sock = agent
                try:
                    agent_pid = await in_thread("docker exec inspect", self._join, exec_id, cg)
                    break
                except BaseException as e:
                    sock.close()
                    await asyncio.to_thread(cg.kill_all)
                    # one that waited may have been killed meanwhile by a program (same uid): start another
                    if fresh or not isinstance(e, _AgentGone) or not self.alive:
                        raise
                    agent = None
        except NotRunning as e:
            raise SandboxError(f"the sandbox container stopped: {e}") from e
        except SandboxError:
            if not self.alive:
                raise SandboxError("the sandbox has died") from None
            raise
        oom0 = read_number(c.oom_file, c.oom_key)
        # a client's signals (an interactive exec) reach the group's processes but the AGENT, which must live
        # to report how the program ended
        scope = Scope(kill=lambda: cg.kill_all(wait=False), cpu_seconds=cg.cpu_time_s, stall=cg.memory_stall(),
                      kill_lingering=False, signal=lambda signum: cg.signal(signum, spare=(agent_pid,)))
        stdin = spec.stdin if spec.live is None else b""  # (live: the client's input, pumped as it comes)
        session = Session(self.containers, c, sock, spec, header + stdin, time.monotonic(), cg.cpu_time_s(),
                          exec_id, nonce, scope=scope, on_chunk=on_chunk)
        outcome = await session.run()
        if session.exit_status is None and outcome.stopped_by is None and not self.alive:
            raise SandboxError("the sandbox died during the exec")
        if session.exit_status is None and outcome.exit_code == FILES_FAILED:  # the AGENT's cd failed
            raise SandboxError("cannot start the exec: " + outcome.stderr.decode(errors="replace").strip()[-300:])
        oom1 = read_number(c.oom_file, c.oom_key)
        oom = cg.oom_killed() or (oom0 is not None and oom1 is not None and oom1 > oom0)
        cpu = cg.cpu_time_s()
        return replace(outcome, stopped_by=stop_reason(outcome.stopped_by, outcome.signal, cpu, spec.cpu_time_s, oom),
                       cpu_time_s=cpu, max_rss_mb=cg.peak_memory_mb())


__all__ = ["DockerSandbox", "Sandboxes"]
