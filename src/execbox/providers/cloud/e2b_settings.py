"""The e2b provider's settings and kind (a stub: its adapter is being written)."""

from __future__ import annotations

from typing import Any

from execbox.providers.cloud.service import ServiceSettings


class Settings(ServiceSettings):
    """e2b."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "e2b", "summary": "e2b (not built yet)", "factory": "execbox.providers.cloud.e2b:create",
    "capabilities": {"limits": frozenset(), "isolation": "none"}, "broken": "not built yet",
}
