"""The modal provider, driven through execbox with the real ``modal`` SDK pointed at a loopback fake of Modal's
gRPC API (tests/cloud/modal_fake.py), plus opt-in live runs against modal.com (MODAL_TOKEN_ID/SECRET)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpclib import GRPCError, Status
from modal_proto import api_pb2
from tests.cloud.modal_fake import ModalFake

from execbox.engine import Engine
from execbox.errors import AtCapacity, NotFoundError, OutcomeUnknown, ProviderUnavailable
from execbox.models import ExecutionRequest, Limits
from execbox.providers.base import InstanceSpec
from execbox.providers.cloud import modal as modal_provider
from execbox.providers.cloud.modal_settings import Settings
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.sandbox import SandboxManager

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the fake runs the sandboxes' commands on this host")
LIVE = bool(os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"))


@pytest.fixture
async def fake() -> AsyncIterator[ModalFake]:
    f = ModalFake()
    await f.start()
    yield f
    await f.stop()


def settings(fake: ModalFake, tmp_path: Path, **over: Any) -> dict[str, Any]:
    return {"server_url": fake.url, "token_id": fake.token[0], "token_secret": fake.token[1],
            "workdir": "/sandbox/work", "extra_time_s": 5, **over}  # the fake's per-sandbox root


@pytest.fixture
async def engine(fake: ModalFake, tmp_path: Path) -> AsyncIterator[Engine]:
    registry = ProviderRegistry(default="modal", configs={"modal": parse_instance("modal", "modal",
                                                                                   settings(fake, tmp_path))})
    yield Engine(providers=registry)
    await registry.aclose()
    assert fake.unknown == [], f"the SDK called RPCs the fake lacks: {fake.unknown}"


async def test_hello_world_with_stdin_and_files(engine: Engine, fake: ModalFake) -> None:
    code = "import sys, helper; print(helper.GREETING, sys.stdin.read().strip())"
    result = await engine.execute(ExecutionRequest(language="python", code=code, stdin="world",
                                                   files=[{"name": "helper.py", "content": "GREETING = 'hello'"}]))
    assert (result.status, result.stdout, result.provider) == ("ok", "hello world\n", "modal")
    assert len(fake.sandboxes) == 1 and fake.live == []  # terminated at the run's end
    assert len(fake.user_execs()) == 1


async def test_main_returns_its_value_through_a_file_read_back(engine: Engine) -> None:
    result = await engine.execute(ExecutionRequest(language="python", code="def main(x):\n    return {'twice': 2 * x}",
                                                   arguments={"x": 21}))
    assert (result.status, result.return_value) == ("ok", {"twice": 42})


async def test_the_create_request_carries_network_off_memory_cpu_and_lifetime(engine: Engine,
                                                                              fake: ModalFake) -> None:
    assert (await engine.execute(ExecutionRequest(language="python", code="print(1)"))).ok
    (sandbox,) = fake.sandboxes.values()
    definition = sandbox.request.definition
    assert definition.network_access.network_access_type == api_pb2.NetworkAccess.NetworkAccessType.BLOCKED
    assert (definition.resources.memory_mb, definition.resources.memory_mb_max) == (1024, 1024)  # the setting
    assert (definition.resources.milli_cpu, definition.resources.milli_cpu_max) == (1000, 1000)
    assert definition.timeout_secs == 3600 and definition.image_id == "im-fake"
    assert sandbox.request.app_id == "ap-execbox"


async def test_a_sandbox_with_the_network_asks_for_it_open(fake: ModalFake, tmp_path: Path) -> None:
    service = modal_provider.ModalService(Settings(**settings(fake, tmp_path)))
    box = await service.create(InstanceSpec(disk_mb=256, network=True))
    try:
        (sandbox,) = fake.sandboxes.values()
        access = sandbox.request.definition.network_access
        assert access.network_access_type == api_pb2.NetworkAccess.NetworkAccessType.OPEN
    finally:
        await box.kill()
        await service.close()
    assert fake.live == []


async def test_a_failing_program_is_a_runtime_error_with_its_exit_code(engine: Engine) -> None:
    result = await engine.execute(ExecutionRequest(language="python", code="import sys; print('bye'); sys.exit(3)"))
    assert (result.status, result.exit_code, result.stdout) == ("runtime_error", 3, "bye\n")


async def test_a_program_past_its_wall_time_is_a_timeout(engine: Engine) -> None:
    result = await engine.execute(ExecutionRequest(language="python", code="import time; time.sleep(20)",
                                                   limits=Limits(wall_time_s=1, cpu_time_s=1)))
    assert result.status == "timeout"
    assert result.wall_time_s < 10


@pytest.mark.parametrize("kill_offset_s", [2.0, -0.4], ids=["sdk-deadline-first", "modal-kill-first"])
async def test_modal_ending_the_exec_at_its_timeout_is_a_timeout_error(fake: ModalFake, tmp_path: Path,
                                                                       kill_offset_s: float) -> None:
    fake.kill_offset_s = kill_offset_s  # the SDK's wait answers -1, or the kill's signal (after 0.6 s > 0.5 s)
    service = modal_provider.ModalService(Settings(**settings(fake, tmp_path)))
    box = await service.create(InstanceSpec(disk_mb=256))
    try:
        with pytest.raises(TimeoutError):
            await box.run("sleep 30", 0.5)
        assert fake.user_execs()[-1].timeout_secs == 1  # whole seconds, rounded up
    finally:
        await box.kill()
        await service.close()


async def test_refused_credentials_are_provider_unavailable_with_the_fix(fake: ModalFake, tmp_path: Path) -> None:
    registry = ProviderRegistry(default="modal", configs={"modal": parse_instance(
        "modal", "modal", settings(fake, tmp_path, token_secret="as-wrong"))})
    try:
        with pytest.raises(ProviderUnavailable, match="MODAL_TOKEN_SECRET"):
            await Engine(providers=registry).execute(ExecutionRequest(language="python", code="print(1)"))
    finally:
        await registry.aclose()
    assert fake.sandboxes == {} and fake.exec_starts == []


def test_missing_credentials_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ProviderUnavailable, match="modal token new"):
        modal_provider.create(Settings(token_id=None, token_secret=None))


async def test_no_capacity_is_at_capacity(engine: Engine, fake: ModalFake) -> None:
    fake.fail["SandboxCreateV2"] = GRPCError(Status.RESOURCE_EXHAUSTED, "workspace sandbox limit reached")
    with pytest.raises(AtCapacity, match="sandbox limit reached") as caught:
        await engine.execute(ExecutionRequest(language="python", code="print(1)"))
    assert caught.value.retry_after_s is None  # the service gave none
    assert fake.exec_starts == []


async def test_a_throttle_given_back_carries_its_retry_after(engine: Engine, fake: ModalFake,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODAL_MAX_THROTTLE_WAIT", "0")  # the SDK waits throttles out itself unless told not to
    fake.fail["SandboxCreateV2"] = GRPCError(Status.RESOURCE_EXHAUSTED, "too many sandboxes being created",
                                             [api_pb2.RPCRetryPolicy(retry_after_secs=7)])
    with pytest.raises(AtCapacity) as caught:
        await engine.execute(ExecutionRequest(language="python", code="print(1)"))
    assert caught.value.retry_after_s == 7


async def test_concurrent_runs_share_the_client_and_each_get_a_sandbox(engine: Engine, fake: ModalFake) -> None:
    results = await asyncio.gather(*(engine.execute(ExecutionRequest(language="python", code=f"print({i})"))
                                     for i in range(4)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert len(fake.sandboxes) == 4 and fake.live == [] and fake.calls["AppGetOrCreate"] == 1
    assert len({r.exec_id for r in fake.user_execs()}) == 4


async def test_the_service_failing_after_the_exec_was_sent_is_outcome_unknown_and_never_resent(
        engine: Engine, fake: ModalFake, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    fake.fail_program["TaskExecStart"] = [GRPCError(Status.UNAVAILABLE, "worker connection reset")]
    code = f"open({str(marker)!r}, 'a').write('ran\\n')"
    with pytest.raises(OutcomeUnknown, match="does not resend"):
        await engine.execute(ExecutionRequest(language="python", code=code))
    # received once; "does not resend" above is the guard's refusal: the SDK did try to send it again
    assert len(fake.user_execs()) == 1
    assert marker.read_text() == "ran\n"  # it did run, once
    assert fake.live == []


async def test_without_the_guard_the_sdk_resends_the_exec_start(fake: ModalFake, tmp_path: Path) -> None:
    """Why the guard exists: the SDK's own Sandbox.exec sends the same exec start again after a lost answer
    (if this ever fails, the SDK stopped retrying it; the guard is then idle, not wrong)."""
    import modal
    client = modal.Client(fake.url, api_pb2.CLIENT_TYPE_CLIENT, fake.token)
    async with client:
        app = await modal.App.lookup.aio("execbox", create_if_missing=True, client=client)
        sb = await modal.Sandbox.create.aio(app=app, client=client, image=modal.Image.from_registry("python:3"))
        fake.fail_program["TaskExecStart"] = [GRPCError(Status.UNAVAILABLE, "worker connection reset")]
        process = await sb.exec.aio("/bin/sh", "-c", f"echo ran >> {tmp_path / 'ran'}")
        assert await process.wait.aio() == 0  # the resend "succeeded"
        await sb.terminate.aio()
    assert [r.exec_id for r in fake.user_execs()] == [fake.user_execs()[0].exec_id] * 2  # one exec, sent twice
    assert (tmp_path / "ran").read_text() == "ran\nran\n"  # and run twice (a server without deduplication)


async def test_failing_after_the_start_is_outcome_unknown(engine: Engine, fake: ModalFake) -> None:
    fake.fail_program["TaskExecWait"] = [GRPCError(Status.NOT_FOUND, "task gone")]
    with pytest.raises(OutcomeUnknown):
        await engine.execute(ExecutionRequest(language="python", code="print(1)"))
    assert len(fake.user_execs()) == 1


async def test_files_in_and_out_of_a_persistent_sandbox(engine: Engine, fake: ModalFake) -> None:
    manager = SandboxManager(engine)
    sb = await manager.create("python", provider="modal")
    try:
        await sb.files.write("data/in.txt", "forty-two")
        result = await sb.exec(["sh", "-c", "tr a-z A-Z < data/in.txt > out.txt; echo done"])
        assert (result.status, result.stdout) == ("ok", "done\n")
        assert await sb.files.read("out.txt") == b"FORTY-TWO"
        assert {f.name: f.kind for f in await sb.files.list(".")} == {"data": "dir", "out.txt": "file"}
        with pytest.raises(NotFoundError):
            await sb.files.read("missing.txt")
        assert await sb.files.remove("out.txt") is True
        assert await sb.files.remove("out.txt") is False
        assert [f.name for f in await sb.files.list(".")] == ["data"]
        ran = await sb.run("print(open('data/in.txt').read().upper())")
        assert ran.stdout == "FORTY-TWO\n"
        (sandbox,) = fake.sandboxes.values()
        # a persistent sandbox's own memory cap (the policy's default), not the one-shot setting
        assert sandbox.request.definition.resources.memory_mb_max == sb.limits.memory_mb != 1024
    finally:
        await sb.destroy()
        await manager.aclose()
    assert fake.live == []


# -- live: the same against modal.com, when its credentials are in the environment -------------------------

@pytest.fixture
async def live_engine() -> AsyncIterator[Engine]:
    registry = ProviderRegistry(default="modal", configs={"modal": parse_instance("modal", "modal", {})})
    yield Engine(providers=registry)
    await registry.aclose()


@pytest.mark.skipif(not LIVE, reason="needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
async def test_live_hello_failure_and_timeout(live_engine: Engine) -> None:
    ok = await live_engine.execute(ExecutionRequest(language="python", code="print(input())", stdin="hi"))
    assert (ok.status, ok.stdout) == ("ok", "hi\n")
    bad = await live_engine.execute(ExecutionRequest(language="python", code="raise SystemExit(4)"))
    assert (bad.status, bad.exit_code) == ("runtime_error", 4)
    slow = await live_engine.execute(ExecutionRequest(language="python", code="import time; time.sleep(30)",
                                                      limits=Limits(wall_time_s=2, cpu_time_s=2)))
    assert slow.status == "timeout"


@pytest.mark.skipif(not LIVE, reason="needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
async def test_live_network_is_off(live_engine: Engine) -> None:
    code = ("import socket\ntry:\n socket.create_connection(('1.1.1.1', 53), 3); print('open')\n"
            "except OSError: print('off')")
    result = await live_engine.execute(ExecutionRequest(language="python", code=code))
    assert result.stdout == "off\n"


@pytest.mark.skipif(not LIVE, reason="needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
async def test_live_refused_credentials() -> None:
    provider = modal_provider.create(Settings(token_id="ak-execbox-wrong", token_secret="as-execbox-wrong"))
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.start(InstanceSpec(disk_mb=256))
    finally:
        await provider.aclose()


@pytest.mark.skipif(not LIVE, reason="needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
async def test_live_files_in_a_persistent_sandbox(live_engine: Engine) -> None:
    manager = SandboxManager(live_engine)
    sb = await manager.create("python", provider="modal")
    try:
        await sb.files.write("in.txt", "abc")
        assert (await sb.exec(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"])).ok
        assert await sb.files.read("out.txt") == b"ABC"
        assert [f.name for f in await sb.files.list(".")] == ["in.txt", "out.txt"]
    finally:
        await sb.destroy()
        await manager.aclose()
