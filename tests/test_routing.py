"""The router above the provider boundary, with the mock provider: fallback only before the code is handed over,
never after (OutcomeUnknown); the program's outcome is a result; breakers open and half-open; capabilities decide
where a request may go; every attempt is recorded. Real providers made unavailable: tests/test_routing_real.py,
tests/ssh, tests/server/test_remote_provider.py."""

from __future__ import annotations

import pytest

from execbox.engine import Engine
from execbox.errors import (
    AtCapacity,
    CapacityError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
    ServerUnreachable,
)
from execbox.models import ExecutionRequest, ExecutionResult, Limits, Status
from execbox.providers.base import ExecSpec, InstanceSpec, ProcessOutcome
from execbox.providers.kinds import Capabilities, ProviderKind
from execbox.providers.mock import MockInstance, MockProvider
from execbox.providers.registry import ProviderRegistry
from execbox.routing import Breaker, BreakerState, Router, RoutingSettings
from execbox.sandbox import SandboxManager

FAST = RoutingSettings(retries=0, breaker_threshold=3, breaker_cooldown_s=30)


class Failing(MockProvider):
    """Fails to start with ``error`` the first ``times`` starts (every start when None)."""

    def __init__(self, error: Exception, times: int | None = None) -> None:
        super().__init__()
        self.error, self.times, self.starts = error, times, 0

    async def start(self, spec: InstanceSpec) -> MockInstance:
        self.starts += 1
        if self.times is None or self.starts <= self.times:
            raise self.error
        return await super().start(spec)


def crash(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
    raise ConnectionResetError("the far side hung up")


def outcome(exit_code: int | None = 0, **kw: object) -> ProcessOutcome:
    fields: dict = {"exit_code": exit_code, "signal": None, "stdout": b"", "stderr": b"", "stdout_truncated": False,
                    "stderr_truncated": False, "wall_time_s": 0.01, **kw}
    return ProcessOutcome(**fields)


def engine(chain: list[str], settings: RoutingSettings = FAST, **providers: MockProvider) -> Engine:
    registry = ProviderRegistry(instances=providers, default=chain[0])
    return Engine(providers=registry, router=Router(registry, chain[1:], settings))


def req(**kw: object) -> ExecutionRequest:
    return ExecutionRequest(language="python", code="print(1)", **kw)  # type: ignore[arg-type]


async def test_a_provider_that_fails_before_the_handover_falls_over_to_the_next() -> None:
    down, up = Failing(ServerUnreachable("connection refused")), MockProvider()
    e = engine(["down", "up"], down=down, up=up)
    r = await e.execute(req())
    assert r.provider == "up" and r.status is Status.OK and len(up.calls) == 1
    assert [(a.provider, a.phase) for a in r.provider_attempts] == [("down", "start"), ("up", "run")]
    assert "connection refused" in (r.provider_attempts[0].error or "") and r.provider_attempts[1].error is None
    assert e.router.breaker("down").faults == 1


async def test_a_failure_after_the_handover_is_outcome_unknown_and_never_run_again() -> None:
    broken, spare = MockProvider(crash), MockProvider()
    e = engine(["broken", "spare"], broken=broken, spare=spare)
    with pytest.raises(OutcomeUnknown, match="not run again") as ei:
        await e.execute(req())
    assert len(broken.calls) == 1 and spare.calls == [] and spare.instances == []  # once, on one provider
    assert [a.phase for a in ei.value.provider_attempts] == ["run"]  # type: ignore[attr-defined]
    assert broken.instances[0].closed  # its instance is still cleaned up


@pytest.mark.parametrize("result", [outcome(exit_code=3), outcome(exit_code=None, signal=9),
                                    outcome(stopped_by="wall_time"), outcome(stopped_by="memory")])
async def test_the_programs_own_outcome_is_a_result_never_a_reason_to_fall_over(result: ProcessOutcome) -> None:
    first, spare = MockProvider(lambda spec, files: result), MockProvider()
    e = engine(["first", "spare"], first=first, spare=spare)
    r = await e.execute(req())
    assert r.provider == "first" and r.status is not Status.OK and spare.calls == []
    assert e.router.breaker("first").faults == 0  # a program's failure is not the provider's


async def test_a_retry_before_the_handover_stays_on_the_same_provider() -> None:
    flaky, spare = Failing(AtCapacity("busy", 0.01), times=1), MockProvider()
    e = engine(["flaky", "spare"], RoutingSettings(retries=2, retry_backoff_s=0.001), flaky=flaky, spare=spare)
    r = await e.execute(req())
    assert r.provider == "flaky" and flaky.starts == 2 and spare.calls == []
    assert [a.phase for a in r.provider_attempts] == ["start", "run"]
    assert e.router.breaker("flaky").faults == 0  # capacity is not a fault


async def test_a_request_error_of_the_provider_is_not_retried_there_but_falls_over() -> None:
    picky, spare = Failing(RequestError("no image for this language")), MockProvider()
    e = engine(["picky", "spare"], RoutingSettings(retries=3, retry_backoff_s=0.001), picky=picky, spare=spare)
    assert (await e.execute(req())).provider == "spare"
    assert picky.starts == 1 and e.router.breaker("picky").faults == 0


async def test_the_breaker_opens_after_faults_in_a_row_then_lets_one_probe_through() -> None:
    down, spare = Failing(ProviderUnavailable("engine down"), times=3), MockProvider()
    e = engine(["down", "spare"], down=down, spare=spare)
    for _ in range(3):
        assert (await e.execute(req())).provider == "spare"
    breaker = e.router.breaker("down")
    assert breaker.state is BreakerState.OPEN and down.starts == 3
    r = await e.execute(req())
    assert r.provider == "spare" and down.starts == 3  # not even tried while open
    assert r.provider_attempts[0].phase == "circuit" and "circuit open" in (r.provider_attempts[0].error or "")
    breaker.opened_at = (breaker.opened_at or 0) - 31  # the cool-down has passed
    assert breaker.state is BreakerState.HALF_OPEN
    r = await e.execute(req())  # the probe: the provider is back
    assert r.provider == "down" and down.starts == 4 and breaker.state is BreakerState.CLOSED


def test_a_half_open_breaker_admits_one_probe_and_a_failed_probe_opens_it_again() -> None:
    now = [0.0]
    b = Breaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    b.failed("x")
    assert b.state is BreakerState.CLOSED and b.admit()
    b.failed("y")
    assert b.state is BreakerState.OPEN and not b.admit() and b.retry_in_s() == 10
    now[0] = 10
    assert b.admit() and not b.admit()  # one probe at a time
    b.failed("still down")
    assert b.state is BreakerState.OPEN and b.last_error == "still down"
    now[0] = 20
    assert b.admit()
    b.released()  # the probe told nothing (a busy provider): another may go
    assert b.admit()
    b.succeeded()
    assert b.state is BreakerState.CLOSED and b.faults == 0


async def test_a_provider_that_cannot_enforce_a_limit_is_passed_over_and_refuses_when_pinned() -> None:
    weak, strong = MockProvider(), MockProvider()
    e = engine(["weak", "strong"], weak=weak, strong=strong)
    e.providers.kinds["given:weak"] = ProviderKind("given:weak", "", "", capabilities=Capabilities(
        limits=frozenset({"wall_time_s", "cpu_time_s"}), max_wall_time_s=30))
    r = await e.execute(req(limits=Limits(memory_mb=64)))
    assert r.provider == "strong" and weak.calls == []
    assert r.provider_attempts[0].phase == "route" and "memory_mb" in (r.provider_attempts[0].error or "")
    assert (await e.execute(req(limits=Limits(wall_time_s=5)))).provider == "weak"
    assert (await e.execute(req(limits=Limits(wall_time_s=60)))).provider == "strong"  # over its longest run
    ran = len(weak.calls)
    with pytest.raises(RequestError, match="provider 'weak' cannot run this request: it cannot enforce memory_mb"):
        await e.execute(req(provider="weak", limits=Limits(memory_mb=64)))
    assert len(weak.calls) == ran  # never run weaker


async def test_a_request_pins_a_provider_or_names_its_own_fallback() -> None:
    a, b, c = Failing(ProviderUnavailable("a down")), MockProvider(), MockProvider()
    e = engine(["a", "b"], a=a, b=b, c=c)
    with pytest.raises(ProviderUnavailable, match="a down"):  # pinned: no fallback unless it names some
        await e.execute(req(provider="a"))
    assert (await e.execute(req(provider="a", fallback=["c"]))).provider == "c"
    assert (await e.execute(req(fallback=["c"]))).provider == "c"  # replaces the chain
    assert (await e.execute(req())).provider == "b"
    with pytest.raises(RequestError, match="unknown provider 'nope'"):
        await e.execute(req(fallback=["nope"]))


async def test_when_every_provider_fails_the_error_lists_each_and_says_nothing_ran() -> None:
    e = engine(["a", "b"], a=Failing(ProviderUnavailable("a down")), b=Failing(ServerUnreachable("b gone")))
    with pytest.raises(ProviderUnavailable, match=r"the code was not run.*a \(start\): a down.*b \(start\): b gone"):
        await e.execute(req())
    busy = engine(["a", "b"], a=Failing(AtCapacity("a busy", 2)), b=Failing(AtCapacity("b busy", 7)))
    with pytest.raises(CapacityError, match="every provider is busy") as ei:
        await busy.execute(req())
    assert ei.value.retry_after_s == 2


class Runner(MockProvider):
    """A whole-request provider (as another execbox server is)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error, self.requests = error, 0

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        self.requests += 1
        if self.error is not None:
            raise self.error
        return ExecutionResult(execution_id="far-id", language="python", provider="far", status=Status.OK,
                               stdout=f"{execution_id} {request.provider} {limits.wall_time_s}\n")


async def test_a_whole_request_provider_gets_the_execution_id_and_its_contract_decides_the_fallback() -> None:
    far, spare = Runner(), MockProvider()
    e = engine(["far", "spare"], far=far, spare=spare)
    r = await e.execute(req(limits=Limits(wall_time_s=3)), execution_id="abc")
    assert r.execution_id == "abc" and r.provider == "far" and r.stdout == "abc None 3.0\n"  # the id, unpinned
    unreachable = engine(["far", "spare"], far=Runner(ServerUnreachable("refused")), spare=spare)
    assert (await unreachable.execute(req())).provider == "spare"
    lost = Runner(OutcomeUnknown("connection lost mid-answer"))
    with pytest.raises(OutcomeUnknown):
        await engine(["far", "spare"], far=lost, spare=spare).execute(req())
    assert lost.requests == 1 and len(spare.calls) == 1  # spare ran only the unreachable case's request


async def test_handover_is_reported_once_just_before_the_code_is_handed_over() -> None:
    seen: list[str] = []
    down, up = Failing(ProviderUnavailable("down")), MockProvider(lambda spec, files: (
        seen.append("exec"), outcome())[1])
    e = engine(["down", "up"], down=down, up=up)
    await e.execute(req(), on_handover=lambda: seen.append("handover"))
    assert seen == ["handover", "exec"]


async def test_a_sandbox_is_created_on_the_next_provider_when_the_first_cannot_start_one() -> None:
    down, up = Failing(ProviderUnavailable("down")), MockProvider()
    e = engine(["down", "up"], down=down, up=up)
    manager = SandboxManager(e)
    sb = await manager.create("python")
    try:
        assert sb.provider == "up" and down.starts == 1
    finally:
        await manager.aclose()


async def test_the_library_surface_names_a_chain_and_a_sandboxs_own_fallback() -> None:
    from execbox import AsyncSandbox

    down, up = Failing(ProviderUnavailable("down")), MockProvider()
    e = Engine(providers=ProviderRegistry(instances={"down": down, "up": up}, default="down"), chain=["up"])
    assert (await e.execute(req())).provider == "up"  # Engine(chain=...): the default, then the chain
    manager = SandboxManager(e)
    try:
        with pytest.raises(ProviderUnavailable, match="down"):  # pinned, no fallback named
            await AsyncSandbox.create(provider="down", manager=manager)
        sb = await AsyncSandbox.create(provider="down", fallback=["up"], manager=manager)
        assert sb.provider == "up"
    finally:
        await manager.aclose()


def test_the_library_chain_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBOX_FALLBACK_CHAIN", "docker, local")
    assert Engine(providers=ProviderRegistry(default="mock")).router.chain == ["docker", "local"]


def test_a_fault_of_an_attempt_admitted_before_the_circuit_opened_tells_nothing_new() -> None:
    now = [0.0]
    b = Breaker(threshold=1, cooldown_s=10, clock=lambda: now[0])
    slow_admitted_at = now[0]  # an attempt that will fail late
    now[0] = 1
    b.failed("down", admitted_at=now[0])
    assert b.state is BreakerState.OPEN and b.opened_at == 1
    now[0] = 11
    assert b.admit()  # the probe
    b.failed("the slow one, late", admitted_at=slow_admitted_at)
    assert b.probing and b.last_error == "down"  # neither reopened nor a second probe let through
    assert not b.admit()


async def test_a_probe_closes_the_circuit_once_its_instance_started_not_after_the_whole_run() -> None:
    states: list[BreakerState] = []
    e: Engine

    def run(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
        states.append(e.router.breaker("flaky").state)
        return outcome()

    flaky = Failing(ProviderUnavailable("down"), times=3)
    flaky.handler = run
    e = engine(["flaky", "spare"], flaky=flaky, spare=MockProvider())
    for _ in range(3):
        await e.execute(req())
    breaker = e.router.breaker("flaky")
    breaker.opened_at = (breaker.opened_at or 0) - 31
    assert (await e.execute(req())).provider == "flaky"
    assert states == [BreakerState.CLOSED]  # while its program ran, others were admitted again
