"""A fake azure-core transport standing for Azure's side (tests only): Microsoft Entra ID's token endpoint
(``POST https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token``, the client-credentials grant, as
documented) and a Container App behind Easy Auth that lets through only tokens it issued for the app's
scope, in front of the handler's POST /run. Given as ``transport=`` to both azure-identity's credential and
the provider's PipelineClient, it records every request and answers as ``behave`` says (default: the
handler's answer), or raises azure-core's own errors for a connection that failed before or after sending."""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import case_insensitive_dict
from tests.cloud.functions_fake import Reply, handler_answer, refusal

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "4a1aa1d5-c567-49d0-ad0b-cd957a47f842"
SECRET = "client-secret-value"
SCOPE = "api://execbox-handler/.default"
APP = "https://execbox-handler.nicebeach-1234.westeurope.azurecontainerapps.io"

NOT_SENT = "not sent"  # raise ServiceRequestError (connect refused: nothing went out)
SENT_LOST = "sent, lost"  # raise ServiceResponseError (the request went out, the connection broke)


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    options: dict[str, Any]  # what the pipeline passed the transport (read_timeout, connection_timeout)


class _Connection:
    """What a response closes when read (a real transport's connection)."""

    async def close(self) -> None:
        pass

    def release(self) -> None:
        pass


class FakeAzure(AsyncHttpTransport):
    def __init__(self, behave: Callable[[dict[str, Any]], Reply | str] | None = None) -> None:
        self.behave = behave or (lambda call: Reply.json(handler_answer(call)))
        self.sent: list[Sent] = []
        self.issued: dict[str, str] = {}  # token -> the scope it was issued for
        self.secret = SECRET
        self.handler_token: str | None = None  # an app without Easy Auth: the handler checks its own token
        self._n = itertools.count(1)

    async def __aenter__(self) -> FakeAzure:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, request: Any, **kwargs: Any) -> AsyncHttpResponseImpl:
        body = request.body if isinstance(request.body, dict) else request.content
        raw = urllib.parse.urlencode(body).encode() if isinstance(body, dict) else bytes(body or b"")
        seen = Sent(request.method, request.url, dict(request.headers), raw, kwargs)
        self.sent.append(seen)
        if request.url == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token":
            reply: Reply | str = self._token(dict(urllib.parse.parse_qsl(raw.decode())))
        elif request.url.startswith(APP):
            reply = self._app(seen)
        else:
            raise ServiceRequestError(f"no such host in this fake: {request.url}")
        if reply == NOT_SENT:
            raise ServiceRequestError("Cannot connect to host: Connect call failed ('10.0.0.4', 443)")
        if reply == SENT_LOST:
            raise ServiceResponseError("Connection reset by peer")
        assert isinstance(reply, Reply)
        resp = AsyncHttpResponseImpl(request=request, internal_response=_Connection(), status_code=reply.status,
                                     reason="", content_type=reply.headers.get("Content-Type"),
                                     headers=case_insensitive_dict(reply.headers), stream_download_generator=None)
        resp._content = reply.body
        return resp

    def _token(self, form: dict[str, str]) -> Reply:
        """Entra ID's client-credentials grant."""
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != CLIENT:
            return Reply.json({"error": "invalid_client", "error_description": "AADSTS700016: Application not "
                               "found in the directory."}, 400)
        if form.get("client_secret") != self.secret:
            return Reply.json({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client "
                               "secret provided."}, 401)
        token = f"eyJ0eXAi.token-{next(self._n)}"
        self.issued[token] = form.get("scope", "")
        return Reply.json({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                           "access_token": token})

    def _app(self, seen: Sent) -> Reply | str:
        """Easy Auth in front of the handler: a token this tenant issued for the app's scope, else 401."""
        scheme, _, token = seen.headers.get("Authorization", "").partition(" ")
        if self.handler_token is not None:
            if token != self.handler_token:  # the handler's own refusal (its HTTP face's 401)
                return Reply.json(refusal("unavailable", "refused the caller's token (EXECBOX_HANDLER_TOKEN)",
                                          False), 401)
        elif scheme != "Bearer" or self.issued.get(token) != SCOPE:
            return Reply(401, b"You do not have permission to view this directory or page.",
                         {"WWW-Authenticate": 'Bearer realm="execbox-handler"'})
        if seen.method != "POST" or not seen.url.endswith("/run"):
            return Reply(404, b"not found")
        return self.behave(json.loads(seen.body))

    @property
    def runs(self) -> list[Sent]:
        return [s for s in self.sent if s.url.startswith(APP)]
