"""The AWS Lambda entry point: ``execbox.providers.cloud.handler.aws_lambda.lambda_handler``, run by the
AWS Lambda Runtime Interface Client (awslambdaric, the image's entrypoint). The invoke's payload is the
HandlerCall; the answer is the invoke's response payload. Its module is not named ``lambda``: a keyword.

The run is bounded by the time Lambda leaves the invocation (``context.get_remaining_time_in_millis()``,
less the handler's margin for the reset and the answer), so that an answer always comes back: a function
that timed out would leave the caller not knowing whether the code ran.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from execbox.providers.cloud.handler import error_answer, handle, handler

# Set up (and the cold-start reset done) in Lambda's init phase, not in the first invocation's time; a
# failure here is answered by every invocation instead (handle() tries again).
with contextlib.suppress(Exception):
    handler()


class LambdaContext(Protocol):
    """The part of the Lambda runtime's context object the handler uses."""

    def get_remaining_time_in_millis(self) -> int: ...


def lambda_handler(event: Any, context: LambdaContext | None) -> dict[str, Any]:
    """One invocation: ``event`` is the HandlerCall (decoded JSON); never raises (a raised error would be a
    FunctionError, which the caller must read as an unknown outcome)."""
    if not isinstance(event, dict):
        return error_answer("request", "was invoked with a payload that is not a JSON object", False)
    remaining = context.get_remaining_time_in_millis() / 1000 if context is not None else None
    return handle(event, remaining)
