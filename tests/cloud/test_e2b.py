"""The E2B provider: execbox driven for real, the real ``e2b`` SDK pointed (api_url, sandbox_url) at a
loopback E2B (tests/cloud/e2b_fake.py) whose sandboxes run their commands for real on this host. The live
cases at the end run against e2b.dev when E2B_API_KEY is set."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.cloud.e2b_fake import API_KEY, E2bFake

from execbox.engine import Engine
from execbox.errors import CapacityError, OutcomeUnknown, ProviderUnavailable, SandboxError
from execbox.models import ExecutionRequest, Limits, Status
from execbox.providers.base import InstanceSpec
from execbox.providers.cloud.e2b import E2bService, create
from execbox.providers.cloud.e2b_settings import Settings
from execbox.providers.kinds import kinds
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings
from execbox.sandbox import SandboxManager


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[E2bFake]:
    async with E2bFake(tmp_path) as f:
        yield f


def settings(fake: E2bFake, **extra: Any) -> dict[str, Any]:
    return {"api_key": API_KEY, "api_url": fake.url, "sandbox_url": fake.url, "workdir": str(fake.root / "work"),
            **extra}


def engine(fake: E2bFake, **extra: Any) -> Engine:
    reg = ProviderRegistry(default="e2b", configs={"e2b": parse_instance("e2b", "e2b", settings(fake, **extra))})
    return Engine(providers=reg, router=Router(reg, [], RoutingSettings(retries=0)))  # execbox's own retry off


def py(code: str, **kw: Any) -> ExecutionRequest:
    return ExecutionRequest(language="python", code=code, **kw)


async def test_a_program_runs_once_in_a_fresh_sandbox_without_internet_killed_after(fake: E2bFake) -> None:
    r = await engine(fake).execute(py("print('hello from e2b')"))
    assert r.status is Status.OK and r.stdout == "hello from e2b\n" and r.provider == "e2b"
    [body] = fake.creates
    assert body["templateID"] == "base" and body["allow_internet_access"] is False and body["timeout"] == 3600
    assert len(fake.starts) == 1 and fake.live() == [] and len(fake.kills) == 1  # killed when the run ended
    assert fake.starts[0]["process"]["cmd"] == "/bin/bash"  # the SDK's wrapper around execbox's line


async def test_e2b_debug_in_the_environment_does_not_divert_the_sdk(fake: E2bFake,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_DEBUG", "true")  # the SDK would skip the API and talk to localhost:49983
    r = await engine(fake).execute(py("print(1)"))
    assert r.stdout == "1\n" and len(fake.creates) == 1 and fake.live() == []


async def test_stdin_env_and_files_reach_the_program(fake: E2bFake) -> None:
    code = "import os\nprint(input().upper(), os.environ['GREETING'], open('data/x.txt').read())"
    r = await engine(fake).execute(py(code, stdin="quiet\n", env={"GREETING": "hi"},
                                      files=[{"name": "data/x.txt", "content": "beside"}]))
    assert r.status is Status.OK, r
    assert r.stdout == "QUIET hi beside\n"


async def test_a_failing_program_is_a_runtime_error_with_its_exit_code(fake: E2bFake) -> None:
    r = await engine(fake).execute(py("import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)"))
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 3 and "bad" in r.stderr


async def test_the_file_size_limit_is_the_one_asked_under_envds_bash(fake: E2bFake) -> None:
    # envd runs the line with bash, whose `ulimit -f` counts KiB (sh's: 512-byte blocks): 1.5 MiB must not pass
    code = "open('big', 'wb').write(b'x' * (3 * 512 * 1024))"
    r = await engine(fake).execute(py(code, limits=Limits(file_size_mb=1)))
    assert r.status is Status.RUNTIME_ERROR and "File too large" in r.stderr, r  # python ignores SIGXFSZ


async def test_a_program_killed_by_a_signal_reports_it(fake: E2bFake) -> None:
    r = await engine(fake).execute(py("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    assert r.exit_code is None and r.signal == 9, r  # envd's "-1, signal: killed" is the signal again


async def test_a_program_past_its_wall_time_is_a_timeout(fake: E2bFake) -> None:
    r = await engine(fake).execute(py("import time\nprint('started', flush=True)\ntime.sleep(30)",
                                      limits=Limits(wall_time_s=1)))
    assert r.status is Status.TIMEOUT and r.wall_time_s < 10 and fake.live() == []


async def test_a_refused_api_key_is_provider_unavailable_with_the_fix(fake: E2bFake) -> None:
    fake.mode = "unauthorized"
    with pytest.raises(ProviderUnavailable, match=r"refused the API key.*E2B_API_KEY"):
        await engine(fake).execute(py("print(1)"))
    assert fake.starts == []


def test_no_api_key_is_provider_unavailable_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(ProviderUnavailable, match="no API key: set E2B_API_KEY"):
        create(None)
    assert kinds()["e2b"].detected() is None
    monkeypatch.setenv("E2B_API_KEY", "e2b_from_env")
    assert kinds()["e2b"].detected() == ("E2B_API_KEY",)
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == "e2b_from_env"


@pytest.mark.parametrize("mode", ["rate_limited", "busy"])
async def test_a_full_service_is_a_capacity_error_asked_once(fake: E2bFake, mode: str) -> None:
    fake.mode = mode
    with pytest.raises(CapacityError, match="no room") as ei:
        await engine(fake).execute(py("print(1)"))
    # The SDK drops the Retry-After the API sent (its RateLimitException keeps only the body): none to give.
    assert ei.value.retry_after_s is None
    assert fake.create_attempts == 1 and fake.creates == [] and fake.starts == []  # the SDK's retries are off


@pytest.mark.parametrize("mode", ["drop_exec", "drop_exec_unanswered"])
async def test_a_connection_lost_after_the_exec_is_outcome_unknown_and_never_resent(fake: E2bFake, mode: str) -> None:
    fake.mode = mode
    with pytest.raises(OutcomeUnknown):
        await engine(fake).execute(py("print(1)"))
    assert len(fake.starts) == 1  # neither the SDK's transport nor execbox sent it again
    assert fake.live() == []  # and the sandbox was still destroyed


async def test_a_persistent_sandbox_keeps_files_across_runs(fake: E2bFake) -> None:
    manager = SandboxManager(engine(fake))
    sb = await manager.create("python", provider="e2b")
    try:
        assert await sb.files.list() == []  # its workdir exists from the start
        await sb.files.write("notes/a.txt", "one")
        r = await sb.run("import os\nopen('b.txt', 'w').write(open('notes/a.txt').read() + ' two')\n"
                         "print(sorted(os.listdir('.')))")
        assert r.status is Status.OK and "'b.txt'" in r.stdout and "'notes'" in r.stdout
        assert await sb.files.read("b.txt") == b"one two"
        assert await sb.files.read("b.txt", max_bytes=3) == b"one"
        listed = {f.name: (f.kind, f.size_bytes) for f in await sb.files.list()}
        assert listed["b.txt"] == ("file", 7) and listed["notes"][0] == "dir"
        assert await sb.files.remove("b.txt") is True and await sb.files.remove("b.txt") is False
        with pytest.raises(Exception, match="no file"):
            await sb.files.read("b.txt")
        assert len(fake.live()) == 1
    finally:
        await sb.destroy()
        await manager.aclose()
    assert fake.live() == [] and len(fake.creates) == 1


async def test_network_is_asked_of_the_service_as_the_instance_needs(fake: E2bFake) -> None:
    service = E2bService(Settings.model_validate(settings(fake, template="my-tpl",
                                                                        sandbox_timeout_s=90.5)))
    for network in (True, False):
        box = await service.create(InstanceSpec(disk_mb=100, network=network))
        await box.kill()
        await box.kill()  # idempotent
    assert [(c["allow_internet_access"], c["templateID"], c["timeout"]) for c in fake.creates] == [
        (True, "my-tpl", 91), (False, "my-tpl", 91)]
    assert fake.live() == []


async def test_a_run_past_the_deadline_execbox_gave_is_stopped_there(fake: E2bFake) -> None:
    box = await E2bService(Settings.model_validate(settings(fake))).create(InstanceSpec(disk_mb=100))
    try:
        with pytest.raises(TimeoutError):  # the service layer's backup to the line's own `timeout`
            await box.run(f"echo $$ > {fake.root}/pid; exec sleep 30", 1)
        pid = int((fake.root / "pid").read_text())
        with pytest.raises(ProcessLookupError):  # stopped through envd (SendSignal), not left running
            for _ in range(50):
                os.kill(pid, 0)
                await asyncio.sleep(0.1)
        ran = await box.run("echo still usable", 10)
        assert (ran.exit_code, ran.stdout) == (0, b"still usable\n")
    finally:
        await box.kill()


async def test_a_sandbox_gone_at_the_service_is_a_sandbox_error_in_words(fake: E2bFake) -> None:
    box = await E2bService(Settings.model_validate(settings(fake))).create(InstanceSpec(disk_mb=100))
    fake.sandboxes[fake.live()[0]].alive = False  # past its timeout at E2B
    for doing in (box.run("true", 10), box.write(f"{fake.root}/x", b""), box.read(f"{fake.root}/x", 10)):
        with pytest.raises(SandboxError, match="sandbox is gone"):
            await doing
    await box.kill()  # already gone: fine


async def test_a_kill_the_service_is_too_busy_for_is_tried_again(fake: E2bFake) -> None:
    fake.busy_kills = 1
    r = await engine(fake).execute(py("print(1)"))
    assert r.status is Status.OK and fake.kill_attempts == 2 and fake.live() == []


async def test_a_chain_falls_over_from_an_unavailable_local_provider_to_e2b(fake: E2bFake) -> None:
    broken_local = parse_instance("local", "local", {"bwrap": "/nonexistent/execbox-tests/bwrap"})
    reg = ProviderRegistry(default="local", configs={
        "local": broken_local, "e2b": parse_instance("e2b", "e2b", settings(fake))})
    r = await Engine(providers=reg, chain=["e2b"]).execute(py("print(6 * 7)"))
    assert r.status is Status.OK and r.stdout == "42\n" and r.provider == "e2b"
    *locals_, e2b = r.provider_attempts  # local is tried again once (the router's retry before the hand-over)
    assert locals_ and all((a.provider, a.phase) == ("local", "start") and "bwrap" in (a.error or "")
                           for a in locals_)
    assert (e2b.provider, e2b.phase, e2b.error) == ("e2b", "run", None)
    assert len(fake.starts) == 1


# --- live: the same cases against e2b.dev (never run without credentials)
LIVE = pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="needs E2B_API_KEY (live E2B)")


def live_engine() -> Engine:
    return Engine(providers=ProviderRegistry(default="e2b", configs={"e2b": parse_instance("e2b", "e2b", {})}),
                  chain=[])


@LIVE
async def test_live_hello_failure_timeout_and_stdin() -> None:
    e = live_engine()
    ok = await e.execute(py("print(input())", stdin="live\n"))
    assert ok.status is Status.OK and ok.stdout == "live\n"
    bad = await e.execute(py("import sys; sys.exit(3)"))
    assert bad.status is Status.RUNTIME_ERROR and bad.exit_code == 3
    slow = await e.execute(py("import time; time.sleep(30)", limits=Limits(wall_time_s=2)))
    assert slow.status is Status.TIMEOUT


@LIVE
async def test_live_network_is_off() -> None:
    r = await live_engine().execute(py("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=5)"))
    assert r.status is Status.RUNTIME_ERROR


@LIVE
async def test_live_a_bad_key_is_provider_unavailable() -> None:
    reg = ProviderRegistry(default="e2b", configs={"e2b": parse_instance("e2b", "e2b", {"api_key": "e2b_bad"})})
    with pytest.raises(ProviderUnavailable, match="refused the API key"):
        await Engine(providers=reg, chain=[]).execute(py("print(1)"))


@LIVE
async def test_live_persistent_sandbox_files() -> None:
    manager = SandboxManager(live_engine())
    sb = await manager.create("python", provider="e2b")
    try:
        await sb.files.write("a.txt", "one")
        r = await sb.run("open('b.txt', 'w').write(open('a.txt').read() + ' two')")
        assert r.status is Status.OK and await sb.files.read("b.txt") == b"one two"
        assert {f.name for f in await sb.files.list()} == {"a.txt", "b.txt"}
        assert await sb.files.remove("a.txt") is True
    finally:
        await sb.destroy()
        await manager.aclose()
