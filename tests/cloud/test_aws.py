"""The aws provider (AWS Lambda through boto3), at the SDK's own boundaries: botocore's Stubber for Lambda's
API errors and answer shapes, and a loopback server answering Lambda's Invoke REST API (endpoint_url) for
what only a real HTTP exchange shows: one attempt only (never-twice), the read timeout, a connection lost
after sending. Live tests against a real function run when EXECBOX_LIVE_LAMBDA_FUNCTION is set."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import socket
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.response import StreamingBody
from botocore.stub import Stubber
from tests.cloud import functions_fake
from tests.cloud.functions_fake import DROP, HANG, NET, QUICK, Reply, handler_answer, refusal, req
from tests.cloud.lambda_fake import LambdaFake, lambda_error

from execbox.engine import Engine
from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, RequestError
from execbox.models import Limits, Status
from execbox.providers.cloud.aws import LambdaProvider
from execbox.providers.registry import ProviderRegistry, parse_instance

KEYS = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "region": "eu-west-1"}


def engine(settings: dict[str, Any], chain: tuple[str, ...] = ()) -> Engine:
    return functions_fake.engine("aws", settings, chain)


# --- botocore's Stubber: Lambda's documented answers and errors, no network at all

class Payload:
    """Matches the invoke's Payload and keeps it (Stubber compares expected params with ==)."""

    def __init__(self) -> None:
        self.sent: dict[str, Any] | None = None

    def __eq__(self, other: object) -> bool:
        assert isinstance(other, bytes)
        self.sent = json.loads(other)
        return True

    __hash__ = None  # type: ignore[assignment]


def stubbed(eng: Engine, limits: Limits = NET) -> Stubber:
    """A Stubber on the client the provider will use for a run under ``limits`` (one per read timeout)."""
    provider = eng.providers.get("aws")
    assert isinstance(provider, LambdaProvider)
    applied = eng.policy.apply(limits)
    client = provider._client(math.ceil(provider.wait_s(applied, provider.settings.extra_time_s)))
    return Stubber(client)


def invoked(answer: Any, function_error: str | None = None) -> dict[str, Any]:
    body = json.dumps(answer).encode()
    resp: dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": "$LATEST",
                            "Payload": StreamingBody(io.BytesIO(body), len(body))}
    if function_error:
        resp["FunctionError"] = function_error
    return resp


def ran(status: str, **fields: Any) -> dict[str, Any]:
    return {"result": {"execution_id": "x", "language": "python", "provider": "handler", "status": status,
                       **fields}}


async def test_success_sends_a_handler_call_and_takes_its_result() -> None:
    eng = engine({**KEYS, "function_name": "execbox-handler", "qualifier": "live"})
    payload = Payload()
    with stubbed(eng) as stub:
        stub.add_response("invoke", invoked(ran("ok", exit_code=0, stdout="hi\n")), {
            "FunctionName": "execbox-handler", "InvocationType": "RequestResponse", "Payload": payload,
            "Qualifier": "live"})
        result = await eng.execute(req("print('hi')", stdin="in", env={"A": "1"}))
        stub.assert_no_pending_responses()
    assert (result.status, result.stdout, result.provider) == (Status.OK, "hi\n", "aws")
    assert payload.sent is not None and payload.sent["version"] == 1
    assert payload.sent["execution_id"] == result.execution_id
    sent = payload.sent["request"]
    assert (sent["code"], sent["stdin"], sent["env"]) == ("print('hi')", "in", {"A": "1"})
    assert sent["limits"]["wall_time_s"] == 10 and sent["limits"]["network"] is True  # every limit sent


@pytest.mark.parametrize("status", ["runtime_error", "timeout"])
async def test_the_programs_own_end_passes_through(status: str) -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_response("invoke", invoked(ran(status, exit_code=3 if status == "runtime_error" else None,
                                                message="wall time limit of 10 s")))
        result = await eng.execute(req("raise SystemExit(3)"))
    assert result.status == status
    assert result.exit_code == (3 if status == "runtime_error" else None)


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException",
                                  "InvalidSignatureException"])
async def test_refused_credentials_are_unavailable_with_the_fix(code: str) -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_client_error("invoke", code, "The security token included in the request is invalid.", 403)
        with pytest.raises(ProviderUnavailable, match=f"{code}.*lambda:InvokeFunction"):
            await eng.execute(req("print(1)"))


async def test_a_missing_function_is_unavailable() -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_client_error("invoke", "ResourceNotFoundException", "Function not found: f", 404)
        with pytest.raises(ProviderUnavailable, match="check function_name"):
            await eng.execute(req("print(1)"))


async def test_throttling_is_at_capacity_with_lambdas_retry_after() -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_client_error("invoke", "TooManyRequestsException", "Rate Exceeded.", 429, modeled_fields={
            "retryAfterSeconds": "3", "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"})
        with pytest.raises(AtCapacity, match="ReservedFunctionConcurrentInvocationLimitExceeded") as e:
            await eng.execute(req("print(1)"))
    assert e.value.retry_after_s == 3


@pytest.mark.parametrize(("code", "status", "raised"), [
    ("ENILimitReachedException", 502, ProviderUnavailable),  # its environment was never set up
    ("KMSAccessDeniedException", 502, ProviderUnavailable),
    ("ServiceException", 500, OutcomeUnknown),  # the service failed: maybe after the function ran
    ("EFSIOException", 410, OutcomeUnknown),  # its file system failed mid-run
    ("RequestTooLargeException", 413, RequestError),
])
async def test_lambdas_other_errors_say_whether_the_code_may_have_run(code: str, status: int,
                                                                      raised: type[Exception]) -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_client_error("invoke", code, "it failed", status)
        with pytest.raises(raised):
            await eng.execute(req("print(1)"))


async def test_a_crashed_handler_is_an_unknown_outcome() -> None:
    eng = engine({**KEYS, "function_name": "f"})
    with stubbed(eng) as stub:
        stub.add_response("invoke", invoked({"errorType": "Runtime.ExitError", "errorMessage": "signal: killed"},
                                            function_error="Unhandled"))
        with pytest.raises(OutcomeUnknown, match=r"Unhandled: Runtime\.ExitError: signal: killed"):
            await eng.execute(req("print(1)"))


async def test_a_handler_refusal_falls_over_but_code_run_never_does() -> None:
    eng = engine({**KEYS, "function_name": "f"}, chain=("mock",))
    with stubbed(eng) as stub:
        stub.add_response("invoke", invoked(refusal("capacity", "is busy", code_run=False, retry_after_s=2)))
        result = await eng.execute(req("print(1)"))
        assert result.provider == "mock"  # refused before the hand-over: the next provider took it
        assert (result.provider_attempts[0].provider, result.provider_attempts[0].phase) == ("aws", "start")
        stub.add_response("invoke", invoked(refusal("internal", "lost the program", code_run=True)))
        with pytest.raises(OutcomeUnknown, match="lost the program"):
            await eng.execute(req("print(1)"))


async def test_a_payload_over_lambdas_limit_is_refused_before_sending() -> None:
    eng = engine({**KEYS, "function_name": "f"}, chain=("mock",))
    with stubbed(eng):  # nothing stubbed: a call would fail the Stubber's way (UnStubbedResponseError)
        provider = eng.providers.get("aws")
        with pytest.raises(RequestError, match="6291456"):
            await provider.run_request(req("x = 1\n" + "#" * (6 * 1024 * 1024)),  # type: ignore[attr-defined]
                                       eng.policy.apply(NET), "big")
    assert eng.providers.capabilities("aws").unfit(NET, (), req("#" * (5 * 1024 * 1024))) is not None


def test_missing_settings_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECBOX_LAMBDA_FUNCTION", raising=False)
    reg = ProviderRegistry(default="aws", configs={"aws": parse_instance("aws", "aws", {})})
    with pytest.raises(ProviderUnavailable, match="EXECBOX_LAMBDA_FUNCTION"):
        reg.get("aws")
    reg = ProviderRegistry(default="aws", configs={"aws": parse_instance("aws", "aws", {
        "function_name": "f", "access_key_id": "AKID"})})
    with pytest.raises(ProviderUnavailable, match="go together"):
        reg.get("aws")


async def test_no_credentials_anywhere_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata server from here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    with LambdaFake("f") as fake:
        eng = engine({"function_name": "f", "region": "eu-west-1", "endpoint_url": fake.url})
        with pytest.raises(ProviderUnavailable, match="no usable AWS credentials"):
            await eng.execute(req("print(1)"))
        assert fake.invokes == []


# --- a loopback Lambda: real HTTP through botocore

async def test_hello_stdin_failure_and_timeout_through_a_real_invoke() -> None:
    with LambdaFake("execbox-handler") as fake:
        eng = engine({**KEYS, "function_name": "execbox-handler", "endpoint_url": fake.url})
        hello = await eng.execute(req("import sys; print('hello', sys.stdin.read())", stdin="world"))
        assert (hello.status, hello.stdout) == (Status.OK, "hello world\n")
        failed = await eng.execute(req("import sys; print('bad', file=sys.stderr); sys.exit(3)"))
        assert (failed.status, failed.exit_code, failed.stderr) == (Status.RUNTIME_ERROR, 3, "bad\n")
        slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=0.5)))
        assert slow.status == Status.TIMEOUT
        assert len(fake.invokes) == 3
        assert fake.invokes[0].headers["x-amz-invocation-type"] == "RequestResponse"


@pytest.mark.parametrize("failure", ["served 500", "dropped", "throttled"])
async def test_one_attempt_only(failure: str) -> None:
    """botocore retries 5xx, throttles and lost connections by default: here each arrives exactly once."""
    behave = {"served 500": lambda event: lambda_error(500, "ServiceException", "internal error"),
              "dropped": lambda event: DROP,
              "throttled": lambda event: lambda_error(429, "TooManyRequestsException", "Rate Exceeded.",
                                                      retry_after=2, Reason="ConcurrentInvocationLimitExceeded")}
    with LambdaFake("f", behave[failure]) as fake:
        eng = engine({**KEYS, "function_name": "f", "endpoint_url": fake.url})
        with pytest.raises(AtCapacity if failure == "throttled" else OutcomeUnknown) as e:
            await eng.execute(req("print(1)"))
        assert len(fake.invokes) == 1
    if failure == "throttled":
        assert e.value.retry_after_s == 2  # type: ignore[attr-defined]
    else:
        assert "may have run" in str(e.value)


def test_botocores_default_would_have_sent_it_again() -> None:
    """The control for test_one_attempt_only: the same fake, a client with botocore's own retries."""
    with LambdaFake("f", lambda event: lambda_error(500, "ServiceException", "internal error")) as fake:
        client = boto3.Session(aws_access_key_id="AKID", aws_secret_access_key="s", region_name="eu-west-1").client(
            "lambda", endpoint_url=fake.url, config=Config(retries={"mode": "standard"}))
        with pytest.raises(client.exceptions.ServiceException):
            client.invoke(FunctionName="f", Payload=b"{}")
        assert len(fake.invokes) == 3


async def test_no_answer_within_the_read_timeout_is_unknown_and_sent_once() -> None:
    with LambdaFake("f", lambda event: HANG) as fake:
        eng = engine({**KEYS, "function_name": "f", "endpoint_url": fake.url, "extra_time_s": 1})
        with pytest.raises(OutcomeUnknown, match="no answer came within 3 s"):
            await eng.execute(req("print(1)", QUICK))
        assert len(fake.invokes) == 1


async def test_nothing_listening_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        eng = engine({**KEYS, "function_name": "f", "endpoint_url": f"http://127.0.0.1:{port}"})
        with pytest.raises(ProviderUnavailable, match="cannot be reached"):
            await eng.execute(req("print(1)"))


async def test_a_cancelled_call_is_kept_until_it_ends() -> None:
    """A cancel returns at once; the invoke under way is not lost: aclose waits for it to end."""
    with LambdaFake("f", lambda event: HANG) as fake:
        eng = engine({**KEYS, "function_name": "f", "endpoint_url": fake.url, "extra_time_s": 1})
        provider = eng.providers.get("aws")
        assert isinstance(provider, LambdaProvider)
        task = asyncio.create_task(provider.run_request(req("print(1)"), eng.policy.apply(QUICK), "c1"))
        while not fake.invokes:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(provider._abandoned) == 1
        await provider.aclose()  # the call's own read timeout (3 s) ends it
        assert not provider._abandoned and len(fake.invokes) == 1


def test_the_fakes_handler_answer_is_a_handler_answer() -> None:
    """The stand-in answers what the contract says (it is the real handler, run here)."""
    from execbox.providers.cloud.function import HandlerAnswer, HandlerCall

    call = HandlerCall.of(req("print(2)"), NET, "id-1")
    answer = HandlerAnswer.model_validate(handler_answer(json.loads(call.to_json())))
    assert answer.result is not None and answer.result.stdout == "2\n"
    assert Reply.json({}).status == 200


LIVE = os.environ.get("EXECBOX_LIVE_LAMBDA_FUNCTION")


@pytest.mark.skipif(not LIVE, reason="set EXECBOX_LIVE_LAMBDA_FUNCTION (and AWS credentials) to run live")
async def test_live_lambda() -> None:
    eng = engine({"function_name": LIVE})
    hello = await eng.execute(req("print('hello')"))
    assert (hello.status, hello.stdout) == (Status.OK, "hello\n")
    failed = await eng.execute(req("raise SystemExit(3)"))
    assert (failed.status, failed.exit_code) == (Status.RUNTIME_ERROR, 3)
    slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=1)))
    assert slow.status == Status.TIMEOUT
