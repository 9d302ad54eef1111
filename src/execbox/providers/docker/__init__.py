"""The docker provider: hardened containers from execbox's own images, reused through a warm pool (a ``KeyedPool``).

The docker SDK is imported lazily (inside the functions that talk to dockerd), so importing this package works
without it; creating a ``DockerProvider`` without it raises ProviderUnavailable with the fix.
"""

from execbox.providers.docker.pool import KeyedPool, PoolSettings, State
from execbox.providers.docker.provider import DockerInstance, DockerProvider, DockerSettings

__all__ = ["DockerInstance", "DockerProvider", "DockerSettings", "KeyedPool", "PoolSettings", "State"]
