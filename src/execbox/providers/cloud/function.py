"""The function services' wire contract (AWS Lambda, Cloud Run, Container Apps): what execbox sends the
handler it ships for them (``execbox.providers.cloud.handler``) and what that handler answers. Both sides
use these models, so the contract is written once.

    sent      {"version": 1, "execution_id": "...", "request": <an ExecuteBody, every limit set>}
    answered  {"result": <an ExecutionResult>}
          or  {"error": {"kind": "request|capacity|unavailable|internal", "detail": "...",
                         "code_run": false|true, "retry_after_s": null|1.5}}

``code_run`` is the handler's word on whether the program may have started: false for a refusal (a bad
payload, a language it lacks, busy), true once it handed the program over. ``execution_id`` makes repeats
visible: the handler refuses an id it has already run (within its environment's life), never runs it twice.
A provider never retries the call itself (each adapter turns its SDK's retries off for it); the answer, or
the lack of one, is mapped here: ``answered`` below, ``unknown`` for a call sent with no complete answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.wire import ExecuteBody

CONTRACT_VERSION: Literal[1] = 1
ErrorKind = Literal["request", "capacity", "unavailable", "internal"]


class HandlerCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = CONTRACT_VERSION
    execution_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    request: ExecuteBody

    @classmethod
    def of(cls, request: ExecutionRequest, limits: Limits, execution_id: str) -> HandlerCall:
        """The call for ``request`` under ``limits`` (each limit sent: the handler caps them by its own)."""
        body = ExecuteBody.of(request.model_copy(update={"limits": limits, "provider": None, "fallback": None}))
        return cls(execution_id=execution_id, request=body)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class HandlerError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: ErrorKind
    detail: str
    code_run: bool
    retry_after_s: float | None = None


class HandlerAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    result: ExecutionResult | None = None
    error: HandlerError | None = None


def answered(doc: Any, provider: str, where: str) -> ExecutionResult:
    """The result in a handler's answer (already decoded JSON), or the error it stands for: a refusal is the
    exception of its kind (the router may try another provider); anything else, OutcomeUnknown."""
    try:
        answer = HandlerAnswer.model_validate(doc)
    except ValidationError as e:
        raise unknown(provider, where, f"answered something that is not a handler answer ({_first(e)})") from None
    if answer.result is not None:
        return answer.result
    err = answer.error
    if err is None:
        raise unknown(provider, where, "answered neither a result nor an error")
    said = f"provider {provider!r}: the handler at {where} {err.detail}"
    if err.code_run:
        raise OutcomeUnknown(f"{said}; the code may have run, so it is not run again")
    if err.kind == "request":
        raise RequestError(said)
    if err.kind == "capacity":
        raise AtCapacity(said, err.retry_after_s)
    raise ProviderUnavailable(said)


def unknown(provider: str, where: str, why: str) -> OutcomeUnknown:
    """The call was sent and no complete answer came: the code may have run."""
    return OutcomeUnknown(f"provider {provider!r}: {where} was sent the request and {why}; the code may have "
                          "run, so it is not run again")


def _first(e: ValidationError) -> str:
    first = e.errors(include_url=False)[0]
    return f"{'.'.join(map(str, first['loc'])) or 'answer'}: {first['msg']}"
