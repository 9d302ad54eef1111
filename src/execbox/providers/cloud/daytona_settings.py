"""The daytona provider's settings and kind (a stub: its adapter is being written)."""

from __future__ import annotations

from execbox.providers.cloud.service import ServiceSettings
from execbox.providers.kinds import Capabilities, ProviderKind


class Settings(ServiceSettings):
    """daytona."""


KIND = ProviderKind("daytona", "daytona (not built yet)", "execbox.providers.cloud.daytona:create", settings=Settings,
                    capabilities=Capabilities(limits=frozenset(), isolation="none"), implicit=False,
                    broken="not built yet")
