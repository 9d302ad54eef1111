"""A loopback stand-in for AWS Lambda's Invoke REST API (tests only), for boto3 pointed at it through
``endpoint_url``: ``POST /2015-03-31/functions/{FunctionName}/invocations``, the payload the function's event,
the answer the function's return value (200, ``X-Amz-Executed-Version``), errors as Lambda's REST-JSON ones
(``x-amzn-ErrorType`` and a JSON body), as documented for Invoke."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tests.cloud.functions_fake import LoopbackServer, Reply, Seen, handler_answer

INVOKE = re.compile(r"^/2015-03-31/functions/(?P<name>[^/?]+)/invocations(\?.*)?$")


def lambda_error(status: int, code: str, message: str, **extra: Any) -> Reply:
    """An error as Lambda answers it (REST-JSON: the type in x-amzn-ErrorType, the fields in the body)."""
    headers = {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazonaws.awsgambit/"}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra.pop("retry_after"))
    return Reply.json({"Type": "User" if status < 500 else "Service", "message": message, **extra}, status,
                      **headers)


class LambdaFake(LoopbackServer):
    """Lambda with one function, ``name``; ``behave`` decides each invoke's answer (default: the handler's).
    ``invokes`` are the invokes that arrived (each a Seen)."""

    def __init__(self, name: str = "execbox-handler",
                 behave: Callable[[dict[str, Any]], Reply | str] | None = None) -> None:
        self.name = name
        self.behave = behave or (lambda event: Reply.json(handler_answer(event), **{
            "X-Amz-Executed-Version": "$LATEST"}))
        super().__init__(self._route)

    def _route(self, seen: Seen) -> Reply | str:
        m = INVOKE.match(seen.path)
        if seen.method != "POST" or m is None:
            return lambda_error(404, "UnknownOperationException", f"no such operation: {seen.path}")
        if m["name"] != self.name:
            return lambda_error(404, "ResourceNotFoundException", f"Function not found: {m['name']}")
        if not seen.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential="):
            return lambda_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if seen.headers.get("x-amz-invocation-type", "RequestResponse") != "RequestResponse":
            return lambda_error(400, "InvalidParameterValueException", "this fake answers RequestResponse only")
        return self.behave(json.loads(seen.body))

    @property
    def invokes(self) -> list[Seen]:
        return [s for s in self.seen if INVOKE.match(s.path)]
