"""The docker provider: each instance is a hardened container from a warm pool; each process is a ``docker exec``.

Where the pieces live: container.py makes, resets, kills and removes containers (hardened as its docstring
says) and holds the helpers run in them (scripts/*.sh); session.py runs one process (the AGENT exec's stream,
supervised); pool.py is the keyed pool of reusable containers; persistent.py the persistent sandboxes. This
module is the provider (settings, images, the pool's wiring) and its one-shot instance.

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
import logging
import os
import posixpath
import secrets
import socket
import time
import weakref
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from execbox.errors import IsolationError, ProviderUnavailable, RequestError, SandboxError
from execbox.providers.base import ExecSpec, Instance, InstanceSpec, ProcessOutcome, Provider
from execbox.providers.docker import images
from execbox.providers.docker.container import (
    EXTRA_PIDS,
    FILES_FAILED,
    READ_FILE,
    WORKDIR,
    Container,
    Containers,
    Key,
    NotRunning,
    cpu_seconds,
    in_thread,
    map_error,
    read_number,
)
from execbox.providers.docker.persistent import DockerSandbox, Sandboxes
from execbox.providers.docker.pool import Item, KeyedPool, PoolSettings, State
from execbox.providers.docker.session import Session, agent_header, files_tar
from execbox.providers.supervisor import stop_reason

log = logging.getLogger(__name__)


def _env_bool(name: str, default: bool) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")


class DockerSettings(BaseModel):
    """The docker provider's settings. ``from_env`` reads ``EXECBOX_DOCKER_*`` (see the README)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str | None = None  # the engine's address (unix:///..., tcp://...); None: DOCKER_HOST or the local socket
    pool: PoolSettings = Field(default_factory=PoolSettings)
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


class DockerProvider(Provider):
    name = "docker"
    supports_persistent = True  # persistent.py: one dedicated container per sandbox

    def __init__(self, settings: DockerSettings | None = None) -> None:
        self.settings = settings or DockerSettings.from_env()
        # ProviderUnavailable when dockerd is down or the SDK is missing
        self.client = images.client(self.settings.host)
        self.api = self.client.api
        self.catalog = images.Catalog.load(self.settings.images_dir)
        self.host = socket.gethostname()
        self._present: set[str] = set()
        if self.settings.runtime:
            runtimes = self.api.info().get("Runtimes", {})
            if self.settings.runtime not in runtimes:
                raise IsolationError(f"docker runtime {self.settings.runtime!r} is configured but not installed "
                                     f"in dockerd (has: {', '.join(runtimes)}); refusing to run without it")
        self.containers = Containers(self.api, self.host, self.settings.cpus, self.settings.runtime)
        self.sandboxes = Sandboxes()  # live persistent sandboxes: removed by close()
        self.removed_stale = self.containers.remove_stale()
        if self.removed_stale:
            log.info("docker provider: removed %d container(s) left by a crashed run", self.removed_stale)
        c = self.containers
        self.pool: KeyedPool[Key] = KeyedPool(self.settings.pool, self._create, c.reset, c.destroy, c.healthy)
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
            return await DockerSandbox.start(self.containers, spec, self.sandboxes, self._sandbox_image)
        instance = DockerInstance(self, spec)
        if spec.binaries:  # its container taken now (image, pool, engine): refused before the code is handed over
            try:
                await instance._acquire(spec.binaries[0])
            except BaseException:
                await instance.close()
                raise
        return instance

    def _create(self, key: Key) -> Container:
        """A pooled container, with the settings' caps (each exec sets its own)."""
        return self.containers.create(key, self.settings.memory_mb, self.settings.pids)

    async def _sandbox_image(self, spec: InstanceSpec) -> str:
        """A persistent sandbox's image tag (its language's), built."""
        tag = self.catalog.tag(self.image_for_any(spec.binaries), self.settings.official)
        await self.ensure_image(tag)
        return tag

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self.close_sandboxes()
        self.pool.close()
        atexit.unregister(self._atexit)

    def close_sandboxes(self) -> None:
        """Remove every persistent sandbox's container (the provider is shutting down)."""
        for sb in self.sandboxes.take_all():
            with contextlib.suppress(Exception):
                sb.teardown()

    def active_containers(self) -> int:
        """Containers that exist now (pooled in any state but TERMINATING, and persistent sandboxes'): for
        the service's metrics."""
        return self.pool.count(State.CREATING, State.WARM, State.BUSY, State.RESETTING) + len(self.sandboxes)

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
            raise map_error(e, "inspect image") from e
        if not exists:
            name = tag.split("/", 1)[1].split(":", 1)[0]
            raise ProviderUnavailable(f"docker image {tag} is not built: run `execbox images build {name}`")
        self._present.add(tag)


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
        code, out, _ = await in_thread("read a file", self.provider.containers.run_helper, c,
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
            raise map_error(e, "start a container") from e
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
            except NotRunning as e:
                # a WARM container that was dead before this exec was sent: the program never started
                if self._dirty or retried or self.item is None:
                    self._broken = True
                    raise SandboxError(f"the container stopped: {e}") from e
                self.provider.pool.discard(self.item)
                self.item, retried = None, True

    async def _exec(self, c: Container, spec: ExecSpec) -> ProcessOutcome:
        p = self.provider
        if (c.memory_mb, c.pids) != (spec.memory_mb, spec.pids + EXTRA_PIDS):
            await in_thread("set limits", p.containers.set_limits, c, spec.memory_mb, spec.pids + EXTRA_PIDS)
        payload = files_tar(self._pending) if self._pending else b""
        cwd = posixpath.normpath(posixpath.join(WORKDIR, spec.cwd))
        nonce = secrets.token_hex(8)
        header = agent_header(nonce, len(payload), cwd, spec)
        import docker.errors

        agent, c.agent = c.agent, None
        if agent is None:  # not prepared (a second process in this instance): start it now
            try:
                agent = await asyncio.to_thread(p.containers.start_agent, c)
            except docker.errors.APIError as e:
                if e.status_code == 409 or "not running" in str(e):
                    raise NotRunning(str(e)) from e
                raise map_error(e, "docker exec") from e
            except Exception as e:
                raise map_error(e, "docker exec") from e
        exec_id, sock = agent
        cpu0 = cpu_seconds(c)
        oom0 = read_number(c.oom_file, c.oom_key)
        if c.peak_file is not None and c.peak_file.name == "memory.max_usage_in_bytes":
            with contextlib.suppress(OSError):
                c.peak_file.write_text("0")
        start, sent_at = time.monotonic(), time.time()
        outcome = await Session(p.containers, c, sock, spec, header + payload + spec.stdin, start, cpu0, exec_id,
                                 nonce).run()
        if (outcome.stopped_by is None and (outcome.exit_code in (None, 126) or outcome.signal is not None)
                and not await in_thread("inspect the container", p.containers.healthy, c)):
            # Taken again on a fresh container only when it was dead before this exec was sent (docker's "OCI
            # runtime exec failed" is 126): one killed while the program ran may have run it, and a program is
            # never run twice. The engine's clock must be this host's to tell (a local engine).
            died = await in_thread("inspect the container", p.containers.stopped_at, c)
            if died is not None and died < sent_at and p.api.base_url.startswith("http+docker://"):
                raise NotRunning("the container stopped")
            self._broken = True
            raise SandboxError("the container stopped while the program ran (killed from outside?)")
        self._pending.clear()
        self._dirty = True
        if outcome.exit_code == FILES_FAILED and b"execbox: cannot write the files" in outcome.stderr:
            raise SandboxError("cannot write the files into the sandbox: "
                               + outcome.stderr.decode(errors="replace").strip()[-300:])
        oom1 = read_number(c.oom_file, c.oom_key)
        cpu1 = cpu_seconds(c)
        cpu = None if cpu0 is None or cpu1 is None else max(cpu1 - cpu0, 0.0)
        peak = read_number(c.peak_file)
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
