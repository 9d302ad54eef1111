"""The admin API's wire schema (/api/v1/admin): provider kinds and instances, the chain, breakers, and a
provider's test. Secret settings never appear here in clear: a set one is ``MASK``, an unset one null; sent
back as ``MASK`` in a PUT, it means "keep the stored value". pydantic only: no web stack.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from execbox.providers.kinds import Capabilities
from execbox.routing import RoutingSettings
from execbox.wire import BreakerInfo

MASK = "********"


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class KindInfo(_Answer):
    """A provider kind: what it is, whether it can run here, and the schema of an instance's settings."""

    name: str
    summary: str
    available: bool = Field(description="Its implementation and dependencies are installed here.")
    missing: str | None = Field(None, description="Why it is unavailable, with the install line.")
    install: str = Field(description="The line that installs it.")
    settings_schema: dict[str, Any] = Field(description="JSON schema of an instance's settings.")
    capabilities: Capabilities
    secret_fields: list[str] = Field(description="Settings fields that are secrets (never returned).")
    detect: list[list[str]] = Field(default_factory=list, description=(
        "Environment variables that configure it (any one group, all of its variables set): an instance named "
        "after the kind then exists unconfigured."))
    detected: list[str] | None = Field(None, description="The group of `detect` set in the server's environment.")


class InstanceInfo(_Answer):
    """A named provider instance."""

    name: str
    kind: str
    configured: bool = Field(description="Stored (set through settings or the admin API); false: the kind's "
                                         "implicit instance with its defaults.")
    settings: dict[str, Any] = Field(description=f"The settings given (the rest are the kind's defaults); "
                                                 f"secrets as {MASK!r} when set, null when not.")
    is_default: bool
    chain_position: int | None = Field(None, description="Its place in the fallback chain (0: first after the "
                                                         "default); null: not in it.")
    breaker: BreakerInfo


class AdminProviders(_Answer):
    default: str
    chain: list[str]
    routing: RoutingSettings
    kinds: list[KindInfo]
    instances: list[InstanceInfo]


class InstanceBody(_Body):
    """A provider instance to add or replace."""

    kind: str = Field(max_length=64, description="Its kind (GET /api/v1/admin/providers lists them).")
    settings: dict[str, Any] = Field(default_factory=dict, description=f"The kind's settings; a secret sent as "
                                     f"{MASK!r} keeps the stored value.")


class ChainBody(_Body):
    """Where requests that name no provider run."""

    default: str | None = Field(None, max_length=64, description="The default provider (unchanged if absent).")
    chain: list[str] = Field(max_length=64, description="The providers tried after it, in order.")
    routing: RoutingSettings | None = Field(None, description="Breaker and retry thresholds (unchanged if "
                                                              "absent).")


class ChainInfo(_Answer):
    default: str
    chain: list[str]
    routing: RoutingSettings


class ProviderTest(_Answer):
    """A real execution of a tiny program on one provider, its sandbox removed after."""

    ok: bool
    provider: str
    language: str | None = None
    wall_ms: float = Field(description="How long the whole test took, milliseconds.")
    message: str = Field(description="What happened, in words (what failed, when it failed).")
