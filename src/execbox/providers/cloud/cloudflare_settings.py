"""The cloudflare provider's settings and kind (a stub: its adapter is being written)."""

from __future__ import annotations

from typing import Any

from execbox.providers.cloud.service import ServiceSettings


class Settings(ServiceSettings):
    """cloudflare."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "cloudflare", "summary": "cloudflare (not built yet)",
    "factory": "execbox.providers.cloud.cloudflare:create",
    "capabilities": {"limits": frozenset(), "isolation": "none"}, "broken": "not built yet",
}
