"""The daytona provider driven for real: execbox's engine -> the real ``daytona`` SDK (AsyncDaytona) -> a
loopback fake of Daytona's API (tests/cloud/daytona_fake.py) whose sandboxes run commands in /bin/sh.
Opt-in live tests at the end run the same cases against Daytona itself when DAYTONA_API_KEY is set."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.cloud.daytona_fake import API_KEY, DaytonaFake

from execbox.engine import Engine
from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, SandboxError
from execbox.models import ExecutionRequest, Limits, Status
from execbox.providers.base import InstanceSpec
from execbox.providers.cloud import daytona
from execbox.providers.cloud.daytona_settings import Settings
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.sandbox import SandboxManager

pytestmark = pytest.mark.timeout(60)
LIVE = bool(os.environ.get("DAYTONA_API_KEY"))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # the SDK's aiohttp session trusts the environment's proxies: loopback must not go through one
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
async def fake() -> AsyncIterator[DaytonaFake]:
    async with DaytonaFake() as f:
        yield f


def engine_for(fake: DaytonaFake, **settings: Any) -> Engine:
    config = {"api_key": API_KEY, "api_url": fake.api_url, "extra_time_s": 5, **settings}
    return Engine(providers=ProviderRegistry(default="daytona",
                                             configs={"daytona": parse_instance("daytona", "daytona", config)}))


async def run(engine: Engine, code: str, **request: Any) -> Any:
    try:
        return await engine.execute(ExecutionRequest(language="python", code=code, **request))
    finally:
        await engine.providers.aclose()


async def test_hello_world_with_stdin_and_env(fake: DaytonaFake) -> None:
    code = "import os, sys\nprint('hello', sys.stdin.read().strip(), os.environ['WHO'])\nprint('err', file=sys.stderr)"
    result = await run(engine_for(fake), code, stdin="from stdin", env={"WHO": "daytona"})
    assert result.status is Status.OK, result
    assert result.stdout == "hello from stdin daytona\n"
    assert result.stderr == "err\n"  # stdout and stderr come back apart although the toolbox merges them
    assert len(fake.creates) == 1 and len(fake.execs) == 1
    assert fake.deleted == list(fake.sandboxes)  # the one-shot's sandbox is deleted at its end
    api = [r for r in fake.requests if "socket.io" not in r]  # the SDK's event socket: refused here, it polls
    assert api == ["POST /api/sandbox", "GET /toolbox/{id}/work-dir", "POST /toolbox/{id}/files/bulk-upload",
                   "POST /toolbox/{id}/files/bulk-upload", "POST /toolbox/{id}/process/execute",
                   "DELETE /api/sandbox/{id}"]  # the program's files, then its stdin; one exec


async def test_network_off_is_carried_in_the_create_request(fake: DaytonaFake) -> None:
    await run(engine_for(fake, snapshot="execbox-python", auto_stop_minutes=5), "print(1)")
    body = fake.creates[0]
    assert body["networkBlockAll"] is True
    assert body["snapshot"] == "execbox-python" and body["autoStopInterval"] == 5
    assert body["autoDeleteInterval"] == 0 and body["ttlMinutes"] == 60


async def test_network_on_and_an_image_with_resources(fake: DaytonaFake) -> None:
    settings = Settings.model_validate({"api_key": API_KEY, "api_url": fake.api_url, "image": "python:3.12-slim",
                                        "cpu": 2, "disk_gib": 5, "target": "eu", "sandbox_timeout_s": 600})
    service = daytona.DaytonaService(settings)
    box = await service.create(InstanceSpec(disk_mb=100, network=True, persistent=True, memory_mb=1500))
    try:
        body = fake.creates[0]
        assert body["networkBlockAll"] is False and body["target"] == "eu" and body["ttlMinutes"] == 10
        assert (body["cpu"], body["memory"], body["disk"]) == (2, 2, 5)  # memory: the persistent sandbox's, in GiB
        assert "FROM python:3.12-slim" in body["buildInfo"]["dockerfileContent"]
        assert box.workdir == fake.sandboxes[next(iter(fake.sandboxes))].root
    finally:
        await box.kill()
        await box.kill()  # idempotent
        await service.aclose()
    assert len(fake.deleted) == 1


def test_snapshot_and_image_are_exclusive() -> None:
    with pytest.raises(ValueError, match="snapshot or image"):
        Settings.model_validate({"api_key": "k", "snapshot": "s", "image": "i"})


async def test_a_sandbox_that_does_not_start_in_time_is_deleted(fake: DaytonaFake) -> None:
    fake.start_state = "starting"
    with pytest.raises(SandboxError, match=r"(?i)time"):
        await run(engine_for(fake, create_timeout_s=1), "print(1)")
    assert fake.deleted == list(fake.sandboxes) and len(fake.deleted) == 1
    assert fake.execs == []


async def test_unreachable_api_is_provider_unavailable(fake: DaytonaFake) -> None:
    engine = engine_for(fake, api_url="http://127.0.0.1:9/api")  # the discard port: nothing listens
    with pytest.raises(ProviderUnavailable, match="cannot be reached"):
        await run(engine, "print(1)")


async def test_failing_program_is_a_runtime_error_with_its_exit_code(fake: DaytonaFake) -> None:
    result = await run(engine_for(fake), "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)")
    assert result.status is Status.RUNTIME_ERROR
    assert result.exit_code == 3 and result.stderr == "bye\n"


async def test_timeout(fake: DaytonaFake) -> None:
    result = await run(engine_for(fake), "import time\ntime.sleep(30)", limits=Limits(wall_time_s=1))
    assert result.status is Status.TIMEOUT, result
    assert result.wall_time_s < 10


async def test_the_daemons_own_timeout_is_a_timeout_error(fake: DaytonaFake) -> None:
    service = daytona.DaytonaService(Settings.model_validate({"api_key": API_KEY, "api_url": fake.api_url}))
    box = await service.create(InstanceSpec(disk_mb=100))
    try:
        with pytest.raises(TimeoutError):
            await box.run("sleep 30", timeout_s=1)  # the daemon answers 408 PROCESS_EXECUTION_TIMEOUT
        assert fake.execs[-1]["timeout"] == 1
    finally:
        await box.kill()
        await service.aclose()


async def test_bad_key_is_provider_unavailable(fake: DaytonaFake) -> None:
    fake.key = "another-key"
    with pytest.raises(ProviderUnavailable, match="refused the API key"):
        await run(engine_for(fake), "print(1)")
    assert fake.execs == []


def test_missing_key_says_how_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    with pytest.raises(ProviderUnavailable, match="DAYTONA_API_KEY"):
        daytona.create(None)


async def test_rate_limit_is_at_capacity_with_its_retry_after(fake: DaytonaFake) -> None:
    fake.refuse_create = (429, {"statusCode": 429, "message": "ThrottlerException: Too Many Requests"},
                          {"Retry-After": "17"})
    with pytest.raises(AtCapacity) as caught:
        await run(engine_for(fake), "print(1)")
    assert caught.value.retry_after_s == 17
    assert fake.execs == []


async def test_quota_is_at_capacity(fake: DaytonaFake) -> None:
    fake.refuse_create = (403, {"statusCode": 403, "message": "Total CPU limit exceeded. Maximum allowed: 10.",
                                "error": "Forbidden"}, {})
    with pytest.raises(AtCapacity, match="CPU limit exceeded") as caught:
        await run(engine_for(fake), "print(1)")
    assert caught.value.retry_after_s is None


async def test_connection_lost_after_the_exec_was_sent_is_outcome_unknown_and_never_resent(
        fake: DaytonaFake) -> None:
    fake.drop_exec = True
    with pytest.raises(OutcomeUnknown):
        await run(engine_for(fake), "print('once')")
    assert len(fake.execs) == 1  # the SDK's session resends POSTs only when the connect itself failed
    assert fake.deleted == list(fake.sandboxes)


async def test_files_in_and_out_of_a_persistent_sandbox(fake: DaytonaFake) -> None:
    engine = engine_for(fake)
    manager = SandboxManager(engine)
    try:
        sb = await manager.create("python", provider="daytona")
        await sb.files.write("data/in.txt", "forty-one")
        await sb.files.write("blob.bin", bytes(range(256)))
        result = await sb.run("n = open('data/in.txt').read()\nopen('out.txt', 'w').write(n + ' plus one')\n"
                              "print(len(open('blob.bin', 'rb').read()))")
        assert result.status is Status.OK and result.stdout == "256\n", result
        assert await sb.files.read("out.txt") == b"forty-one plus one"
        assert await sb.files.read("blob.bin") == bytes(range(256))
        assert await sb.files.read("blob.bin", max_bytes=10) == bytes(range(10))
        names = {f.name: f for f in await sb.files.list()}
        assert {"data", "out.txt", "blob.bin"} <= set(names) and names["blob.bin"].size_bytes == 256
        assert await sb.files.remove("out.txt") is True
        assert await sb.files.remove("out.txt") is False
        with pytest.raises(Exception, match="no file"):
            await sb.files.read("out.txt")
        await sb.destroy()
        assert fake.deleted == [next(iter(fake.sandboxes))]
        assert len(fake.creates) == 1
    finally:
        await engine.providers.aclose()


# --- opt-in: the same against Daytona itself (never run here: no credentials, no internet) -----------------

live = pytest.mark.skipif(not LIVE, reason="set DAYTONA_API_KEY (and DAYTONA_API_URL/TARGET) to run against Daytona")


def live_engine() -> Engine:
    return Engine(providers=ProviderRegistry(default="daytona",
                                             configs={"daytona": parse_instance("daytona", "daytona", {})}))


@live
async def test_live_success_failure_and_timeout() -> None:
    engine = live_engine()
    try:
        ok = await engine.execute(ExecutionRequest(language="python", code="print(input())", stdin="hi"))
        assert ok.status is Status.OK and ok.stdout == "hi\n"
        bad = await engine.execute(ExecutionRequest(language="python", code="raise SystemExit(3)"))
        assert bad.status is Status.RUNTIME_ERROR and bad.exit_code == 3
        slow = await engine.execute(ExecutionRequest(language="python", code="import time\ntime.sleep(30)",
                                                     limits=Limits(wall_time_s=2)))
        assert slow.status is Status.TIMEOUT
    finally:
        await engine.providers.aclose()


@live
async def test_live_network_off_and_files() -> None:
    engine = live_engine()
    manager = SandboxManager(engine)
    try:
        sb = await manager.create("python", provider="daytona")
        await sb.files.write("in.txt", "x")
        net = await sb.run("import socket\ntry:\n socket.create_connection(('1.1.1.1', 80), 3); print('on')\n"
                           "except OSError:\n print('off')\nprint(open('in.txt').read())")
        assert net.stdout == "off\nx\n"
        await sb.destroy()
    finally:
        await engine.providers.aclose()


@live
async def test_live_bad_key() -> None:
    engine = Engine(providers=ProviderRegistry(default="daytona", configs={"daytona": parse_instance(
        "daytona", "daytona", {"api_key": "not-a-key"})}))
    with pytest.raises(ProviderUnavailable):
        await run(engine, "print(1)")
