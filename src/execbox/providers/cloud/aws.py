"""The ``aws`` kind: an AWS Lambda function running execbox's handler, invoked through boto3.

Each request is one synchronous invoke (``InvocationType=RequestResponse``) whose payload is the
HandlerCall and whose answer is the HandlerAnswer. botocore retries a failed call on its own (throttles,
5xx, a connection reset or a read timeout: up to 3 or 5 attempts by its mode); here its client makes exactly
one attempt (``total_max_attempts=1``), so a call that may have reached the function is never sent again.
The client's read timeout is the run's wall times plus ``extra_time_s``; boto3 blocks, so the call runs in
a thread that a cancel never loses (``FunctionProvider.in_thread``).

What a failure means is read in ``_failure``: refused by Lambda before the function ran (auth, throttling,
an environment it could not set up, a bad request) is the error of its kind; anything that may have come
after the handler took the call (a 5xx of the service, a read timeout, a connection lost after sending, a
FunctionError: the handler crashed or the function timed out) is OutcomeUnknown.
"""

from __future__ import annotations

import json
import math
import threading
from typing import TYPE_CHECKING, Any

from execbox.errors import AtCapacity, ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.providers.cloud import function
from execbox.providers.cloud.aws_settings import LAMBDA_PAYLOAD_BYTES, Settings
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.function_provider import FunctionProvider, retry_after

if TYPE_CHECKING:
    import boto3

_AUTH = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
         "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
         "MissingAuthenticationToken", "MissingAuthenticationTokenException", "IncompleteSignature",
         "AuthFailure", "UnauthorizedException"}
_CAPACITY = {"TooManyRequestsException", "ServiceQuotaExceededException", "ThrottlingException",
             "Throttling", "RequestLimitExceeded"}
# The request itself, as Lambda read it: never run
_BAD_REQUEST = {"RequestTooLargeException", "SerializedRequestEntityTooLargeException",
                "InvalidRequestContentException", "UnsupportedMediaTypeException"}
# Lambda's 502s are all its failing to set up the function's environment (VPC, KMS, the code package, the
# runtime): the handler never got the call. Its other 5xx (ServiceException) may come after it did.
_SETUP_5XX = {"EC2AccessDeniedException", "EC2ThrottledException", "EC2UnexpectedException",
              "ENILimitReachedException", "ENINotReadyException", "InvalidRuntimeException",
              "InvalidSecurityGroupIDException", "InvalidSubnetIDException", "InvalidZipFileException",
              "KMSAccessDeniedException", "KMSDisabledException", "KMSInvalidStateException", "KMSNotFoundException",
              "ResourceNotReadyException", "SubnetIPAddressLimitReachedException"}
# 4xx that may come once the function ran: a failed read or write of its file system mid-run
_MID_RUN_4XX = {"EFSIOException"}
_AUTH_FIX = ("give execbox AWS credentials allowed lambda:InvokeFunction on the function (the settings' "
             "access_key_id and secret_access_key, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or the "
             "host's role); check that they have not expired")


class LambdaProvider(FunctionProvider):
    """AWS Lambda (``Settings``): each request one synchronous invoke of the handler's function."""

    name = "aws"
    transport_bytes = LAMBDA_PAYLOAD_BYTES

    def __init__(self, settings: Settings, session: boto3.Session) -> None:
        super().__init__()
        self.settings = settings
        self.where = f"AWS Lambda function {settings.function_name}"
        self._session = session
        self._clients: dict[int, Any] = {}  # by read timeout: botocore sets it per client
        self._lock = threading.Lock()  # a boto3 Session is not thread-safe; its clients are

    def _client(self, read_timeout_s: int) -> Any:
        from botocore.config import Config

        with self._lock:
            client = self._clients.get(read_timeout_s)
            if client is None:
                config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=read_timeout_s,
                                connect_timeout=self.settings.connect_timeout_s, tcp_keepalive=True)
                client = self._session.client("lambda", endpoint_url=self.settings.endpoint_url, config=config)
                self._clients[read_timeout_s] = client
            return client

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        """``request`` run by the function under ``limits`` (each sent, for the handler to cap); see the module."""
        payload = self.call_body(request, limits, execution_id)
        read_s = math.ceil(self.wait_s(limits, self.settings.extra_time_s))
        params: dict[str, Any] = {"FunctionName": self.settings.function_name,
                                  "InvocationType": "RequestResponse", "Payload": payload}
        if self.settings.qualifier:
            params["Qualifier"] = self.settings.qualifier

        def invoke() -> tuple[dict[str, Any], bytes]:
            resp = self._client(read_s).invoke(**params)
            return resp, resp["Payload"].read()  # read here: a timeout or a reset mid-answer is the call's

        try:
            resp, body = await self.in_thread(invoke)
        except Exception as e:
            raise self._failure(e, read_s) from e
        if resp.get("FunctionError"):  # the handler never raises: the runtime failed (a crash, a timeout, OOM)
            raise self.unknown(f"failed ({resp['FunctionError']}: {_function_error(body)})")
        try:
            doc = json.loads(body)
        except ValueError:
            raise self.unknown(f"answered a payload that is not JSON ({body[:200]!r})") from None
        return function.answered(doc, self.name, self.where)

    def _failure(self, e: Exception, read_s: int) -> Exception:
        """What botocore's error means: not sent (its kind) or sent with no answer (OutcomeUnknown)."""
        import botocore.exceptions as bx

        said = f"provider {self.name!r}: {self.where}"
        if isinstance(e, bx.ClientError):
            error = e.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            meta = e.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            why = f"{said}: Lambda refused the invoke ({code}: {message})"
            if code in _AUTH:
                return ProviderUnavailable(f"{why}; {_AUTH_FIX}")
            if code in _CAPACITY or status == 429:
                wait = retry_after(str(e.response.get("retryAfterSeconds") or "")) or retry_after(
                    meta.get("HTTPHeaders", {}).get("retry-after"))
                reason = f" ({e.response['Reason']})" if e.response.get("Reason") else ""
                return AtCapacity(f"{why}{reason}", wait)
            if code in _BAD_REQUEST:
                return RequestError(why)
            if code == "ResourceNotFoundException":
                return ProviderUnavailable(f"{why}; check function_name, qualifier and region (deploy the "
                                           "handler as docs/providers-functions.md says)")
            if code in _SETUP_5XX or (400 <= status < 500 and code not in _MID_RUN_4XX):
                return ProviderUnavailable(why)
            return self.unknown(f"failed ({code}, HTTP {status}: {message})")
        if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError):
            return ProviderUnavailable(f"{said}: no usable AWS credentials ({e}); {_AUTH_FIX}")
        if isinstance(e, bx.NoRegionError):
            return ProviderUnavailable(f"{said}: no AWS region is set: give the settings' region or AWS_REGION")
        if isinstance(e, bx.ConnectionError):  # connecting failed (refused, DNS, connect timeout, TLS): not sent
            return ProviderUnavailable(f"{said}: Lambda cannot be reached ({e})")
        if isinstance(e, bx.ReadTimeoutError):
            return self.unknown(f"no answer came within {read_s} s")
        if isinstance(e, bx.HTTPClientError):  # closed mid-call, or the answer cut off
            return self.unknown(f"the connection broke before the whole answer came ({e})")
        if isinstance(e, bx.ParamValidationError):
            return RequestError(f"{said}: {e}")
        return self.unknown(f"the call failed ({type(e).__name__}: {e})")


def _function_error(body: bytes) -> str:
    """The runtime's error payload in words ({"errorType": ..., "errorMessage": ...})."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return f"{doc.get('errorType', 'error')}: {doc.get('errorMessage', '')}"[:300]
    return str(doc)[:300]


def create(settings: Settings | None) -> LambdaProvider:
    """The provider for ``settings`` (None: from the environment). ProviderUnavailable when no function is
    named or boto3 cannot be set up (an unknown profile); credentials are looked up at the first call."""
    import boto3
    import botocore.exceptions as bx

    s = settings or Settings()
    if not s.function_name:
        raise ProviderUnavailable("provider 'aws': no Lambda function is named: set the settings' function_name "
                                  "or EXECBOX_LAMBDA_FUNCTION (deploy the handler: docs/providers-functions.md)")
    if (s.access_key_id is None) != (s.secret_access_key is None):
        raise ProviderUnavailable("provider 'aws': access_key_id and secret_access_key go together: give both, "
                                  "or neither (boto3's chain: AWS_* variables, a profile, the host's role)")
    try:
        session = boto3.Session(aws_access_key_id=s.access_key_id,
                                aws_secret_access_key=secret(s.secret_access_key),
                                aws_session_token=secret(s.session_token), region_name=s.region,
                                profile_name=s.profile)
    except bx.BotoCoreError as e:  # ProfileNotFound and the like
        raise ProviderUnavailable(f"provider 'aws': boto3 cannot be set up ({e})") from e
    return LambdaProvider(s, session)
