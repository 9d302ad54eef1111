"""The Cloudflare provider's settings and kind: sandboxes through the sandbox bridge Worker (no SDK imported:
listing kinds stays cheap)."""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, field_validator, model_validator

from execbox.providers.cloud.caps import LINE_LIMITS, Egress, with_egress
from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.function_kind import https_or_loopback
from execbox.providers.cloud.service import ServiceSettings

if TYPE_CHECKING:
    from execbox.providers.kinds import Capabilities

# The bridge refuses a file body over 32 MiB (PUT /v1/sandbox/:id/file/*): no request larger is sent to it.
BRIDGE_WRITE_BYTES = 32 * 1024 * 1024


class Settings(ServiceSettings):
    """A Cloudflare sandbox bridge Worker deployed in your account (cloudflare/sandbox-sdk's bridge/worker):
    each execbox instance is one Cloudflare sandbox (a container in its own VM)."""

    base_url: str | None = Field(default_factory=env_text("CLOUDFLARE_SANDBOX_BASE_URL", "SANDBOX_WORKER_URL"))
    """The bridge Worker's URL, e.g. https://cloudflare-sandbox-bridge.<you>.workers.dev (default:
    CLOUDFLARE_SANDBOX_BASE_URL, else SANDBOX_WORKER_URL)."""
    api_token: SecretStr | None = Field(default_factory=env_secret("CLOUDFLARE_SANDBOX_TOKEN", "SANDBOX_API_KEY"))
    """The bridge's bearer token: the SANDBOX_API_KEY secret it was deployed with (default:
    CLOUDFLARE_SANDBOX_TOKEN, else SANDBOX_API_KEY). Not a Cloudflare account API token: the bridge does not
    check those, and one would be handed to the Worker for nothing."""
    api_prefix: str = Field("/v1", pattern=r"^(/[A-Za-z0-9._-]+)*$")
    """The bridge's route prefix (its apiRoutePrefix; "/v1" unless the Worker changed it)."""
    workspace_root: str = Field("/workspace", pattern=r"^/")
    """The directory the bridge confines files to (/workspace in Cloudflare's bridge; a test double's own)."""
    workdir: str = Field("/workspace/execbox", pattern=r"^/")
    """The absolute directory in the sandbox that programs and their files go in (made at creation); under
    the workspace root."""
    scratch_dir: str = Field("/workspace/.execbox", pattern=r"^/")
    """Where a run's stdin is written before the run (removed as the run starts); under the workspace root."""
    egress: Egress = "open"
    """The network the bridge's containers have: "open" (the bridge as Cloudflare ships it: only requests that
    ask for the network are sent to it) or "none" (a bridge deployed with its Sandbox class's enableInternet
    off: only requests that keep the network off are). No call can change it."""
    request_timeout_s: float = Field(60.0, gt=0, le=900)
    """Seconds to wait for a file transfer or a sandbox's destruction."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else https_or_loopback(v)

    @model_validator(mode="after")
    def _inside_the_workspace(self) -> Settings:
        for name in ("workdir", "scratch_dir"):
            path = posixpath.normpath(getattr(self, name))
            if posixpath.commonpath([path, self.workspace_root]) != posixpath.normpath(self.workspace_root):
                raise ValueError(f"{name} must be under {self.workspace_root} (the bridge moves no file elsewhere)")
        return self

    def capabilities(self, declared: Capabilities) -> Capabilities:
        """The kind's capabilities with this bridge's network (execbox.providers.kinds.InstanceCapabilities)."""
        return with_egress(declared, self.egress)


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "cloudflare",
    "summary": "Cloudflare sandboxes (a container in its own VM) through the sandbox bridge Worker",
    "factory": "execbox.providers.cloud.cloudflare:create",
    # The bridge takes no per-sandbox network, memory or CPU: the container's network is the deployment's
    # (the egress setting says which; the kind declares the shipped bridge's), its size the Worker's
    # instance_type. Each sandbox is a container instance in its own VM (Cloudflare Containers).
    "capabilities": {"stdin": True, "env": True, "files_in": True, "files_out": True, "streaming": False,
                     "persistent": True, "network_off": False, "network_on": True, "limits": LINE_LIMITS,
                     "max_payload_bytes": BRIDGE_WRITE_BYTES, "isolation": "microvm"},
    "requires": ("httpx",),
    "install": "pip install 'httpx>=0.27,<1' (one of execbox's own dependencies)",
    "detect": (("CLOUDFLARE_SANDBOX_BASE_URL", "CLOUDFLARE_SANDBOX_TOKEN"), ("SANDBOX_WORKER_URL", "SANDBOX_API_KEY")),
}
