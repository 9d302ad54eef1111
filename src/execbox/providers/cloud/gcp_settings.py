"""The gcp provider's settings and kind: a Cloud Run service running execbox's handler (HTTP POST /run)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator

from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.function_kind import FunctionSettings, MiB, capabilities, https_or_loopback

# Cloud Run takes HTTP/1 requests up to 32 MiB and lets a service's requests run up to 3600 s (its
# request timeout, 300 s unless the service sets it).
CLOUD_RUN_REQUEST_BYTES = 32 * MiB
CLOUD_RUN_MAX_S = 3600.0


class Settings(FunctionSettings):
    """A Cloud Run service running execbox's handler (see docs/providers-functions.md to deploy it)."""

    url: str | None = Field(default_factory=env_text("EXECBOX_CLOUD_RUN_URL"))
    """The service's URL, e.g. https://execbox-handler-abc123-ew.a.run.app (default: EXECBOX_CLOUD_RUN_URL)."""
    audience: str | None = None
    """The ID token's audience (default: the url; a custom audience when the service sets one)."""
    credentials_file: str | None = Field(default_factory=env_text("GOOGLE_APPLICATION_CREDENTIALS"))
    """A service-account key file whose account may invoke the service (roles/run.invoker); default:
    GOOGLE_APPLICATION_CREDENTIALS, else the metadata server's account (on Google Cloud)."""
    handler_token: SecretStr | None = Field(default_factory=env_secret("EXECBOX_HANDLER_TOKEN"))
    """The handler's own bearer token, when it was deployed with EXECBOX_HANDLER_TOKEN (the ID token then
    goes in X-Serverless-Authorization)."""
    request_timeout_s: float = Field(300.0, gt=0, le=CLOUD_RUN_MAX_S)
    """The service's request timeout (Cloud Run's default 300 s): a run whose wall time is longer is refused
    here, before it is sent."""
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    """Seconds to wait for a connection (and for minting an ID token)."""
    extra_time_s: float = Field(30.0, ge=1, le=3600)
    """Seconds allowed on top of a run's own wall times for the answer (a cold start, the network)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else https_or_loopback(v)


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "gcp", "summary": "a Cloud Run service running execbox's handler (gVisor or a micro-VM)",
    "factory": "execbox.providers.cloud.gcp:create",
    # gen1's gVisor or gen2's micro-VM, as Cloud Run picks: declared as the weaker of the two's kind
    "capabilities": capabilities(CLOUD_RUN_MAX_S, CLOUD_RUN_REQUEST_BYTES, "container"),
    "requires": ("google.auth", "requests"), "install": "pip install 'execbox[gcp]'",
    "detect": (("EXECBOX_CLOUD_RUN_URL",),),
}
