"""Real providers for tests (local and docker), made in one place.

Each provider gets a block of instance uids and a runtime dir of its own: no other provider of this test
process or of another pytest-xdist worker uses them, so a test's host checks (no process of its uids left,
no workdir, no cgroup) look only at what it could have made. A block is named by what uses it (a module's
fixture, the escape suite): asked for again by the same name in the same process, it is the same block.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from execbox.errors import ProviderUnavailable
from execbox.providers.docker import DockerProvider, DockerSettings, PoolSettings
from execbox.providers.docker import images as docker_images
from execbox.providers.local import LocalProvider, LocalSettings

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "master")
WORKER_INDEX = int(WORKER[2:]) if re.fullmatch(r"gw\d+", WORKER) else 63
# Far from every host user and from the product's own default range (1_900_000_000...): a worker's region
# holds REGION_BLOCKS blocks of BLOCK uids.
FIRST_TEST_UID = 1_800_000_000
BLOCK = 8
REGION_BLOCKS = 64
RUNTIME_ROOT = Path("/run/execbox-tests")

_blocks: dict[str, int] = {}


def uid_block(name: str) -> range:
    """This worker's block of uids for ``name``."""
    n = _blocks.setdefault(name, len(_blocks))
    assert n < REGION_BLOCKS, f"more than {REGION_BLOCKS} uid blocks in one test process"
    first = FIRST_TEST_UID + (WORKER_INDEX * REGION_BLOCKS + n) * BLOCK
    return range(first, first + BLOCK)


def runtime_dir(name: str) -> Path:
    """This worker's runtime dir for ``name`` (its parent traversable by the instance uids)."""
    RUNTIME_ROOT.mkdir(mode=0o711, exist_ok=True)
    os.chmod(RUNTIME_ROOT, 0o711)
    return RUNTIME_ROOT / f"{name}-{WORKER}"


def local_provider(name: str, **settings: Any) -> LocalProvider:
    """A LocalProvider with ``name``'s uids and runtime dir; ``settings`` are LocalSettings' other fields."""
    uids = uid_block(name)
    return LocalProvider(LocalSettings(first_uid=uids.start, uid_count=len(uids), runtime_dir=runtime_dir(name),
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
