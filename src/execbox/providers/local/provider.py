"""The embedded default provider: bubblewrap namespaces + cgroups + seccomp + rlimits, no daemon.

An instance is a size-capped tmpfs workdir (mounted by execbox when root) owned by a dedicated unprivileged
uid, one per live instance, as isolate does. Each exec is one bubblewrap sandbox over that workdir, in its
own cgroup. The sandboxed process tree never runs as host root: the supervisor drops to the instance's uid
before bubblewrap starts.

Where the pieces live: host.py (uids, tmpfs workdirs, the C helpers, the runtime dir: ``Host``), oneshot.py
(one-shot instances and the warm pool's pre-started sandboxes), persistent.py (persistent sandboxes),
bwrap.py (bubblewrap's argv), supervise.py (spawning and watching a sandbox). This module is the provider:
its settings, its two pools, and which kind of instance a spec gets.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import weakref
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from execbox.pool import PrestartPool
from execbox.providers.base import Instance, InstanceSpec, Provider
from execbox.providers.host import cgroups
from execbox.providers.local import oneshot
from execbox.providers.local.host import FIRST_UID, UID_COUNT, Host, InstanceDir, UidSlots, build_binary
from execbox.providers.local.oneshot import LocalInstance
from execbox.providers.local.persistent import PersistentInstance

WARM_POOL_DISK_MB = 256  # the default Limits.disk_mb: the pool serves requests with the default disk size


class LocalSettings(BaseModel):
    """The local provider's settings (an instance's, or ``from_env``'s defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bwrap: str = "bwrap"
    runtime_dir: Path | None = None
    # The uids runs get, one each: above every account a host hands out (and nobody, 65534), so a run can
    # never be a real user (an admin sets these through the API too).
    first_uid: Annotated[int, Field(ge=100_000, le=4_000_000_000)] = FIRST_UID
    uid_count: Annotated[int, Field(ge=1, le=65_536)] = UID_COUNT
    extra_ro_binds: tuple[str, ...] = ()
    # Pre-started sandboxes kept ready (0: none). Used when running as root with cgroups, for requests
    # without network and with warm_pool_disk_mb of disk; others take the cold path.
    warm_pool: int = 2
    warm_pool_disk_mb: int = WARM_POOL_DISK_MB
    # Persistent sandboxes (persistent.py) kept started and idle, ready to be handed out by
    # start(InstanceSpec(persistent=True)) when it asks for no network and sandbox_pool_disk_mb of disk
    # (0: none; EXECBOX_LOCAL_SANDBOX_POOL). Each is handed out once, never shared. Nothing is started before
    # the first persistent sandbox is asked for. The sandboxes it hands out die with the pool's worker thread
    # (their launcher's parent-death signal): when the provider is closed.
    sandbox_pool: int = 2
    sandbox_pool_disk_mb: int = WARM_POOL_DISK_MB

    @classmethod
    def from_env(cls) -> LocalSettings:
        """Defaults, with ``EXECBOX_LOCAL_WARM_POOL`` (pre-started sandboxes; 0 for one-shot processes such
        as the CLI, which would pay for sandboxes it never uses)."""
        pool = os.environ.get("EXECBOX_LOCAL_WARM_POOL", "").strip()
        sandboxes = os.environ.get("EXECBOX_LOCAL_SANDBOX_POOL", "").strip()
        default = cls()
        return cls(warm_pool=int(pool) if pool.isdigit() else default.warm_pool,
                   sandbox_pool=int(sandboxes) if sandboxes.isdigit() else default.sandbox_pool)


def _close_pool(ref: weakref.ref[PrestartPool[Any]]) -> None:
    if (pool := ref()) is not None:
        pool.close(timeout=10)


class LocalProvider(Provider):
    name = "local"

    def __init__(self, settings: LocalSettings | None = None) -> None:
        self.settings = s = settings or LocalSettings.from_env()
        self.host = host = Host(s.bwrap, s.runtime_dir, s.first_uid, s.uid_count, s.extra_ro_binds)
        # persistent sandboxes need a cgroup per exec (root) and openat2 (see persistent.py)
        self.supports_persistent = host.root and host.cgroups.usable
        self.warm_pool: PrestartPool[InstanceDir] | None = None
        if s.warm_pool > 0 and host.root and host.cgroups.usable:
            waiter = build_binary(host.runtime, "waiter.c", "execbox-waiter", 0o755)  # run inside sandboxes
            self.warm_pool = PrestartPool(s.warm_pool, lambda: oneshot.prepare(host, waiter, s.warm_pool_disk_mb),
                                          lambda wd: oneshot.destroy(host, wd), name="execbox-local-pool")
            atexit.register(_close_pool, weakref.ref(self.warm_pool))
        self.sandbox_pool: PrestartPool[PersistentInstance] | None = None
        if s.sandbox_pool > 0 and self.supports_persistent:
            self.sandbox_pool = PrestartPool(s.sandbox_pool,
                                             lambda: PersistentInstance.prestart(host, s.sandbox_pool_disk_mb),
                                             lambda inst: inst._teardown(), name="execbox-local-sandbox-pool")
            atexit.register(_close_pool, weakref.ref(self.sandbox_pool))

    # the host's, read by tests and the service's checks
    @property
    def root(self) -> bool:
        return self.host.root

    @property
    def runtime(self) -> Path:
        return self.host.runtime

    @property
    def cgroups(self) -> cgroups.CgroupHost:
        return self.host.cgroups

    @property
    def slots(self) -> UidSlots | None:
        return self.host.slots

    @property
    def launcher(self) -> str:
        return self.host.launcher

    async def aclose(self) -> None:
        """Destroy the idle pre-started sandboxes and wait for every instance's teardown."""
        if self.warm_pool is not None:
            await asyncio.to_thread(self.warm_pool.close)
        if self.sandbox_pool is not None:
            await asyncio.to_thread(self.sandbox_pool.close)

    async def start(self, spec: InstanceSpec) -> Instance:
        host = self.host
        if spec.persistent:  # one long-lived sandbox, many execs (persistent.py)
            pool = self.sandbox_pool
            matches = pool is not None and not spec.network and spec.disk_mb == self.settings.sandbox_pool_disk_mb
            return await PersistentInstance.start(host, spec, pool if matches else None)
        defer = self.warm_pool.defer if self.warm_pool is not None else None
        if (self.warm_pool is not None and not spec.network and spec.disk_mb == self.settings.warm_pool_disk_mb
                and (wd := self.warm_pool.take()) is not None):
            return LocalInstance(host, spec, wd, defer)
        uid = await host.slots.acquire() if host.slots else os.getuid()
        return LocalInstance(host, spec, host.workdir(uid, spec.disk_mb), defer)
