"""Fixtures for the docker provider's tests: a real dockerd (started by scripts/bootstrap) and the built images.

Each pytest(-xdist) worker has one DockerProvider for the whole session (small pools); tests that need other
settings make their own and close it. ``EXECBOX_NO_DOCKER=1`` skips the directory (a host without Docker).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.providers import docker_provider_or_skip, docker_settings

from execbox import Engine
from execbox.providers.docker import DockerProvider
from execbox.providers.registry import ProviderRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the language table is shared


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("EXECBOX_NO_DOCKER") == "1":
        skip = pytest.mark.skip(reason="EXECBOX_NO_DOCKER=1")
        for item in items:
            if "tests/docker/" in str(item.fspath):
                item.add_marker(skip)


settings = docker_settings
provider_or_skip = docker_provider_or_skip  # for tests outside this directory that run on docker too


def sandbox_containers(p: DockerProvider) -> dict[str, dict[str, Any]]:
    """This process's persistent-sandbox containers (id -> the engine's summary)."""
    from execbox.providers.docker.container import KIND_LABEL, PID_LABEL

    found = p.api.containers(all=True, filters={"label": [f"{PID_LABEL}={os.getpid()}", f"{KIND_LABEL}=sandbox"]})
    return {c["Id"]: c for c in found}


@pytest.fixture(scope="session")
def docker_provider() -> Iterator[DockerProvider]:
    provider = DockerProvider(settings())
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def docker_engine(docker_provider: DockerProvider) -> Engine:
    return Engine(providers=ProviderRegistry(default="docker", instances={"docker": docker_provider}))
