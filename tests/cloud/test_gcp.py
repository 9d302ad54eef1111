"""The gcp provider (a Cloud Run service running the handler), at its real boundaries: google-auth does its
own JWT-bearer flow with a service-account key file made here (cryptography) against a loopback token
endpoint (the key's token_uri), and httpx POSTs to a loopback Cloud Run service that checks the ID token
(signature, audience, invoker) before the handler answers. Live tests run when EXECBOX_LIVE_CLOUD_RUN_URL is
set (with GOOGLE_APPLICATION_CREDENTIALS or on Google Cloud)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from tests.cloud import functions_fake
from tests.cloud.cloud_run_fake import CloudRunFake, TokenServer, rsa_key
from tests.cloud.functions_fake import DROP, HANG, NET, QUICK, Reply, refusal, req

from execbox.engine import Engine
from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, RequestError
from execbox.models import Limits, Status
from execbox.providers.registry import ProviderRegistry, parse_instance

EMAIL = "execbox-caller@execbox-test.iam.gserviceaccount.com"


class Google:
    """A token endpoint, a key file for it and a Cloud Run service, all on loopback."""

    def __init__(self, tmp: Path) -> None:
        account = rsa_key()
        self.tokens = TokenServer(EMAIL, account)
        self.key_file = self.tokens.key_file(tmp, account)
        self.behave: Callable[[dict[str, Any]], Reply | str] | None = None
        self.service = CloudRunFake(self.tokens, {EMAIL}, lambda call: (self.behave or _handler)(call))

    def engine(self, chain: tuple[str, ...] = (), **settings: Any) -> Engine:
        return functions_fake.engine("gcp", {"url": self.service.url, "credentials_file": str(self.key_file),
                                             **settings}, chain)


def _handler(call: dict[str, Any]) -> Reply:
    return Reply.json(functions_fake.handler_answer(call))


@pytest.fixture
def google(tmp_path: Path) -> Iterator[Google]:
    g = Google(tmp_path)
    with g.tokens, g.service:
        yield g


async def test_hello_with_a_minted_id_token(google: Google) -> None:
    eng = google.engine()
    result = await eng.execute(req("import sys; print('hello', sys.stdin.read())", stdin="world", env={"A": "1"}))
    assert (result.status, result.stdout, result.provider) == (Status.OK, "hello world\n", "gcp")
    (run,) = google.service.runs
    claims = jwt.decode(run.headers["authorization"].split()[1], options={"verify_signature": False})
    assert claims["aud"] == google.service.url and claims["email"] == EMAIL
    sent = json.loads(run.body)
    assert sent["execution_id"] == result.execution_id and sent["request"]["env"] == {"A": "1"}
    await eng.execute(req("print(2)"))
    assert len(google.tokens.seen) == 1  # the ID token is kept until it nears its expiry


async def test_a_failing_program_and_a_timeout_pass_through(google: Google) -> None:
    eng = google.engine()
    failed = await eng.execute(req("import sys; sys.exit(3)"))
    assert (failed.status, failed.exit_code) == (Status.RUNTIME_ERROR, 3)
    slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=0.5)))
    assert slow.status == Status.TIMEOUT


async def test_with_a_handler_token_the_id_token_goes_in_x_serverless_authorization(google: Google) -> None:
    result = await google.engine(handler_token="handler-secret").execute(req("print(1)"))
    assert result.status == Status.OK
    (run,) = google.service.runs
    assert run.headers["authorization"] == "Bearer handler-secret"
    assert run.headers["x-serverless-authorization"].startswith("Bearer ey")


async def test_an_account_without_run_invoker_is_unavailable_with_the_fix(google: Google) -> None:
    google.service.invokers = set()
    with pytest.raises(ProviderUnavailable, match=r"HTTP 403.*roles/run\.invoker"):
        await google.engine().execute(req("print(1)"))


async def test_a_token_endpoint_refusing_the_key_sends_nothing(google: Google) -> None:
    google.tokens.refuse = True
    with pytest.raises(ProviderUnavailable, match=r"no ID token .* could be minted.*invalid_grant"):
        await google.engine().execute(req("print(1)"))
    assert google.service.seen == []


@pytest.mark.parametrize("content", ["not json", json.dumps({"type": "authorized_user"})])
async def test_a_credentials_file_that_is_not_a_service_account_key(google: Google, tmp_path: Path,
                                                                    content: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ProviderUnavailable, match=r"credentials file|not a service-account key"):
        await google.engine(credentials_file=str(bad)).execute(req("print(1)"))
    assert google.service.seen == []


async def test_no_instance_free_is_at_capacity_with_retry_after(google: Google) -> None:
    google.behave = lambda call: Reply(429, b"Rate exceeded.", {"Retry-After": "7"})
    with pytest.raises(AtCapacity) as e:
        await google.engine().execute(req("print(1)"))
    assert e.value.retry_after_s == 7 and len(google.service.runs) == 1


@pytest.mark.parametrize("failure", ["500", "503", "dropped"])
async def test_failing_after_sending_is_unknown_and_sent_once(google: Google, failure: str) -> None:
    google.behave = lambda call: DROP if failure == "dropped" else Reply(int(failure), b"upstream failed")
    with pytest.raises(OutcomeUnknown, match="may have run"):
        await google.engine().execute(req("print(1)"))
    assert len(google.service.runs) == 1


async def test_no_answer_within_the_read_timeout_is_unknown(google: Google) -> None:
    google.behave = lambda call: HANG
    with pytest.raises(OutcomeUnknown, match="no answer came within 3 s"):
        await google.engine(extra_time_s=1).execute(req("print(1)", QUICK))
    assert len(google.service.runs) == 1


async def test_a_handler_refusal_falls_over_but_code_run_never_does(google: Google) -> None:
    eng = google.engine(chain=("mock",))
    google.behave = lambda call: Reply.json(refusal("capacity", "is busy", False, 2), 503, **{"Retry-After": "2"})
    result = await eng.execute(req("print(1)"))
    assert result.provider == "mock" and result.provider_attempts[0].phase == "start"
    google.behave = lambda call: Reply.json(refusal("internal", "lost the program", True), 500)
    with pytest.raises(OutcomeUnknown, match="lost the program"):
        await eng.execute(req("print(1)"))
    assert len(google.service.runs) == 2


async def test_nothing_listening_is_unavailable(google: Google) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        eng = functions_fake.engine("gcp", {"url": url, "credentials_file": str(google.key_file)})
        with pytest.raises(ProviderUnavailable, match="cannot be reached"):
            await eng.execute(req("print(1)"))


async def test_limits_it_cannot_fit_are_refused_before_sending(google: Google) -> None:
    eng = google.engine(request_timeout_s=60)
    with pytest.raises(RequestError, match="request timeout of 60 s"):
        await eng.execute(req("print(1)", Limits(network=True, wall_time_s=120)))
    provider = eng.providers.get("gcp")
    with pytest.raises(RequestError, match="33554432"):
        await provider.run_request(req("#" * (33 * 1024 * 1024)), eng.policy.apply(NET), "big")  # type: ignore[attr-defined]
    assert google.service.seen == []


def test_settings_say_what_is_missing_or_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXECBOX_CLOUD_RUN_URL", raising=False)
    with pytest.raises(ProviderUnavailable, match="EXECBOX_CLOUD_RUN_URL"):
        ProviderRegistry(default="gcp", configs={"gcp": parse_instance("gcp", "gcp", {})}).get("gcp")
    with pytest.raises(RequestError, match="https is needed"):
        parse_instance("gcp", "gcp", {"url": "http://execbox-handler.a.run.app"})


LIVE = os.environ.get("EXECBOX_LIVE_CLOUD_RUN_URL")


@pytest.mark.skipif(not LIVE, reason="set EXECBOX_LIVE_CLOUD_RUN_URL (and Google credentials) to run live")
async def test_live_cloud_run() -> None:
    eng = functions_fake.engine("gcp", {"url": LIVE})
    hello = await eng.execute(req("print('hello')"))
    assert (hello.status, hello.stdout) == (Status.OK, "hello\n")
    failed = await eng.execute(req("raise SystemExit(3)"))
    assert (failed.status, failed.exit_code) == (Status.RUNTIME_ERROR, 3)
    slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=1)))
    assert slow.status == Status.TIMEOUT
