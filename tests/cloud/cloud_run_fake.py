"""Loopback stand-ins for Google's side of a Cloud Run call (tests only): a token endpoint answering
google-auth's JWT-bearer grant for an ID token (what oauth2.googleapis.com/token does for a service
account's signed assertion with a ``target_audience``), and a Cloud Run service that lets through only
calls bearing an ID token it minted for the service's URL, from an account allowed to invoke it."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.cloud.functions_fake import LoopbackServer, Reply, Seen, handler_answer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"  # an assertion's audience, whatever its token_uri


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class TokenServer(LoopbackServer):
    """Google's token endpoint for one service account: it checks the assertion's signature (the account's
    public key), audience (Google's token endpoint) and grant, and answers ``{"id_token": ...}`` signed by
    its own key."""

    def __init__(self, email: str, account_key: rsa.RSAPrivateKey) -> None:
        self.email, self.account_public = email, account_key.public_key()
        self.signing_key = rsa_key()
        self.refuse = False  # answer invalid_grant (a deleted key, a disabled account)
        super().__init__(self._route)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def _route(self, seen: Seen) -> Reply:
        form = dict(urllib.parse.parse_qsl(seen.body.decode()))
        if seen.method != "POST" or seen.path != "/token" or form.get("grant_type") != JWT_BEARER:
            return Reply.json({"error": "unsupported_grant_type"}, 400)
        try:
            claims = jwt.decode(form.get("assertion", ""), self.account_public, algorithms=["RS256"],
                                audience=GOOGLE_TOKEN_ENDPOINT)
        except jwt.PyJWTError as e:
            return Reply.json({"error": "invalid_grant", "error_description": f"Invalid JWT: {e}"}, 400)
        if self.refuse or claims.get("iss") != self.email or "target_audience" not in claims:
            return Reply.json({"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
                              400)
        now = int(time.time())
        token = jwt.encode({"iss": "https://accounts.google.com", "aud": claims["target_audience"],
                            "email": self.email, "sub": "1234567890", "iat": now, "exp": now + 3600},
                           self.signing_key, algorithm="RS256")
        return Reply.json({"id_token": token})

    def key_file(self, directory: Path, account_key: rsa.RSAPrivateKey) -> Path:
        """A service-account key file as the IAM console makes it, its token_uri this server."""
        path = directory / "sa.json"
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "execbox-test", "private_key_id": "k1",
            "private_key": pem(account_key), "client_email": self.email, "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_uri}))
        return path


class CloudRunFake(LoopbackServer):
    """A Cloud Run service in front of the handler's POST /run: IAM lets through ID tokens of ``tokens``
    for its URL from the ``invokers``; ``behave`` decides each call's answer (default: the handler's)."""

    def __init__(self, tokens: TokenServer, invokers: set[str],
                 behave: Callable[[dict[str, Any]], Reply | str] | None = None) -> None:
        self.tokens, self.invokers = tokens, invokers
        self.behave = behave or (lambda call: Reply.json(handler_answer(call)))
        super().__init__(self._route)

    def _route(self, seen: Seen) -> Reply | str:
        # the ID token in X-Serverless-Authorization when it is there (Cloud Run's rule), else Authorization
        bearer = seen.headers.get("x-serverless-authorization") or seen.headers.get("authorization", "")
        scheme, _, token = bearer.partition(" ")
        try:
            claims = jwt.decode(token, self.tokens.signing_key.public_key(), algorithms=["RS256"],
                                audience=self.url)
        except jwt.PyJWTError:
            return Reply(401, b"<html>Your client does not have permission: 401 Unauthorized</html>",
                         {"Content-Type": "text/html", "WWW-Authenticate": 'Bearer error="invalid_token"'})
        if scheme != "Bearer" or claims.get("email") not in self.invokers:
            return Reply(403, b"<html>Your client does not have permission to get URL /run</html>",
                         {"Content-Type": "text/html"})
        if seen.method != "POST" or seen.path != "/run":
            return Reply(404, b"not found")
        return self.behave(json.loads(seen.body))

    @property
    def runs(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/run"]
