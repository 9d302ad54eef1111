"""The ``azure`` kind: an Azure Container App (HTTP ingress) running execbox's handler, called through
azure-core with an Entra ID token from azure-identity.

Each request is one ``POST {url}/run`` (the HandlerCall as the body, the HandlerAnswer back) through an
azure-core ``AsyncPipelineClient`` whose retry policy makes no retries (``retry_total=0``): azure-core's
default would resend a POST on a 5xx, a timeout or a lost connection. azure-core tells the two failures
apart itself: ``ServiceRequestError`` (the request never went out: nothing ran) and ``ServiceResponseError``
(sent, no answer read: the code may have run).

Who may call is the app's: with Easy Auth, an Entra token for ``scope`` (its application ID URI +
"/.default") from a ClientSecretCredential (AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET) or else
DefaultAzureCredential (a managed identity, the CLI's login); without it, the handler's shared bearer token.
"""

from __future__ import annotations

from typing import Any

from execbox.errors import ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.providers.cloud.azure_settings import HANDLER_REQUEST_BYTES, Settings
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.function_provider import FunctionProvider, http_answer

_AUTH_FIX = ("check that the app's authentication (Easy Auth) accepts tokens for the settings' scope from "
             "this service principal, or that handler_token is the handler's EXECBOX_HANDLER_TOKEN")


class ContainerAppProvider(FunctionProvider):
    """An Azure Container App (``Settings``): each request one POST /run through azure-core."""

    name = "azure"
    transport_bytes = HANDLER_REQUEST_BYTES

    def __init__(self, settings: Settings, url: str, transport: Any = None) -> None:
        """``transport``: an azure-core AsyncHttpTransport for both the token and the call (default:
        azure-core's aiohttp one)."""
        from azure.core import AsyncPipelineClient
        from azure.core.pipeline.policies import AsyncRetryPolicy, HeadersPolicy, UserAgentPolicy

        super().__init__()
        self.settings, self.url = settings, url
        self.where = f"the Container App at {url}"
        kw = {} if transport is None else {"transport": transport}
        # the only policies: no retry (a POST that may have run is never resent), no redirect, no auth policy
        # (the token is set below: azure-core's bearer policy refuses http, which a local handler is)
        self._client = AsyncPipelineClient(url, policies=[
            HeadersPolicy(), UserAgentPolicy(sdk_moniker="execbox"), AsyncRetryPolicy.no_retries()], **kw)
        self._credential = _credential(settings, kw) if settings.scope else None

    async def _authorization(self) -> str:
        """The Authorization header: an Entra token for the scope (azure-identity caches it), or the
        handler's shared token. Raised before anything is sent."""
        from azure.core.exceptions import ClientAuthenticationError

        if self._credential is None:
            return f"Bearer {secret(self.settings.handler_token)}"
        try:
            token = await self._credential.get_token(self.settings.scope)
        except ClientAuthenticationError as e:  # CredentialUnavailableError included (no identity here)
            raise ProviderUnavailable(f"provider {self.name!r}: no Entra ID token for {self.settings.scope} "
                                      f"({_first_line(e)}); check AZURE_TENANT_ID, AZURE_CLIENT_ID and "
                                      "AZURE_CLIENT_SECRET (or the host's managed identity)") from e
        return f"Bearer {token.token}"

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        """``request`` run by the app under ``limits`` (each sent, for the handler to cap); see the module."""
        from azure.core.exceptions import (
            AzureError,
            ServiceRequestError,
            ServiceResponseError,
            ServiceResponseTimeoutError,
        )
        from azure.core.rest import HttpRequest

        if limits.wall_time_s > self.settings.request_timeout_s:
            raise RequestError(f"provider {self.name!r}: a {limits.wall_time_s:g} s run does not fit the ingress's "
                               f"request timeout of {self.settings.request_timeout_s:g} s (request_timeout_s)")
        body = self.call_body(request, limits, execution_id)
        headers = {"Content-Type": "application/json", "Authorization": await self._authorization()}
        wait_s = self.wait_s(limits, self.settings.extra_time_s)
        call = HttpRequest("POST", f"{self.url}/run", content=body, headers=headers)
        try:
            resp = await self._client.send_request(call, read_timeout=wait_s,
                                                   connection_timeout=self.settings.connect_timeout_s)
            content = await resp.read()
        except ServiceRequestError as e:  # azure-core's word: the request was not sent
            raise ProviderUnavailable(f"provider {self.name!r}: {self.where} cannot be reached "
                                      f"({_first_line(e)})") from e
        except ServiceResponseTimeoutError as e:
            raise self.unknown(f"no answer came within {wait_s:g} s") from e
        except ServiceResponseError as e:  # sent: the answer never came whole
            raise self.unknown(f"the connection broke before the whole answer came ({_first_line(e)})") from e
        except AzureError as e:  # e.g. IncompleteReadError: an answer cut short
            raise self.unknown(f"the answer could not be read ({_first_line(e)})") from e
        return http_answer(self.name, self.where, resp.status_code, content, resp.headers, _AUTH_FIX)

    async def aclose(self) -> None:
        await super().aclose()
        if self._credential is not None:
            await self._credential.close()
        await self._client.close()


def _credential(s: Settings, kw: dict[str, Any]) -> Any:
    from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential

    authority = {} if s.authority is None else {"authority": s.authority}
    if s.tenant_id and s.client_id and s.client_secret is not None:
        return ClientSecretCredential(s.tenant_id, s.client_id, s.client_secret.get_secret_value(), **authority,
                                      **kw)
    return DefaultAzureCredential(**authority, **kw)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def create(settings: Settings | None, transport: Any = None) -> ContainerAppProvider:
    """The provider for ``settings`` (None: from the environment); ProviderUnavailable without a URL or a
    way to authenticate. ``transport``: see ContainerAppProvider."""
    s = settings or Settings()
    if not s.url:
        raise ProviderUnavailable("provider 'azure': no Container App is named: set the settings' url or "
                                  "EXECBOX_CONTAINER_APP_URL (deploy the handler: docs/providers-functions.md)")
    if not s.scope and s.handler_token is None:
        raise ProviderUnavailable("provider 'azure': no way to authenticate to the app: set scope (its Easy Auth "
                                  "application ID URI + '/.default', EXECBOX_CONTAINER_APP_SCOPE) or handler_token "
                                  "(the handler's EXECBOX_HANDLER_TOKEN)")
    try:
        return ContainerAppProvider(s, s.url, transport)
    except ValueError as e:  # azure-identity's checks of the tenant and client IDs
        raise ProviderUnavailable(f"provider 'azure': {e}") from e
