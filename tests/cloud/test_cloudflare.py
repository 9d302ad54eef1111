"""The Cloudflare provider: execbox driven for real, its httpx client pointed (base_url) at a loopback sandbox
bridge (tests/cloud/cloudflare_fake.py) whose sandboxes run their commands for real on this host. The live
cases at the end run against a deployed bridge Worker when CLOUDFLARE_SANDBOX_BASE_URL and
CLOUDFLARE_SANDBOX_TOKEN are set."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.cloud.cloudflare_fake import API_KEY, CloudflareFake

from execbox.engine import Engine
from execbox.errors import CapacityError, IsolationError, OutcomeUnknown, ProviderUnavailable, SandboxError
from execbox.models import ExecutionRequest, Limits, Policy, Status
from execbox.providers.base import InstanceSpec
from execbox.providers.cloud.cloudflare import CloudflareService, _retry_after, create
from execbox.providers.cloud.cloudflare_settings import Settings
from execbox.providers.kinds import kinds
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings
from execbox.sandbox import SandboxManager

ENV = ("CLOUDFLARE_SANDBOX_BASE_URL", "SANDBOX_WORKER_URL", "CLOUDFLARE_SANDBOX_TOKEN", "SANDBOX_API_KEY")


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[CloudflareFake]:
    async with CloudflareFake(tmp_path) as f:
        yield f


def settings(fake: CloudflareFake, **extra: Any) -> dict[str, Any]:
    """The provider pointed at the fake; egress "none" (the fake's word for its containers) unless given, so
    execbox's default requests (network off) are routed to it."""
    ws = str(fake.workspace)
    return {"base_url": fake.url, "api_token": API_KEY, "workspace_root": ws, "workdir": f"{ws}/execbox",
            "scratch_dir": f"{ws}/.execbox", "egress": "none", **extra}


def registry(fake: CloudflareFake, **extra: Any) -> ProviderRegistry:
    return ProviderRegistry(default="cloudflare",
                            configs={"cloudflare": parse_instance("cloudflare", "cloudflare", settings(fake, **extra))})


def engine(fake: CloudflareFake, **extra: Any) -> Engine:
    reg = registry(fake, **extra)
    return networked(reg)


def networked(reg: ProviderRegistry) -> Engine:
    """An engine on ``reg`` whose policy lets a request ask for the network; execbox's own retry off."""
    maxima = Policy().maxima.model_copy(update={"network": True})
    return Engine(providers=reg, policy=Policy(maxima=maxima), router=Router(reg, [], RoutingSettings(retries=0)))


def py(code: str, **kw: Any) -> ExecutionRequest:
    return ExecutionRequest(language="python", code=code, **kw)


def run_execs(fake: CloudflareFake) -> list[dict[str, Any]]:
    """The execs that carried a program (not a sandbox's mkdir at its creation)."""
    return [e for e in fake.execs if not e["argv"][-1].startswith("mkdir -p ")]


async def test_a_program_runs_once_in_a_fresh_sandbox_destroyed_after(fake: CloudflareFake) -> None:
    r = await engine(fake).execute(py("print('hello from cloudflare')"))
    assert r.status is Status.OK and r.stdout == "hello from cloudflare\n" and r.provider == "cloudflare", r
    assert fake.create_attempts == 1 and len(fake.sandboxes) == 1
    mkdir, run = fake.execs
    assert mkdir["argv"][:2] == ["/bin/sh", "-c"] and str(fake.workspace / "execbox") in mkdir["argv"][2]
    assert run["argv"][:2] == ["/bin/sh", "-c"] and "timeout -k 2" in run["argv"][2]  # execbox's line, whole
    assert run["timeout_ms"] > 10_000  # the bridge's own stop backs execbox's up, after it
    assert fake.live() == [] and len(fake.deletes) == 1  # destroyed when the run ended
    assert fake.writes == [str(fake.workspace / "execbox" / "main.py")]  # one file: one PUT


async def test_stdin_env_and_files_reach_the_program(fake: CloudflareFake) -> None:
    code = "import os\nprint(input().upper(), os.environ['GREETING'], open('data/x.txt').read())"
    r = await engine(fake).execute(py(code, stdin="quiet\n", env={"GREETING": "hi"},
                                      files=[{"name": "data/x.txt", "content": "beside"}]))
    assert r.status is Status.OK, r
    assert r.stdout == "QUIET hi beside\n"
    [names] = fake.hydrates  # the program's files went in one tar
    assert sorted(names) == ["execbox/data/x.txt", "execbox/main.py"]
    [stdin_path] = fake.writes  # the stdin went to the scratch directory (the bridge writes nowhere else)
    assert stdin_path.startswith(str(fake.workspace / ".execbox" / ".execbox-stdin-"))
    assert not Path(stdin_path).exists()  # removed as the run started


async def test_a_failing_program_is_a_runtime_error_with_its_exit_code(fake: CloudflareFake) -> None:
    r = await engine(fake).execute(py("import sys\nprint('bad', file=sys.stderr)\nsys.exit(3)"))
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 3 and "bad" in r.stderr


async def test_a_program_killed_by_a_signal_reports_it(fake: CloudflareFake) -> None:
    r = await engine(fake).execute(py("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    assert r.exit_code is None and r.signal == 9, r


async def test_a_program_past_its_wall_time_is_a_timeout(fake: CloudflareFake) -> None:
    r = await engine(fake).execute(py("import time\nprint('started', flush=True)\ntime.sleep(30)",
                                      limits=Limits(wall_time_s=1)))
    assert r.status is Status.TIMEOUT and r.wall_time_s < 10 and fake.live() == []


@pytest.mark.parametrize("mode", ["stall", "bridge_timeout"])
async def test_a_bridge_that_gives_up_or_never_answers_is_a_timeout(fake: CloudflareFake, mode: str) -> None:
    """Execbox's clock (the run's wall time and extra_time_s) or the bridge's timeout_ms ends a run whose
    answer does not come: a timeout, never a second exec."""
    fake.mode, fake.faults_after = mode, 1
    r = await engine(fake, extra_time_s=1).execute(py("print(1)", limits=Limits(wall_time_s=1)))
    assert r.status is Status.TIMEOUT and r.wall_time_s < 10, r
    assert len(run_execs(fake)) == 1 and fake.live() == []


async def test_a_refused_token_is_provider_unavailable_with_the_fix(fake: CloudflareFake) -> None:
    with pytest.raises(ProviderUnavailable, match=r"refused the token.*CLOUDFLARE_SANDBOX_TOKEN"):
        await engine(fake, api_token="not-the-key").execute(py("print(1)"))
    assert fake.create_attempts == 1 and fake.execs == [] and fake.sandboxes == {}


def test_no_url_or_token_is_provider_unavailable_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ProviderUnavailable, match="no bridge URL: set CLOUDFLARE_SANDBOX_BASE_URL"):
        create(None)
    with pytest.raises(ProviderUnavailable, match="no bridge token: set CLOUDFLARE_SANDBOX_TOKEN"):
        create(Settings(base_url="https://bridge.example.workers.dev"))
    create(Settings(base_url="http://127.0.0.1:8787"))  # a local `npm run dev` bridge may skip authentication
    with pytest.raises(ValueError, match="https is needed"):
        Settings(base_url="http://bridge.example.workers.dev")  # the token would cross the network in clear
    with pytest.raises(ValueError, match="must be under /workspace"):
        Settings(workdir="/home/user")
    assert kinds()["cloudflare"].detected() is None
    monkeypatch.setenv("SANDBOX_WORKER_URL", "https://bridge.example.workers.dev")
    assert kinds()["cloudflare"].detected() is None  # half of a group is not enough
    monkeypatch.setenv("SANDBOX_API_KEY", "from-env")
    assert kinds()["cloudflare"].detected() == ("SANDBOX_WORKER_URL", "SANDBOX_API_KEY")
    s = Settings()
    assert s.base_url == "https://bridge.example.workers.dev" and s.api_token is not None
    assert s.api_token.get_secret_value() == "from-env"
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "an-account-token")  # never sent to the Worker
    monkeypatch.delenv("SANDBOX_API_KEY")
    assert Settings().api_token is None


async def test_a_rate_limited_edge_is_a_capacity_error_with_its_retry_after_asked_once(fake: CloudflareFake) -> None:
    fake.mode = "rate_limited"
    with pytest.raises(CapacityError, match="no room") as ei:
        await engine(fake).execute(py("print(1)"))
    assert ei.value.retry_after_s == 7
    assert fake.create_attempts == 1 and fake.execs == []  # httpx retries nothing


async def test_a_full_account_is_a_capacity_error_at_creation_and_leaves_nothing(fake: CloudflareFake) -> None:
    fake.mode = "at_capacity"  # the bridge's pool has no container for the sandbox's first call
    with pytest.raises(CapacityError, match="capacity_exceeded") as ei:
        await engine(fake).execute(py("print(1)"))
    assert ei.value.retry_after_s is None  # the bridge gives none
    assert fake.execs == [] and fake.live() == [] and len(fake.deletes) == 1  # the named sandbox let go


def test_retry_after_in_either_form() -> None:
    assert _retry_after("12") == 12 and _retry_after(None) is None and _retry_after("soon") is None
    retry = _retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert retry is not None and retry > 1e8


@pytest.mark.parametrize("mode", ["drop_exec", "drop_exec_unanswered"])
async def test_a_connection_lost_after_the_exec_is_outcome_unknown_and_never_resent(fake: CloudflareFake,
                                                                                    mode: str) -> None:
    fake.mode, fake.faults_after = mode, 1
    with pytest.raises(OutcomeUnknown):
        await engine(fake).execute(py("print(1)"))
    assert len(run_execs(fake)) == 1  # neither httpx nor execbox sent it again
    assert fake.live() == []  # and the sandbox was still destroyed


async def test_a_persistent_sandbox_keeps_files_across_runs(fake: CloudflareFake) -> None:
    manager = SandboxManager(engine(fake))
    sb = await manager.create("python", provider="cloudflare")
    try:
        assert await sb.files.list() == []  # its workdir exists from the start
        await sb.files.write("notes/a b.txt", "one")  # a space: the file route's path is percent-encoded
        r = await sb.run("import os\nopen('b.txt', 'w').write(open('notes/a b.txt').read() + ' two')\n"
                         "print(sorted(os.listdir('.')))")
        assert r.status is Status.OK and "'b.txt'" in r.stdout and "'notes'" in r.stdout, r
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
    assert fake.live() == [] and fake.create_attempts == 1


async def test_the_network_is_the_bridge_deployments_and_routed_by_it(fake: CloudflareFake) -> None:
    declared = kinds()["cloudflare"].capabilities
    assert declared.network_on and not declared.network_off and declared.isolation == "microvm"
    closed = registry(fake).capabilities("cloudflare")
    assert closed.network_off and not closed.network_on
    open_ = registry(fake, egress="open").capabilities("cloudflare")
    assert open_.network_on and not open_.network_off
    # the shipped bridge's containers have the network: a run that keeps it off is not sent there
    with pytest.raises(Exception, match="cannot cut programs off the network"):
        await engine(fake, egress="open").execute(py("print(1)"))
    assert fake.create_attempts == 0
    r = await engine(fake, egress="open").execute(py("print(2)", limits=Limits(network=True)))
    assert r.status is Status.OK and r.stdout == "2\n"
    # and a direct caller asking what the deployment cannot give is told so, before any call
    service = CloudflareService(Settings.model_validate(settings(fake)))
    try:
        with pytest.raises(IsolationError, match="no network"):
            await service.create(InstanceSpec(disk_mb=100, network=True))
    finally:
        await service.aclose()
    assert fake.create_attempts == 1


async def test_the_bridges_workspace_confinement_and_a_destroyed_box(fake: CloudflareFake) -> None:
    service = CloudflareService(Settings.model_validate(settings(fake)))
    try:
        box = await service.create(InstanceSpec(disk_mb=100))
        with pytest.raises(SandboxError, match="outside its workspace"):
            await box.read("/etc/passwd", 100)  # the bridge's 403, mapped
        with pytest.raises(SandboxError, match="outside its workspace"):  # no tar for files it cannot take
            await box.write_many({f"{box.workdir}/a.txt": b"a", "/tmp/elsewhere.txt": b"b"})
        assert fake.hydrates == [] and fake.writes == [f"{box.workdir}/a.txt"]
        assert await box.read(f"{box.workdir}/missing.txt", 100) is None
        await box.kill()
        await box.kill()  # idempotent: one DELETE
        with pytest.raises(SandboxError, match="destroyed"):  # its name would get a fresh container
            await box.run("true", 10)
    finally:
        await service.aclose()
    assert fake.deletes == [box.id] and fake.live() == []


# --- live: a deployed bridge Worker (https://github.com/cloudflare/sandbox-sdk/tree/main/bridge/worker)
live = pytest.mark.skipif(not (os.environ.get("CLOUDFLARE_SANDBOX_BASE_URL") and os.environ.get(
    "CLOUDFLARE_SANDBOX_TOKEN")), reason="needs CLOUDFLARE_SANDBOX_BASE_URL and CLOUDFLARE_SANDBOX_TOKEN (a bridge)")


def live_engine(**extra: Any) -> Engine:
    return networked(ProviderRegistry(default="cloudflare", configs={
        "cloudflare": parse_instance("cloudflare", "cloudflare", {"egress": "open", **extra})}))


NET = Limits(network=True)  # the shipped bridge's containers have the network


@live
async def test_live_a_program_runs_fails_and_times_out() -> None:
    eng = live_engine()
    ok = await eng.execute(py("print('hello from cloudflare')", limits=NET, stdin="x"))
    assert ok.status is Status.OK and ok.stdout == "hello from cloudflare\n", ok
    bad = await eng.execute(py("import sys; sys.exit(3)", limits=NET))
    assert bad.status is Status.RUNTIME_ERROR and bad.exit_code == 3
    slow = await eng.execute(py("import time; time.sleep(30)", limits=Limits(network=True, wall_time_s=2)))
    assert slow.status is Status.TIMEOUT


@live
async def test_live_a_wrong_token_is_provider_unavailable() -> None:
    with pytest.raises(ProviderUnavailable, match="refused the token"):
        await live_engine(api_token="not-the-bridge-key").execute(py("print(1)", limits=NET))


@live
async def test_live_a_persistent_sandbox_keeps_files() -> None:
    manager = SandboxManager(live_engine())
    sb = await manager.create("python", provider="cloudflare", limits=NET)
    try:
        await sb.files.write("a.txt", "one")
        r = await sb.run("open('b.txt', 'w').write(open('a.txt').read() + ' two')")
        assert r.status is Status.OK, r
        assert await sb.files.read("b.txt") == b"one two"
        assert {f.name for f in await sb.files.list()} == {"a.txt", "b.txt"}
        assert await sb.files.remove("b.txt") is True
    finally:
        await sb.destroy()
        await manager.aclose()
