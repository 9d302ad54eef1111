"""The daytona provider's settings and kind: Daytona sandboxes (containers) through the official ``daytona`` SDK.

No SDK is imported here: listing kinds never needs it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator

from execbox.providers.cloud.caps import LINE_LIMITS
from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.service import ServiceSettings

DEFAULT_API_URL = "https://app.daytona.io/api"  # the SDK's own default


class Settings(ServiceSettings):
    """Daytona (daytona.io or a self-hosted Daytona) through the ``daytona`` SDK."""

    api_key: SecretStr | None = Field(default_factory=env_secret("DAYTONA_API_KEY"))
    """The Daytona API key (default: DAYTONA_API_KEY); create one in the dashboard under Keys."""
    api_url: str = Field(default_factory=lambda: env_text("DAYTONA_API_URL", default=DEFAULT_API_URL)() or "")
    """The Daytona API's URL (default: DAYTONA_API_URL, else Daytona's cloud)."""
    target: str | None = Field(default_factory=env_text("DAYTONA_TARGET"))
    """The region sandboxes are created in, e.g. "us" or "eu" (default: DAYTONA_TARGET, else the
    organization's default region)."""
    snapshot: str | None = None
    """The Daytona snapshot sandboxes start from (None: Daytona's default snapshot). Set this or image."""
    image: str | None = None
    """A container image to build sandboxes from (e.g. "python:3.12-slim"), instead of a snapshot; the
    resources below apply only with an image."""
    cpu: int | None = Field(None, ge=1, le=64)
    """CPU cores per sandbox (image only; None: Daytona's default)."""
    memory_gib: int | None = Field(None, ge=1, le=256)
    """Memory per sandbox in GiB (image only; None: Daytona's default, or a persistent sandbox's memory)."""
    disk_gib: int | None = Field(None, ge=1, le=1024)
    """Disk per sandbox in GiB (image only; None: Daytona's default)."""
    auto_stop_minutes: int = Field(15, ge=0, le=10080)
    """Minutes without activity after which Daytona stops a sandbox (0: never)."""
    auto_delete_minutes: int = Field(0, ge=-1, le=10080)
    """Minutes after a sandbox stops that Daytona deletes it (0: at once, -1: never)."""
    user: str | None = None
    """The OS user commands run as in the sandbox (None: the snapshot's own)."""

    @model_validator(mode="after")
    def _snapshot_or_image(self) -> Settings:
        if self.snapshot and self.image:
            raise ValueError("set snapshot or image, not both")
        return self


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "daytona",
    "summary": "Daytona sandboxes (containers) through the daytona SDK",
    "factory": "execbox.providers.cloud.daytona:create",
    "capabilities": {
        # stdin, env and files go through the command line and the toolbox's file API; the network is cut
        # by Daytona's networkBlockAll; output comes at the end of the run (no streaming here).
        "stdin": True, "env": True, "files_in": True, "files_out": True, "streaming": False,
        "persistent": True, "network_off": True, "network_on": True,
        "limits": LINE_LIMITS, "isolation": "container",
    },
    "requires": ("daytona",),
    "install": "pip install 'execbox[daytona]'",
    "detect": (("DAYTONA_API_KEY",),),
}
