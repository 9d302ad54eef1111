"""The remote provider: a front Engine runs through a second, real execbox server (`execbox serve` in a
subprocess), with a counting TCP proxy of the test's own between them that counts the POST /api/v1/execute
requests (exactly one per execution: never a retry) and can hold back the far side's answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import pytest
from tests.server.conftest import KEY, Server

from execbox import (
    AtCapacity,
    AuthenticationError,
    CapacityError,
    File,
    Limits,
    NotFoundError,
    OutcomeUnknown,
    RequestError,
    SandboxError,
    Status,
)
from execbox.engine import Engine
from execbox.models import ExecutionRequest, Policy, ProviderAttempt
from execbox.providers.base import InstanceSpec
from execbox.providers.mock import MockProvider
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.providers.remote import RemoteProvider
from execbox.providers.remote_settings import RemoteSettings
from execbox.routing import Router
from execbox.sandbox import SandboxManager

EXECUTE = b"POST /api/v1/execute HTTP/1.1\r\n"


class CountingProxy:
    """A loopback TCP proxy to ``port``: counts the POST /api/v1/execute requests it forwards; with ``hold``
    set, it drops what the server answers (as a network that stalls); with ``reply`` set, it answers an
    execute request with those bytes itself, then closes (as a reverse proxy whose upstream failed)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.executes = 0
        self.hold = False
        self.reply: bytes | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._front: dict[asyncio.StreamReader, asyncio.StreamWriter] = {}

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        self._front[reader] = writer
        await asyncio.gather(self._pipe(reader, up_writer, upstream=True),
                             self._pipe(up_reader, writer, upstream=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                if upstream:  # a request line may be cut between two reads: the tail of the last one counts
                    seen = tail + data
                    self.executes += seen.count(EXECUTE)
                    tail = seen[-(len(EXECUTE) - 1):]
                    if self.reply is not None and EXECUTE in seen:
                        self._front[reader].write(self.reply)
                        self._front[reader].close()
                        return
                if upstream or not self.hold:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()  # one side gone: the other's connection ends too

    async def close(self) -> None:
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()


@pytest.fixture
async def proxy(server: Server) -> AsyncIterator[CountingProxy]:
    p = await CountingProxy(server.port).start()
    yield p
    await p.close()


class Front:
    """An Engine whose default provider is ``far`` (the remote kind) and whose chain is ``chain``, a mock
    beside it that counts what it is asked."""

    def __init__(self, url: str, chain: Sequence[str] = (), policy: Policy | None = None, **settings: Any) -> None:
        self.mock = MockProvider()
        far = parse_instance("far", "remote", {"url": url, "api_key": KEY, **settings})
        self.registry = ProviderRegistry(default="far", instances={"mock": self.mock}, configs={"far": far})
        self.engine = Engine(providers=self.registry, router=Router(self.registry, chain=chain), policy=policy)

    async def run(self, code: str | None, language: str = "python", **fields: Any) -> Any:
        return await self.engine.execute(ExecutionRequest(code=code, language=language, **fields))

    def untouched_mock(self) -> bool:
        return not self.mock.calls and not self.mock.instances


@pytest.fixture
async def front(proxy: CountingProxy) -> AsyncIterator[Front]:
    f = Front(proxy.url)
    yield f
    await f.registry.aclose()


@contextlib.contextmanager
def far_sandboxes(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def in_progress(server: Server) -> float:
    """Executions running on ``server`` now (its sandbox_active_containers gauge)."""
    with server.client() as c:
        text = c.get("/metrics").text
    return sum(float(v) for v in re.findall(r'^sandbox_active_containers\{[^}]*\} (\S+)$', text, re.M))


# --------------------------------------------------------------------------------------------- executions

async def test_executions_run_on_the_far_server_once_each(front: Front, proxy: CountingProxy) -> None:
    runs = 0

    async def run(code: str | None, language: str = "python", **fields: Any) -> Any:
        nonlocal runs
        runs += 1
        result = await front.run(code, language, **fields)
        assert result.provider == "far"
        assert result.provider_attempts == [ProviderAttempt(provider="far", phase="run")]
        assert proxy.executes == runs  # one POST per execution
        return result

    r = await run("print('hello')")
    assert (r.status, r.stdout, r.language) == (Status.OK, "hello\n", "python")
    c_program = "#include <stdio.h>\nint main(void){int n; scanf(\"%d\", &n); printf(\"%d\\n\", 2 * n); return 0;}\n"
    r = await run(c_program, "c", stdin="21")
    assert (r.status, r.stdout) == (Status.OK, "42\n")
    assert r.compile is not None and r.compile.status is Status.OK
    r = await run("int main( {", "c")
    assert r.status is Status.COMPILE_ERROR and "error" in r.compile.stderr
    r = await run("import sys, os, util\nprint(sys.argv[1:], util.X, os.environ['FOO'], input())",
                  args=["a", "b c"], files=[File(name="util.py", content="X = 5\n")], env={"FOO": "bar"},
                  stdin="typed\n")
    assert (r.status, r.stdout) == (Status.OK, "['a', 'b c'] 5 bar typed\n")
    r = await run("def main(x, y):\n    return {'sum': x + y}\n", arguments={"x": 1, "y": 2})
    assert (r.status, r.return_value) == (Status.OK, {"sum": 3})
    r = await run("while True: pass", limits=Limits(wall_time_s=1, cpu_time_s=1))
    assert r.status is Status.TIMEOUT and r.message is not None
    r = await run("import sys; sys.exit(3)")
    assert (r.status, r.exit_code) == (Status.RUNTIME_ERROR, 3)
    assert front.untouched_mock()


async def test_the_execution_id_is_the_far_servers_idempotency_key(server: Server, proxy: CountingProxy) -> None:
    """Sent twice with one execution id (as a client that lost the answer would), it runs once there."""
    provider = RemoteProvider(RemoteSettings(url=proxy.url, api_key=KEY))
    request = ExecutionRequest(language="python", code="import random; print(random.random())")
    limits, execution_id = Policy().apply(None), uuid.uuid4().hex
    try:
        first = await provider.run_request(request, limits, execution_id)
        again = await provider.run_request(request, limits, execution_id)
        other = await provider.run_request(request, limits, uuid.uuid4().hex)
    finally:
        await provider.aclose()
    assert proxy.executes == 3
    assert first.status is Status.OK and first.stdout == again.stdout != other.stdout


async def test_the_fronts_limits_are_sent_whole(proxy: CountingProxy) -> None:
    """Every limit is sent explicitly: the front's policy decides (the far server's defaults are 10 s), the far
    side only caps."""
    front = Front(proxy.url, policy=Policy(defaults=Limits(wall_time_s=1, cpu_time_s=1)))
    try:
        r = await front.run("import time; time.sleep(3)")
        assert r.status is Status.TIMEOUT and "1" in (r.message or "")
    finally:
        await front.registry.aclose()


async def test_a_far_server_that_refuses_is_not_handed_the_code(server: Server, proxy: CountingProxy) -> None:
    """A refusal (a bad key, a request it cannot take) is an error of its kind; in a chain the next runs it."""
    bad_key = Front(proxy.url, api_key="not-a-key")
    nope = Front(proxy.url, chain=["mock"], provider="no-such-provider")
    try:
        with pytest.raises(AuthenticationError):
            await bad_key.run("print(1)")
        r = await nope.run("print(1)")  # the far server answers 400 (unknown provider there): the mock runs it
        assert r.provider == "mock"
        assert r.provider_attempts[0].provider == "far" and r.provider_attempts[0].phase == "start"
        assert "no-such-provider" in (r.provider_attempts[0].error or "")
    finally:
        await bad_key.registry.aclose()
        await nope.registry.aclose()


async def test_a_lost_answer_is_an_unknown_outcome_never_a_retry(proxy: CountingProxy) -> None:
    """The far server's answer held back past the wait (wall + compile + extra time): OutcomeUnknown; the next
    provider of the chain is not tried."""
    front = Front(proxy.url, chain=["mock"], extra_time_s=0.5)
    proxy.hold = True
    try:
        with pytest.raises(OutcomeUnknown, match="may have run"):
            await front.run("print(1)", limits=Limits(wall_time_s=1, cpu_time_s=1, compile_wall_time_s=1))
        assert proxy.executes == 1
        assert front.untouched_mock()
    finally:
        await front.registry.aclose()


@pytest.mark.parametrize(("status", "headers", "handed_over"), [
    (502, "", True), (500, "", True), (504, "", True), (503, "", True), (503, "Retry-After: 3\r\n", True),
    (503, "Execbox-Code-Run: no\r\n", False), (503, "Retry-After: 3\r\nExecbox-Code-Run: no\r\n", False),
    (500, "Execbox-Code-Run: no\r\n", False), (429, "Retry-After: 3\r\n", False)])
async def test_a_5xx_that_is_not_a_refusal_is_an_unknown_outcome(proxy: CountingProxy, status: int, headers: str,
                                                                 handed_over: bool) -> None:
    """A reverse proxy between them answering for a far server that failed: any 5xx may come after the request
    went through (an envoy's 503 "upstream reset" does), so it is an unknown outcome unless the answer says the
    code was not run (``Execbox-Code-Run: no``, which execbox servers send with their refusals); a 429 is a
    refusal (the next provider runs it)."""
    body = b'{"detail": "upstream trouble"}'
    proxy.reply = (f"HTTP/1.1 {status} X\r\n{headers}content-type: application/json\r\n"
                   f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body
    front = Front(proxy.url, chain=["mock"])
    try:
        if handed_over:
            with pytest.raises(OutcomeUnknown, match="may have run"):
                await front.run("print(1)")
            assert proxy.executes == 1 and front.untouched_mock()
        else:
            r = await front.run("print(1)")
            assert r.provider == "mock" and r.provider_attempts[0].phase == "start"
    finally:
        await front.registry.aclose()


async def test_a_stopped_far_server_fails_over(make_server: Any) -> None:
    far = make_server()
    far.stop()
    front = Front(far.url, chain=["mock"])
    try:
        r = await front.run("print('hi')")
        assert r.provider == "mock"
        first = r.provider_attempts[0]
        assert (first.provider, first.phase) == ("far", "start")
        assert "no execbox server answers" in (first.error or "")
        assert r.provider_attempts[-1] == ProviderAttempt(provider="mock", phase="run")
    finally:
        await front.registry.aclose()


async def test_a_far_server_killed_mid_run_is_an_unknown_outcome(make_server: Any) -> None:
    far = make_server()
    proxy = await CountingProxy(far.port).start()
    front = Front(proxy.url, chain=["mock"])
    try:
        task = asyncio.ensure_future(front.run("import time; print('x', flush=True); time.sleep(30)"))
        for _ in range(300):  # until it runs there
            if in_progress(far) >= 1:
                break
            await asyncio.sleep(0.05)
        assert in_progress(far) >= 1
        await asyncio.sleep(0.5)  # the program asleep (were it not yet, the outcome would be just as unknown)
        assert far.proc is not None
        os.kill(far.proc.pid, signal.SIGKILL)
        with pytest.raises(OutcomeUnknown, match="may have run") as caught:
            await task
        assert proxy.executes == 1
        assert front.untouched_mock()
        assert caught.value.provider_attempts[-1].provider == "far"  # type: ignore[attr-defined]
    finally:
        await proxy.close()
        await front.registry.aclose()


async def test_a_busy_far_server_is_a_capacity_error_before_hand_over(make_server: Any) -> None:
    far = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_QUEUE": "0"})
    pinned, chained = Front(far.url), Front(far.url, chain=["mock"])
    try:
        sleeper = asyncio.ensure_future(pinned.run("import time; time.sleep(3)"))
        for _ in range(300):
            if in_progress(far) >= 1:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(AtCapacity) as caught:
            await pinned.run("print(1)")
        assert caught.value.retry_after_s is not None
        r = await chained.run("print(1)")
        assert r.provider == "mock" and r.provider_attempts[0].phase == "start"
        assert (await sleeper).status is Status.OK
    finally:
        await pinned.registry.aclose()
        await chained.registry.aclose()


async def test_a_rate_limited_key_is_a_capacity_error_with_retry_after(make_server: Any) -> None:
    far = make_server(env={"EXECBOX_RATE_LIMIT_PER_MIN": "1"})
    front = Front(far.url)
    try:
        assert (await front.run("print(1)")).status is Status.OK
        with pytest.raises(CapacityError) as caught:
            await front.run("print(2)")
        assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 1
    finally:
        await front.registry.aclose()


# --------------------------------------------------------------------------------------------- sandboxes

async def test_a_sandbox_on_the_far_server(server: Server, front: Front, proxy: CountingProxy) -> None:
    manager = SandboxManager(front.engine)
    sb = await manager.create("python", provider="far", limits=Limits(memory_mb=256, pids=64))
    try:
        with far_sandboxes(server) as c:
            there = c.get("/api/v1/sandboxes").json()["sandboxes"]
        assert len(there) == 1 and there[0]["limits"]["memory_mb"] == 256 and there[0]["limits"]["pids"] == 64
        r = await sb.exec("echo hi; echo oops >&2; exit 4")
        assert (r.status, r.stdout, r.stderr, r.exit_code, r.provider) == (
            Status.RUNTIME_ERROR, "hi\n", "oops\n", 4, "far")
        await sb.files.write("data/x.txt", "abc")
        assert await sb.files.read("data/x.txt") == b"abc"
        assert [(f.name, f.kind, f.size_bytes) for f in await sb.files.list("data")] == [("x.txt", "file", 3)]
        events = [e async for e in sb.stream("for i in 1 2 3; do echo $i; sleep 0.2; done")]
        assert "".join(e.data for e in events if e.type == "stdout") == "1\n2\n3\n"
        assert len([e for e in events if e.type == "stdout"]) >= 2  # as it came, not all at the end
        assert events[-1].type == "exit" and events[-1].result is not None and events[-1].result.ok
        r = await sb.run("print(open('data/x.txt').read())")
        assert (r.status, r.stdout) == (Status.OK, "abc\n")
        r = await sb.exec("sleep 5", limits=Limits(wall_time_s=1))
        assert r.status is Status.TIMEOUT and "wall time" in (r.message or "")
        assert (await sb.exec("cat data/x.txt")).stdout == "abc"  # it lives on
        r = await sb.exec("yes", limits=Limits(output_bytes=10))  # each exec's own limits reach the far side
        assert (r.status, r.stdout, r.stdout_truncated) == (Status.OUTPUT_LIMIT, "y\n" * 5, True)
        r = await sb.exec("for i in $(seq 40); do sleep 5 & done; wait", limits=Limits(pids=8))
        assert r.status is Status.RUNTIME_ERROR and "fork" in r.stderr.lower() + (r.message or "")
        assert await sb.files.remove("data/x.txt") is True
        assert await sb.files.remove("data/x.txt") is False
        with pytest.raises(NotFoundError):
            await sb.files.read("data/x.txt")
        assert proxy.executes == 0  # sandboxes never use /execute
    finally:
        await sb.destroy()
        await manager.aclose()
    with far_sandboxes(server) as c:
        assert c.get("/api/v1/sandboxes").json()["sandboxes"] == []


async def test_a_far_sandbox_gone_is_the_sandbox_failing(server: Server, front: Front) -> None:
    manager = SandboxManager(front.engine)
    sb = await manager.create("python", provider="far")
    try:
        with far_sandboxes(server) as c:
            far_id = c.get("/api/v1/sandboxes").json()["sandboxes"][0]["id"]
            assert c.delete(f"/api/v1/sandboxes/{far_id}").status_code == 204
        with pytest.raises(SandboxError, match="is gone"):
            await sb.exec("true")
        with pytest.raises(SandboxError, match="is gone"):
            await sb.files.read("x")
    finally:
        await manager.aclose()


async def test_one_shot_instances_are_refused() -> None:
    provider = RemoteProvider(RemoteSettings(url="http://127.0.0.1:9"))
    try:
        with pytest.raises(SandboxError, match="run_request"):
            await provider.start(InstanceSpec(disk_mb=64))
    finally:
        await provider.aclose()


def test_a_bad_url_is_a_request_error() -> None:
    with pytest.raises(RequestError, match="URL"):
        RemoteProvider(RemoteSettings(url="ftp://example"))


def test_a_servers_refusals_say_the_code_was_not_run(make_server: Any) -> None:
    s = make_server(env={"EXECBOX_PROVIDERS": '{"gone": {"kind": "docker", "host": "unix:///run/no-such.sock"}}'})
    with s.client() as c:
        r = c.post("/api/v1/execute", json={"language": "python", "code": "print(1)", "provider": "gone"})
        assert r.status_code == 503 and r.headers["Execbox-Code-Run"] == "no"  # nothing was handed over
        r = c.post("/api/v1/execute", json={"language": "cobol", "code": "x"})
        assert r.status_code == 400 and r.headers["Execbox-Code-Run"] == "no"
        r = c.post("/api/v1/execute", json={"language": "python", "code": "print(1)"})
        assert r.status_code == 200 and "Execbox-Code-Run" not in r.headers
