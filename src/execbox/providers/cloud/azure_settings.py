"""The azure provider's settings and kind: an Azure Container App (HTTP ingress) running execbox's handler."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator

from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.function_kind import FunctionSettings, MiB, capabilities, https_or_loopback

# Container Apps' ingress ends a request after 240 s; premium ingress lets an environment raise that to
# 30 min (its request idle timeout). It documents no request size limit: the handler's own cap (32 MiB).
INGRESS_DEFAULT_S = 240.0
INGRESS_MAX_S = 1800.0
HANDLER_REQUEST_BYTES = 32 * MiB


class Settings(FunctionSettings):
    """An Azure Container App running execbox's handler (see docs/providers-functions.md to deploy it)."""

    url: str | None = Field(default_factory=env_text("EXECBOX_CONTAINER_APP_URL"))
    """The app's URL, e.g. https://execbox-handler.nicebeach-1234.westeurope.azurecontainerapps.io (default:
    EXECBOX_CONTAINER_APP_URL)."""
    scope: str | None = Field(default_factory=env_text("EXECBOX_CONTAINER_APP_SCOPE"))
    """The Entra ID scope of the app's authentication (Easy Auth): its application ID URI + "/.default", e.g.
    api://1b2c.../.default (default: EXECBOX_CONTAINER_APP_SCOPE). Unset: handler_token is used instead."""
    tenant_id: str | None = Field(default_factory=env_text("AZURE_TENANT_ID"))
    """The Entra tenant of the caller's service principal (default: AZURE_TENANT_ID)."""
    client_id: str | None = Field(default_factory=env_text("AZURE_CLIENT_ID"))
    """The service principal's client ID (default: AZURE_CLIENT_ID)."""
    client_secret: SecretStr | None = Field(default_factory=env_secret("AZURE_CLIENT_SECRET"))
    """Its client secret (default: AZURE_CLIENT_SECRET). Without tenant, client and secret: azure-identity's
    DefaultAzureCredential (a managed identity on Azure, the Azure CLI's login, ...)."""
    authority: str | None = None
    """The Entra authority host for another cloud, e.g. login.microsoftonline.us (default: the public one)."""
    handler_token: SecretStr | None = Field(default_factory=env_secret("EXECBOX_HANDLER_TOKEN"))
    """The handler's shared bearer token (its EXECBOX_HANDLER_TOKEN), for an app without Easy Auth; used only
    when no scope is set (both would go in the Authorization header)."""
    request_timeout_s: float = Field(INGRESS_DEFAULT_S, gt=0, le=INGRESS_MAX_S)
    """The ingress's request timeout (240 s; up to 1800 s with premium ingress): a run whose wall time is
    longer is refused here, before it is sent."""
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    """Seconds to wait for a connection."""
    extra_time_s: float = Field(30.0, ge=1, le=1800)
    """Seconds allowed on top of a run's own wall times for the answer (a cold start, the network)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else https_or_loopback(v)


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "azure", "summary": "an Azure Container App running execbox's handler (containers)",
    "factory": "execbox.providers.cloud.azure:create",
    "capabilities": capabilities(INGRESS_MAX_S, HANDLER_REQUEST_BYTES, "container"),
    "requires": ("azure.identity", "azure.core", "aiohttp"), "install": "pip install 'execbox[azure]'",
    "detect": (("EXECBOX_CONTAINER_APP_URL",),),
}
