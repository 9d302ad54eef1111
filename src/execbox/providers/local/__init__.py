"""The local provider (bubblewrap + cgroups + seccomp): provider.py says where each piece lives."""

from execbox.providers.local.oneshot import LocalInstance
from execbox.providers.local.provider import LocalProvider, LocalSettings

__all__ = ["LocalInstance", "LocalProvider", "LocalSettings"]
