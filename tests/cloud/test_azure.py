"""The azure provider (a Container App running the handler), at azure-core's transport boundary: one fake
AsyncHttpTransport answers both azure-identity's token request (ClientSecretCredential's real
client-credentials flow) and the call through the provider's PipelineClient (Easy Auth, then the handler),
and raises azure-core's own errors for a connection lost before or after sending. Live tests run when
EXECBOX_LIVE_CONTAINER_APP_URL is set (with its scope and AZURE_* credentials)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
from tests.cloud import functions_fake
from tests.cloud.azure_fake import (
    APP,
    CLIENT,
    NOT_SENT,
    SCOPE,
    SECRET,
    SENT_LOST,
    TENANT,
    FakeAzure,
)
from tests.cloud.functions_fake import NET, Reply, refusal, req

from execbox.engine import Engine
from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, RequestError
from execbox.models import Limits, Policy, Status
from execbox.providers.cloud import azure
from execbox.providers.cloud.azure_settings import Settings
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings

SP = {"url": APP, "scope": SCOPE, "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET}


def engine(fake: FakeAzure, chain: tuple[str, ...] = (), **settings: Any) -> Engine:
    """An engine over the provider made with ``fake`` as its transport; routed by the azure kind's own
    capabilities (an instance given in code would otherwise get a generic kind)."""
    provider = azure.create(Settings(**{**SP, **settings}), transport=fake)
    reg = ProviderRegistry(default="azure", instances={"azure": provider})
    reg.kinds["given:azure"] = dataclasses.replace(reg.kinds["azure"], name="given:azure")
    maxima = Policy().maxima.model_copy(update={"network": True})
    return Engine(providers=reg, policy=Policy(maxima=maxima), router=Router(reg, chain, RoutingSettings(retries=0)))


async def test_hello_with_an_entra_token_and_no_retry_policy() -> None:
    fake = FakeAzure()
    eng = engine(fake)
    result = await eng.execute(req("import sys; print('hello', sys.stdin.read())", stdin="world"))
    assert (result.status, result.stdout, result.provider) == (Status.OK, "hello world\n", "azure")
    token, run = fake.sent
    assert token.url.endswith(f"/{TENANT}/oauth2/v2.0/token") and b"scope=api%3A%2F%2Fexecbox-handler" in token.body
    assert run.url == f"{APP}/run" and run.headers["Authorization"].startswith("Bearer eyJ0eXAi.token-")
    assert run.options["read_timeout"] == 10 + 60 + 30 and run.options["connection_timeout"] == 10
    await eng.execute(req("print(2)"))
    assert len(fake.sent) == 3  # the token is cached by azure-identity


async def test_a_failing_program_and_a_timeout_pass_through() -> None:
    eng = engine(FakeAzure())
    failed = await eng.execute(req("import sys; sys.exit(3)"))
    assert (failed.status, failed.exit_code) == (Status.RUNTIME_ERROR, 3)
    slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=0.5)))
    assert slow.status == Status.TIMEOUT


async def test_a_wrong_client_secret_is_unavailable_and_nothing_is_sent() -> None:
    fake = FakeAzure()
    fake.secret = "another"
    with pytest.raises(ProviderUnavailable, match=r"AADSTS7000215.*AZURE_CLIENT_SECRET"):
        await engine(fake).execute(req("print(1)"))
    assert fake.runs == []


async def test_easy_auth_refusing_the_token_is_unavailable_with_the_fix() -> None:
    fake = FakeAzure()
    with pytest.raises(ProviderUnavailable, match=r"HTTP 401.*Easy Auth"):
        await engine(fake, scope="api://another-app/.default").execute(req("print(1)"))
    assert len(fake.runs) == 1


async def test_the_handlers_shared_token_instead_of_entra() -> None:
    fake = FakeAzure()
    fake.handler_token = "shared"
    result = await engine(fake, scope=None, handler_token="shared").execute(req("print(1)"))
    assert result.status == Status.OK and fake.runs[0].headers["Authorization"] == "Bearer shared"
    with pytest.raises(ProviderUnavailable, match="refused the caller's token"):
        await engine(fake, scope=None, handler_token="wrong").execute(req("print(1)"))
    assert all("oauth2" not in s.url for s in fake.sent)


async def test_capacity_is_at_capacity_with_retry_after() -> None:
    fake = FakeAzure(lambda call: Reply(429, b"Too Many Requests", {"Retry-After": "4"}))
    with pytest.raises(AtCapacity) as e:
        await engine(fake).execute(req("print(1)"))
    assert e.value.retry_after_s == 4 and len(fake.runs) == 1


@pytest.mark.parametrize("failure", ["500", "502", "504", SENT_LOST])
async def test_failing_after_sending_is_unknown_and_sent_once(failure: str) -> None:
    """azure-core's default retry policy would resend each of these; here the call arrives once."""
    fake = FakeAzure(lambda call: failure if failure == SENT_LOST else Reply(int(failure), b"upstream error"))
    with pytest.raises(OutcomeUnknown, match="may have run"):
        await engine(fake).execute(req("print(1)"))
    assert len(fake.runs) == 1


async def test_azure_cores_default_retry_policy_would_have_resent_it() -> None:
    """The control for the test above: the same fake under azure-core's default policies."""
    from azure.core import AsyncPipelineClient
    from azure.core.pipeline.policies import AsyncRetryPolicy
    from azure.core.rest import HttpRequest

    fake = FakeAzure()
    fake.handler_token = "t"
    fake.behave = lambda call: Reply(503, b"busy")
    client = AsyncPipelineClient(APP, transport=fake, policies=[AsyncRetryPolicy(retry_backoff_factor=0)])
    call = HttpRequest("POST", f"{APP}/run", content=b"{}", headers={"Authorization": "Bearer t"})
    resp = await client.send_request(call)
    assert resp.status_code == 503 and len(fake.runs) == 4


async def test_not_sent_is_unavailable() -> None:
    fake = FakeAzure(lambda call: NOT_SENT)
    with pytest.raises(ProviderUnavailable, match="cannot be reached"):
        await engine(fake).execute(req("print(1)"))


async def test_a_handler_refusal_falls_over_but_code_run_never_does() -> None:
    fake = FakeAzure(lambda call: Reply.json(refusal("capacity", "is busy", False, 2), 503))
    eng = engine(fake, chain=("mock",))
    result = await eng.execute(req("print(1)"))
    assert result.provider == "mock" and result.provider_attempts[0].phase == "start"
    fake.behave = lambda call: Reply.json(refusal("internal", "lost the program", True), 500)
    with pytest.raises(OutcomeUnknown, match="lost the program"):
        await eng.execute(req("print(1)"))
    assert len(fake.runs) == 2


async def test_runs_longer_than_the_ingress_allows_are_refused_before_sending() -> None:
    fake = FakeAzure()
    with pytest.raises(RequestError, match="request timeout of 240 s"):
        await engine(fake).execute(req("print(1)", Limits(network=True, wall_time_s=300)))
    assert fake.sent == []
    assert (await engine(fake, request_timeout_s=1800).execute(req("print(1)", NET))).status == Status.OK


def test_settings_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("EXECBOX_CONTAINER_APP_URL", "EXECBOX_CONTAINER_APP_SCOPE", "EXECBOX_HANDLER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ProviderUnavailable, match="EXECBOX_CONTAINER_APP_URL"):
        ProviderRegistry(default="azure", configs={"azure": parse_instance("azure", "azure", {})}).get("azure")
    with pytest.raises(ProviderUnavailable, match="no way to authenticate"):
        ProviderRegistry(default="azure", configs={"azure": parse_instance("azure", "azure", {"url": APP})}).get(
            "azure")


LIVE = os.environ.get("EXECBOX_LIVE_CONTAINER_APP_URL")


@pytest.mark.skipif(not LIVE, reason="set EXECBOX_LIVE_CONTAINER_APP_URL (its scope and AZURE_*) to run live")
async def test_live_container_app() -> None:
    eng = functions_fake.engine("azure", {"url": LIVE})
    hello = await eng.execute(req("print('hello')"))
    assert (hello.status, hello.stdout) == (Status.OK, "hello\n")
    failed = await eng.execute(req("raise SystemExit(3)"))
    assert (failed.status, failed.exit_code) == (Status.RUNTIME_ERROR, 3)
    slow = await eng.execute(req("import time; time.sleep(5)", Limits(network=True, wall_time_s=1)))
    assert slow.status == Status.TIMEOUT
