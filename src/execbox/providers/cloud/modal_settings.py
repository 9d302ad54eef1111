"""The modal provider's settings and kind: sandboxes on Modal (modal.com) through its ``modal`` SDK."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from execbox.providers.cloud.caps import LINE_LIMITS
from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.service import ServiceSettings


class Settings(ServiceSettings):
    """A Modal workspace's sandboxes (gVisor containers), one per execbox instance."""

    token_id: str | None = Field(default_factory=env_text("MODAL_TOKEN_ID"))
    """The Modal API token's id (``ak-...``; default: MODAL_TOKEN_ID). Make one with ``modal token new`` or in the
    dashboard's settings, under API tokens."""
    token_secret: SecretStr | None = Field(default_factory=env_secret("MODAL_TOKEN_SECRET"))
    """The token's secret (``as-...``; default: MODAL_TOKEN_SECRET)."""
    app_name: str = Field("execbox", min_length=1, max_length=64)
    """The Modal app the sandboxes belong to (created when missing); the dashboard lists them under it."""
    environment: str | None = Field(default_factory=env_text("MODAL_ENVIRONMENT"))
    """The Modal environment of the app (default: MODAL_ENVIRONMENT, else the workspace's default one)."""
    image: str = Field("python:3.12-slim-bookworm", min_length=1)
    """The container image of each sandbox, by registry name: it must hold the languages' compilers and
    interpreters that are run on this provider, and /bin/sh (coreutils' ``timeout`` enforces the wall time)."""
    workdir: str = Field("/root/execbox", pattern=r"^/.+")
    """The absolute directory, in the sandbox, of the program's files."""
    cpu: float = Field(1.0, gt=0, le=64)
    """CPU cores asked for each sandbox (also its hard limit)."""
    memory_mb: int = Field(1024, ge=128, le=344064)
    """Memory (MiB) of a one-shot run's sandbox, its hard limit (a persistent sandbox gets its own
    ``memory_mb`` instead). The run's own memory limit is not known when its sandbox is made, so it is not
    what Modal enforces: this is."""
    server_url: str | None = Field(default_factory=env_text("MODAL_SERVER_URL"))
    """Modal's API address (default: MODAL_SERVER_URL, else the SDK's https://api.modal.com)."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "modal",
    "summary": "Modal sandboxes (gVisor containers on modal.com) through the modal SDK",
    "factory": "execbox.providers.cloud.modal:create",
    "capabilities": {
        # stdin, env, cwd and the per-run limits go in the generic command line; files through Modal's
        # filesystem API; no output stream or live input through this adapter (runs are read at their end).
        "streaming": False, "live_input": False, "persistent": True,
        "network_off": True, "network_on": True,  # block_network at the sandbox's creation
        "limits": LINE_LIMITS,
        "max_wall_time_s": 86400.0,  # an exec cannot outlive its sandbox, whose lifetime Modal caps at 24 h
        "isolation": "container",  # gVisor: a user-space kernel in front of the host's, not a VM
    },
    "requires": ("modal",),
    "install": "pip install 'execbox[modal]'",
    "detect": (("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"),),
}
