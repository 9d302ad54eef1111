"""The aliyun kind: listed, not built yet (docs/providers-aliyun.md says what stands in the way)."""

from __future__ import annotations

from typing import Any

from execbox.providers.cloud.service import ServiceSettings


class Settings(ServiceSettings):
    """Alibaba Cloud's AgentRun code interpreter (not built yet)."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "aliyun", "summary": "Alibaba Cloud's AgentRun code interpreter (not built yet)",
    "factory": "execbox.providers.cloud.aliyun:create",
    "capabilities": {"limits": frozenset(), "isolation": "none"},
    "broken": "not built yet: agentrun-sdk passes the command and file answers through undocumented (see "
              "docs/providers-aliyun.md)",
}
