"""The E2B provider's settings and kind (no SDK imported: listing kinds stays cheap)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from execbox.providers.cloud.caps import LINE_LIMITS
from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.service import ServiceSettings


class Settings(ServiceSettings):
    """An E2B account (e2b.dev or a self-hosted E2B): each execbox instance is one E2B sandbox."""

    api_key: SecretStr | None = Field(default_factory=env_secret("E2B_API_KEY"))
    """The E2B API key (default: E2B_API_KEY); from https://e2b.dev/dashboard?tab=keys."""
    domain: str | None = Field(default_factory=env_text("E2B_DOMAIN"))
    """The E2B domain (default: E2B_DOMAIN, else the SDK's e2b.app): the API is https://api.<domain>."""
    api_url: str | None = Field(default_factory=env_text("E2B_API_URL"))
    """The E2B API's base URL, when it is not https://api.<domain> (default: E2B_API_URL; a self-hosted
    control plane or a test double)."""
    sandbox_url: str | None = Field(default_factory=env_text("E2B_SANDBOX_URL"))
    """The base URL of every sandbox's envd, when it is not the domain's (default: E2B_SANDBOX_URL; a test
    double)."""
    template: str = Field("base", min_length=1)
    """The sandbox template (name or ID) sandboxes are made from; it must have /bin/sh and coreutils, plus
    the languages' toolchains execbox runs in it."""
    workdir: str = Field("/home/user/execbox", pattern=r"^/")
    """The absolute directory in the sandbox that programs and their files go in (made at creation)."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "e2b",
    "summary": "E2B cloud sandboxes (Firecracker micro-VMs), one per execution or persistent sandbox",
    "factory": "execbox.providers.cloud.e2b:create",
    # What E2B enforces: the network at creation (allow_internet_access); memory, CPUs and disk come from the
    # template, not per sandbox, so only the shell line's limits are declared.
    "capabilities": {"stdin": True, "env": True, "files_in": True, "files_out": True, "streaming": False,
                     "persistent": True, "network_off": True, "network_on": True, "limits": LINE_LIMITS,
                     "isolation": "microvm"},
    "requires": ("e2b",),
    "install": "pip install 'execbox[e2b]'",
    "detect": (("E2B_API_KEY",),),
}
