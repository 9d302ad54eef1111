"""Real providers for tests (local and docker), made in one place.

Each local provider gets a block of instance uids and a runtime dir of its own: no other provider of this
test process or of any other test process on the host (another xdist worker, another pytest run) uses them,
so a test's host checks (no process of its uids left, no workdir, no cgroup) look only at what it could have
made. A test process claims a region of uids for its whole life with a lock file; a block is named by what
uses it (a module's fixture, the escape suite): asked for again by the same name, it is the same block.
"""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from execbox.errors import ProviderUnavailable
from execbox.providers.docker import DockerProvider, DockerSettings, PoolSettings
from execbox.providers.docker import images as docker_images
from execbox.providers.local import LocalProvider, LocalSettings

# Far from every host user and from the product's own default range (1_900_000_000...): REGIONS regions,
# one per test process at a time, each of REGION_BLOCKS blocks of BLOCK uids.
FIRST_TEST_UID = 1_800_000_000
BLOCK = 8
REGION_BLOCKS = 64
REGIONS = 256
RUNTIME_ROOT = Path("/run/execbox-tests")

_blocks: dict[str, tuple[int, int]] = {}  # name -> (first block, uids)
_taken = [0]  # blocks handed out


@functools.cache
def region() -> int:
    """This process's region, claimed for its life (the lock goes with the process, whatever ends it)."""
    RUNTIME_ROOT.mkdir(mode=0o711, exist_ok=True)
    os.chmod(RUNTIME_ROOT, 0o711)  # the instance uids traverse it to reach their workdirs
    for n in range(REGIONS):
        fd = os.open(RUNTIME_ROOT / f".region-{n}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return n  # fd stays open: the lock is held until the process exits
    raise RuntimeError(f"all {REGIONS} test uid regions are held by other test processes")


def uid_block(name: str, size: int = BLOCK) -> range:
    """This process's block of ``size`` uids for ``name`` (the size of its first ask)."""
    if name not in _blocks:
        _blocks[name] = (_taken[0], size)
        _taken[0] += -(-size // BLOCK)
    n, size = _blocks[name]
    assert _taken[0] <= REGION_BLOCKS, f"more than {REGION_BLOCKS * BLOCK} uids in one test process"
    first = FIRST_TEST_UID + (region() * REGION_BLOCKS + n) * BLOCK
    return range(first, first + size)


def runtime_dir(name: str) -> Path:
    """This process's runtime dir for ``name`` (its parent traversable by the instance uids)."""
    return RUNTIME_ROOT / f"{name}-{region()}"


def local_provider(name: str, uids: int = BLOCK, **settings: Any) -> LocalProvider:
    """A LocalProvider with ``name``'s uids (``uids`` of them) and runtime dir; ``settings`` are
    LocalSettings' other fields."""
    block = uid_block(name, uids)
    return LocalProvider(LocalSettings(first_uid=block.start, uid_count=len(block), runtime_dir=runtime_dir(name),
                                       **settings))


def docker_settings(**pool: object) -> DockerSettings:
    """The tests' docker settings: small pools, containers reused; ``pool`` overrides PoolSettings' fields."""
    base = dict(size=1, max_items=8, ttl_s=3600, max_idle_s=600, health_interval_s=30, wait_s=60, reuse=True)
    return DockerSettings(pool=PoolSettings(**{**base, **pool}))  # type: ignore[arg-type]


def docker_provider_or_skip(*images: str, **pool: object) -> Iterator[DockerProvider]:
    """A DockerProvider (closed after the yield), or a skip that says why: EXECBOX_NO_DOCKER=1, dockerd down,
    or one of ``images`` not built (`make test` builds them all)."""
    if os.environ.get("EXECBOX_NO_DOCKER") == "1":
        pytest.skip("EXECBOX_NO_DOCKER=1")
    try:
        p = DockerProvider(docker_settings(**pool))
    except ProviderUnavailable as e:
        pytest.skip(f"dockerd is not available: {e}")
    if missing := [n for n in images if not docker_images.image_exists(p.api, p.catalog.tag(n))]:
        p.close()
        pytest.skip(f"docker images not built: {', '.join(missing)} (`execbox images build`)")
    try:
        yield p
    finally:
        p.close()
