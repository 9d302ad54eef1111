"""The aliyun kind: Alibaba's FC Agent Sandbox through its E2B-compatible endpoint, with the real e2b SDK
against the loopback E2B fake (tests/cloud/e2b_fake.py) standing for the region's endpoint. The live test
runs against Alibaba Cloud when AGENTRUN_SANDBOX_API_KEY and AGENTRUN_REGION are set."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.cloud.e2b_fake import API_KEY, E2bFake

from execbox.engine import Engine
from execbox.errors import OutcomeUnknown, ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, Limits, Policy, Status
from execbox.providers.cloud.aliyun import create
from execbox.providers.cloud.aliyun_settings import Settings
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[E2bFake]:
    async with E2bFake(tmp_path) as f:
        yield f


def engine(fake: E2bFake, **extra: Any) -> Engine:
    settings = {"api_key": API_KEY, "region": "cn-hangzhou", "api_url": fake.url, "sandbox_url": fake.url,
                "workdir": str(fake.root / "work"), "egress": "none", **extra}
    reg = ProviderRegistry(default="aliyun", configs={"aliyun": parse_instance("aliyun", "aliyun", settings)})
    return Engine(providers=reg, router=Router(reg, [], RoutingSettings(retries=0)))


async def test_a_run_a_failure_and_a_timeout_on_the_regions_endpoint(fake: E2bFake) -> None:
    e = engine(fake, template="code-interpreter-v1")
    ok = await e.execute(ExecutionRequest(language="python", code="print(input())", stdin="ali\n"))
    assert (ok.status, ok.stdout, ok.provider) == (Status.OK, "ali\n", "aliyun")
    assert fake.creates[0]["templateID"] == "code-interpreter-v1" and fake.creates[0]["allow_internet_access"] is False
    bad = await e.execute(ExecutionRequest(language="python", code="import sys; sys.exit(4)"))
    assert (bad.status, bad.exit_code) == (Status.RUNTIME_ERROR, 4)
    slow = await e.execute(ExecutionRequest(language="python", code="import time; time.sleep(30)",
                                            limits=Limits(wall_time_s=1)))
    assert slow.status is Status.TIMEOUT
    assert fake.live() == [] and len(fake.kills) == 3


async def test_refused_key_and_lost_answer(fake: E2bFake) -> None:
    fake.mode = "unauthorized"
    with pytest.raises(ProviderUnavailable, match="refused the API key"):
        await engine(fake).execute(ExecutionRequest(language="python", code="print(1)"))
    fake.mode = "drop_exec"
    with pytest.raises(OutcomeUnknown):
        await engine(fake).execute(ExecutionRequest(language="python", code="print(1)"))
    assert len(fake.starts) == 1


def test_the_regions_endpoint_and_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AGENTRUN_SANDBOX_API_KEY", "AGENTRUN_REGION", "ALIBABA_CLOUD_REGION_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ProviderUnavailable, match=r"AGENTRUN_SANDBOX_API_KEY.*AGENTRUN_REGION"):
        create(Settings())
    monkeypatch.setenv("AGENTRUN_SANDBOX_API_KEY", "e2b_x")
    monkeypatch.setenv("AGENTRUN_REGION", "us-east-1")
    provider: Any = create(Settings())
    assert provider.settings.api_url == "https://api.us-east-1.e2b.fc.aliyuncs.com"
    assert provider.settings.domain == "us-east-1.e2b.fc.aliyuncs.com"
    assert "aliyun" in ProviderRegistry().names()  # detected from the environment
    monkeypatch.setenv("AGENTRUN_REGION", "mars-1")
    with pytest.raises(ValueError, match="region"):
        Settings()
    with pytest.raises(RequestError, match="region"):
        parse_instance("a", "aliyun", {"region": "mars-1"})


def test_the_network_is_the_deployments() -> None:
    request = ExecutionRequest(language="python", code="print(1)")
    reg = ProviderRegistry(configs={"open": parse_instance("open", "aliyun", {"region": "cn-beijing"}),
                                    "sealed": parse_instance("sealed", "aliyun", {"egress": "none"})})
    assert "cut programs off" in (reg.capabilities("open").unfit(Policy().apply(None), (), request) or "")
    assert reg.capabilities("sealed").unfit(Policy().apply(None), (), request) is None


@pytest.mark.skipif(not (os.environ.get("AGENTRUN_SANDBOX_API_KEY") and os.environ.get("AGENTRUN_REGION")),
                    reason="needs AGENTRUN_SANDBOX_API_KEY and AGENTRUN_REGION (live Alibaba Cloud)")
async def test_live_hello_and_failure() -> None:
    reg = ProviderRegistry(default="aliyun", configs={"aliyun": parse_instance("aliyun", "aliyun", {})})
    e = Engine(providers=reg, chain=[], policy=Policy(maxima=Policy().maxima.model_copy(update={"network": True})))
    ok = await e.execute(ExecutionRequest(language="python", code="print(1)", limits=Limits(network=True)))
    assert ok.status is Status.OK and ok.stdout == "1\n"
    bad = await e.execute(ExecutionRequest(language="python", code="import sys; sys.exit(3)",
                                           limits=Limits(network=True)))
    assert (bad.status, bad.exit_code) == (Status.RUNTIME_ERROR, 3)
