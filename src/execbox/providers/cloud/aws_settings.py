"""The aws provider's settings and kind (a stub: its adapter is being written)."""

from __future__ import annotations

from execbox.providers.cloud.service import ServiceSettings
from execbox.providers.kinds import Capabilities, ProviderKind


class Settings(ServiceSettings):
    """aws."""


KIND = ProviderKind("aws", "aws (not built yet)", "execbox.providers.cloud.aws:create", settings=Settings,
                    capabilities=Capabilities(limits=frozenset(), isolation="none"), implicit=False,
                    broken="not built yet")
