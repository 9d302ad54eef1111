"""The ``gcp`` kind: a Cloud Run service running execbox's handler, called over HTTPS with a Google ID token.

Each request is one ``POST {url}/run`` (the HandlerCall as the body, the HandlerAnswer back) sent with
httpx, which never resends a request (its transport retries only connecting, and here not even that).
google-auth only mints the ID token for the service's URL (its audience): from a service-account key file
(its JWT-bearer grant at the key's token_uri) or from the metadata server on Google Cloud; the token is kept
until it nears its expiry. Minting happens before anything is sent, so its failures are refusals.

The answer is read as ``function_provider.http_answer`` says: the handler's own answer at any status, else
Cloud Run's front end (401/403 IAM, 429 no instance free, a 5xx or a cut connection after sending: unknown).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from execbox.errors import ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.function_provider import FunctionProvider, http_answer
from execbox.providers.cloud.gcp_settings import CLOUD_RUN_REQUEST_BYTES, Settings

_AUTH_FIX = ("grant the caller's service account roles/run.invoker on the service, and check that the ID "
             "token's audience is the service's URL (or one of its custom audiences: the settings' audience)")


class CloudRunProvider(FunctionProvider):
    """A Cloud Run service (``Settings``): each request one POST /run with an ID token."""

    name = "gcp"
    transport_bytes = CLOUD_RUN_REQUEST_BYTES

    def __init__(self, settings: Settings, url: str) -> None:
        super().__init__()
        self.settings, self.url = settings, url
        self.audience = settings.audience or url
        self.where = f"the Cloud Run service at {url}"
        self._credentials: Any = None  # google-auth's ID-token credentials, made at the first call
        self._lock = threading.Lock()  # one refresh at a time
        self._session: Any = None  # the requests session google-auth mints through
        # no retries: httpx's transport would retry only connecting, and a POST is never sent twice
        self._http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=0), follow_redirects=False)

    def _mint(self) -> str:
        """A valid ID token (blocking: google-auth's transport is requests)."""
        import google.auth.exceptions as gx
        import google.auth.transport.requests
        import requests

        with self._lock:
            try:
                if self._session is None:
                    self._session = requests.Session()
                request = google.auth.transport.requests.Request(self._session)
                if self._credentials is None:
                    self._credentials = self._make(request)
                if not self._credentials.valid:
                    self._credentials.refresh(request)
                return str(self._credentials.token)
            except gx.DefaultCredentialsError as e:
                raise ProviderUnavailable(
                    f"provider {self.name!r}: no Google credentials ({e}): set the settings' credentials_file or "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on Google Cloud "
                    "(the metadata server's account)") from e
            except gx.GoogleAuthError as e:  # the token endpoint refused the key, or could not be reached
                raise ProviderUnavailable(f"provider {self.name!r}: no ID token for {self.audience} could be "
                                          f"minted ({e}); check the key file and its account") from e

    def _make(self, request: Any) -> Any:
        from google.oauth2 import id_token, service_account

        path = self.settings.credentials_file
        if path is None:  # the metadata server's account (Cloud Run, GCE, GKE)
            return id_token.fetch_id_token_credentials(self.audience, request=request)  # type: ignore[no-untyped-call]
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError) as e:
            raise ProviderUnavailable(f"provider {self.name!r}: the credentials file {path} cannot be read "
                                      f"({e})") from e
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ProviderUnavailable(f"provider {self.name!r}: {path} is not a service-account key file (type "
                                      "service_account): make one with gcloud iam service-accounts keys create")
        try:
            return service_account.IDTokenCredentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, target_audience=self.audience)
        except (ValueError, KeyError) as e:
            raise ProviderUnavailable(f"provider {self.name!r}: {path} is not a usable key ({e})") from e

    async def _token(self) -> str:
        creds = self._credentials
        if creds is not None and creds.valid:
            return str(creds.token)
        return await self.in_thread(self._mint)

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        """``request`` run by the service under ``limits`` (each sent, for the handler to cap); see the module."""
        if limits.wall_time_s > self.settings.request_timeout_s:
            raise RequestError(f"provider {self.name!r}: a {limits.wall_time_s:g} s run does not fit the service's "
                               f"request timeout of {self.settings.request_timeout_s:g} s (request_timeout_s)")
        body = self.call_body(request, limits, execution_id)
        token = await self._token()
        headers = {"Content-Type": "application/json"}
        if (handler_token := secret(self.settings.handler_token)) is not None:
            # Cloud Run checks (and strips) the ID token here, leaving Authorization to the handler
            headers |= {"X-Serverless-Authorization": f"Bearer {token}", "Authorization": f"Bearer {handler_token}"}
        else:
            headers["Authorization"] = f"Bearer {token}"
        wait_s = self.wait_s(limits, self.settings.extra_time_s)
        timeout = httpx.Timeout(wait_s, connect=self.settings.connect_timeout_s)
        try:
            resp = await self._http.post(f"{self.url}/run", content=body, headers=headers, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # no connection: nothing was sent
            raise ProviderUnavailable(f"provider {self.name!r}: {self.where} cannot be reached ({e!r})") from e
        except httpx.PoolTimeout as e:
            raise ProviderUnavailable(f"provider {self.name!r}: no connection to {self.url} was free") from e
        except httpx.TimeoutException as e:
            raise self.unknown(f"no answer came within {wait_s:g} s") from e
        except httpx.HTTPError as e:  # sent (or partly): the connection broke before the whole answer
            raise self.unknown(f"the connection broke before the whole answer came ({e!r})") from e
        return http_answer(self.name, self.where, resp.status_code, resp.content, resp.headers, _AUTH_FIX)

    async def aclose(self) -> None:
        await super().aclose()
        await self._http.aclose()
        if self._session is not None:
            self._session.close()


def create(settings: Settings | None) -> CloudRunProvider:
    """The provider for ``settings`` (None: from the environment); ProviderUnavailable without a URL.
    Credentials are read at the first call (the metadata server is only asked then)."""
    s = settings or Settings()
    if not s.url:
        raise ProviderUnavailable("provider 'gcp': no Cloud Run service is named: set the settings' url or "
                                  "EXECBOX_CLOUD_RUN_URL (deploy the handler: docs/providers-functions.md)")
    return CloudRunProvider(s, s.url)
