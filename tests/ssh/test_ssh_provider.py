"""The ssh provider against a real sshd on loopback and a real agent driving this host's local provider:
executions and sandboxes through the engine, limits enforced on the far side, and what happens when the
login, the server or the connection fails (failover before the hand-over, OutcomeUnknown after it, nothing
left running either way). Host-key pinning: tests/escapes/test_ssh_host_keys.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from tests.ssh.conftest import SRC, Sshd, agents, far_processes, keygen, registry, wait_until

from execbox import AsyncSandbox, Engine, ExecutionRequest, File, Limits, Status
from execbox.errors import IsolationError, OutcomeUnknown, ProviderUnavailable, RequestError, SandboxError
from execbox.providers.base import ExecSpec, InstanceSpec
from execbox.providers.mock import MockProvider
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.providers.ssh.provider import SshProvider
from execbox.routing import Router, RoutingSettings
from execbox.sandbox import SandboxManager

LIMITS = Limits(wall_time_s=10, cpu_time_s=10, memory_mb=256, pids=32, disk_mb=32)


def req(code: str, language: str = "python", **fields: object) -> ExecutionRequest:
    return ExecutionRequest(language=language, code=code, limits=fields.pop("limits", LIMITS), **fields)  # type: ignore[arg-type]


async def test_python_hello_runs_on_the_far_side(engine: Engine) -> None:
    r = await engine.execute(req("print('hello')"))
    assert r.status is Status.OK and r.stdout == "hello\n", r
    assert r.provider == "ssh-t" and [a.phase for a in r.provider_attempts] == ["run"]


async def test_a_c_program_is_compiled_and_run_with_stdin(engine: Engine) -> None:
    code = '#include <stdio.h>\nint main(void){int a,b; scanf("%d %d",&a,&b); printf("%d\\n", a*b); return 3;}\n'
    r = await engine.execute(req(code, "c", stdin="6 7\n"))
    assert r.status is Status.RUNTIME_ERROR and r.exit_code == 3 and r.stdout == "42\n", r
    assert r.compile is not None and r.compile.status is Status.OK


async def test_files_in_and_mains_return_value(engine: Engine) -> None:
    big = os.urandom(5 * 1024 * 1024)  # more than one protocol message of files
    code = ("import hashlib\n"
            "def main(n):\n"
            "    data = open('data/blob.bin', 'rb').read()\n"
            "    return {'n': n, 'sha': hashlib.sha256(data).hexdigest(), 'note': open('note.txt').read()}\n")
    r = await engine.execute(req(code, files=[File(name="data/blob.bin", content=big),
                                              File(name="note.txt", content="hi")], arguments={"n": 5}))
    import hashlib

    assert r.status is Status.OK, r
    assert r.return_value == {"n": 5, "sha": hashlib.sha256(big).hexdigest(), "note": "hi"}


async def test_payloads_larger_than_a_protocol_line_go_in_pieces(engine: Engine) -> None:
    """stdin and output of 12 MiB (24 MiB of stderr), a file read back of 9 MiB: each over the protocol's
    piece size (4 MiB), so each goes in parts and is put back whole."""
    text = os.urandom(6 * 1024 * 1024).hex()  # 12 MiB of text (results carry text)
    limits = LIMITS.model_copy(update={"output_bytes": 32 * 1024 * 1024, "disk_mb": 64})
    code = "import sys\nt = sys.stdin.read()\nsys.stdout.write(t)\nsys.stderr.write(t + t)\n"
    r = await engine.execute(req(code, stdin=text, limits=limits))
    assert r.status is Status.OK, r.message
    assert r.stdout == text and r.stderr == text + text
    blob = os.urandom(9 * 1024 * 1024)
    manager = SandboxManager(engine, max_sandboxes=1)
    try:
        async with await AsyncSandbox.create("python", limits=limits, manager=manager) as sb:
            await sb.files.write("big.bin", blob)
            assert await sb.files.read("big.bin") == blob
            streamed = ""
            async for ev in sb.stream(["cat"], stdin=text):
                if ev.type == "stdout":
                    streamed += ev.data
                elif ev.type == "exit":
                    assert ev.result is not None and ev.result.stdout == text
            assert streamed == text
    finally:
        await manager.aclose()


async def test_a_timeout_kills_the_far_process_tree(engine: Engine) -> None:
    code = ("import subprocess, time\n"
            "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
            "print('started', flush=True)\n"
            "time.sleep(300)\n")
    r = await engine.execute(req(code, limits=LIMITS.model_copy(update={"wall_time_s": 2})))
    assert r.status is Status.TIMEOUT and r.stdout == "started\n", r
    assert wait_until(lambda: not far_processes(), 5), far_processes()


async def test_the_memory_limit_is_enforced_there(engine: Engine) -> None:
    r = await engine.execute(req("x = bytearray(512 * 1024 * 1024)\nprint(len(x))",
                                 limits=LIMITS.model_copy(update={"memory_mb": 64})))
    assert r.status is Status.MEMORY_LIMIT, r


async def test_a_persistent_sandbox_streams_and_keeps_files(engine: Engine) -> None:
    manager = SandboxManager(engine, max_sandboxes=2)
    try:
        async with await AsyncSandbox.create("python", limits=LIMITS, manager=manager) as sb:
            r = await sb.exec("echo kept > a.txt && echo ok")
            assert r.status is Status.OK and r.stdout == "ok\n" and r.provider == "ssh-t", r
            # the program waits for a file the test writes only once it has seen the program's first line:
            # without streaming (or with requests not multiplexed) it would time out
            program = ("import os, time\nprint('ready', flush=True)\n"
                       "while not os.path.exists('go'): time.sleep(0.02)\nprint('done')\n")
            await sb.files.write("wait.py", program)
            seen = ""
            async for ev in sb.stream(["python3", "wait.py"]):
                if ev.type == "stdout":
                    seen += ev.data
                    if seen == "ready\n":
                        await sb.files.write("go", b"")
                elif ev.type == "exit":
                    assert ev.result is not None and ev.result.status is Status.OK, ev.result
            assert seen == "ready\ndone\n"
            assert await sb.files.read("a.txt") == b"kept\n"
            names = {f.name for f in await sb.files.list(".")}
            assert names == {"a.txt", "wait.py", "go"}
            assert await sb.files.remove("a.txt") is True
            assert await sb.files.remove("a.txt") is False
            assert "a.txt" not in {f.name for f in await sb.files.list()}
    finally:
        await manager.aclose()


async def test_many_concurrent_runs_share_one_connection(engine: Engine) -> None:
    before = set(agents())  # (an earlier test's agent may still be on its way out)
    results = await asyncio.gather(*(engine.execute(req(f"print({i} * 2)")) for i in range(6)))
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)]
    assert len(set(agents()) - before) == 1


async def test_starts_given_up_on_leave_no_sandbox_there(sshd: Sshd) -> None:
    """A start cancelled at any point (before it is sent, while the far side starts it, with its answer on
    the way) leaves no sandbox on the far side: the agent stops it, or the provider closes it once it hears."""
    providers = registry(sshd)
    provider = providers.get("ssh-t")
    try:
        await (await provider.start(InstanceSpec(disk_mb=16))).close()  # connected: only the start is timed below
        spec = InstanceSpec(disk_mb=16, persistent=True, memory_mb=128, pids=16)
        for delay in (0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4):
            task = asyncio.create_task(provider.start(spec))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await (await task).close()  # it was done before the cancel
        assert await asyncio.to_thread(wait_until, lambda: not far_processes(), 10), far_processes()
        sandbox = await provider.start(spec)  # and the connection still serves
        assert (await sandbox.exec(ExecSpec(argv=("echo", "ok"), wall_time_s=5, cpu_time_s=5, memory_mb=64, pids=8,
                                            output_bytes=1024, file_size_mb=1, open_files=32))).stdout == b"ok\n"
        await sandbox.close()
    finally:
        await providers.aclose()


async def test_a_wrong_client_key_is_a_clear_error(sshd: Sshd, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other, _ = keygen(tmp_path / "other")
    providers = registry(sshd, private_key=other)
    before = set(agents())  # (an earlier test's agent may still be on its way out)
    try:
        with pytest.raises(ProviderUnavailable, match="authentication failed"):
            await Engine(providers=providers).execute(req("print(1)"))
    finally:
        await providers.aclose()
    assert set(agents()) <= before  # refused at login: no agent was started


async def test_a_missing_agent_command_is_a_clear_error(sshd: Sshd) -> None:
    providers = registry(sshd, execbox_command="/nonexistent/execbox")
    try:
        with pytest.raises(ProviderUnavailable, match=r"agent .* did not start: .*/nonexistent/execbox"):
            await Engine(providers=providers).execute(req("print(1)"))
    finally:
        await providers.aclose()


async def test_a_server_that_is_not_sshd_is_mapped(sshd: Sshd) -> None:
    """Whatever asyncssh raises (here: a peer that answers garbage, then hangs up) comes out as execbox's."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        for _ in range(2):  # the router tries it twice (one retry)
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.recv(1024)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    providers = registry(sshd, port=port)
    try:
        with pytest.raises(ProviderUnavailable, match=r"ssh://root@127\.0\.0\.1") as caught:
            await Engine(providers=providers).execute(req("print(1)"))
        assert type(caught.value.__cause__).__module__.startswith("asyncssh")
    finally:
        await providers.aclose()
        listener.close()


def test_settings_are_checked() -> None:
    with pytest.raises(RequestError, match="private_key or password"):
        parse_instance("x", "ssh", {"host": "h", "known_hosts": "h ssh-ed25519 AAAA"})
    with pytest.raises(ProviderUnavailable, match="private_key cannot be read"):
        SshProvider(parse_instance("x", "ssh", {"host": "h", "known_hosts": "h ssh-ed25519 AAAA",
                                                "private_key": "not a key"}).settings)  # type: ignore[arg-type]


async def test_isolation_none_is_refused_without_running(sshd: Sshd) -> None:
    providers = registry(sshd, isolation="none")
    try:
        with pytest.raises(IsolationError, match="not supported yet"):
            await Engine(providers=providers).execute(req("print(1)"))
    finally:
        await providers.aclose()


async def test_a_host_that_cannot_isolate_is_refused_and_passed_over(sshd: Sshd) -> None:
    """The agent not running as root (here: dropped to nobody) refuses to run anything, with the reason;
    nothing was handed over, so the next provider runs it."""
    # nobody cannot reach this interpreter (under /root here): the system's, with this one's packages
    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"{system} is not a Python {sys.version_info[:2]} that can use this venv's packages")
    path = ":".join([str(SRC), *(p for p in sys.path if p.endswith("site-packages"))])
    command = f"setpriv --reuid 65534 --regid 65534 --clear-groups env PYTHONPATH={path} {system} -m execbox.cli"
    mock = MockProvider()
    providers = ProviderRegistry(instances={"mock": mock}, configs={
        "ssh-t": parse_instance("ssh-t", "ssh", sshd.settings(execbox_command=command))}, default="ssh-t")
    engine = Engine(providers=providers, router=Router(providers, chain=["ssh-t", "mock"],
                                                       settings=RoutingSettings(retries=0)))
    try:
        with pytest.raises(IsolationError, match="cannot isolate: the agent runs as uid 65534, not root"):
            await Engine(providers=providers).execute(req("print(1)"))
        r = await engine.execute(req("print(1)"))
    finally:
        await providers.aclose()
    assert r.provider == "mock" and r.provider_attempts[0].phase == "start", r.provider_attempts


async def test_sshd_down_fails_over_before_anything_runs(own_sshd: Sshd) -> None:
    own_sshd.stop()
    mock = MockProvider()
    providers = ProviderRegistry(instances={"mock": mock}, configs={
        "ssh-t": parse_instance("ssh-t", "ssh", own_sshd.settings())}, default="ssh-t")
    engine = Engine(providers=providers, router=Router(providers, chain=["ssh-t", "mock"],
                                                       settings=RoutingSettings(retries=0)))
    try:
        r = await engine.execute(req("print(1)"))
    finally:
        await providers.aclose()
    assert r.provider == "mock" and len(mock.calls) == 1
    first = r.provider_attempts[0]
    assert first.provider == "ssh-t" and first.phase == "start" and "cannot connect" in (first.error or ""), first


async def test_a_connection_killed_mid_run_is_outcome_unknown_and_kills_the_run(own_sshd: Sshd) -> None:
    mock = MockProvider()
    providers = ProviderRegistry(instances={"mock": mock}, configs={
        "ssh-t": parse_instance("ssh-t", "ssh", own_sshd.settings())}, default="ssh-t")
    engine = Engine(providers=providers, router=Router(providers, chain=["ssh-t", "mock"]))
    try:
        run = asyncio.create_task(engine.execute(req("import time\ntime.sleep(5)\nprint('finished')")))
        assert await asyncio.to_thread(wait_until, lambda: any("main.py" in p for p in far_processes()), 30), \
            "the program never started"
        for pid in own_sshd.connection_pids():  # the connection's sshd processes, not the listener
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(OutcomeUnknown, match="connection was lost during the run"):
            await run
    finally:
        await providers.aclose()
    assert mock.calls == [] and mock.instances == [], "the fallback was given code that may have run"
    assert await asyncio.to_thread(wait_until, lambda: not far_processes(), 10), far_processes()
    assert await asyncio.to_thread(wait_until, lambda: not agents(), 10), "the agent outlived its connection"


async def test_a_lost_connection_is_opened_again(own_sshd: Sshd) -> None:
    providers = registry(own_sshd)
    engine = Engine(providers=providers)
    try:
        assert (await engine.execute(req("print(1)"))).stdout == "1\n"
        for pid in own_sshd.connection_pids():
            os.kill(pid, signal.SIGKILL)
        assert await asyncio.to_thread(wait_until, lambda: not agents(), 10)
        assert (await engine.execute(req("print(2)"))).stdout == "2\n"
    finally:
        await providers.aclose()


async def test_a_silent_connection_is_taken_for_lost_on_both_sides(own_sshd: Sshd) -> None:
    """sshd's connection processes stopped (the network gone silent, no FIN): the agent misses its heartbeats
    and kills everything it started, a background process of a sandbox included; the near side finds the
    connection dead as soon."""
    providers = registry(own_sshd, heartbeat_s=1.0)
    manager = SandboxManager(Engine(providers=providers))
    try:
        sb = await AsyncSandbox.create("python", limits=LIMITS, manager=manager)
        r = await sb.exec("(sleep 300 > /dev/null 2>&1 &) ; echo started")
        assert r.stdout == "started\n", r
        assert any("sleep 300" in p for p in far_processes())
        pids = own_sshd.connection_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            assert await asyncio.to_thread(wait_until, lambda: not far_processes() and not agents(), 15), \
                far_processes()
            provider = providers.get("ssh-t")
            assert isinstance(provider, SshProvider)
            assert await asyncio.to_thread(wait_until, lambda: not provider.connected, 15)
            with pytest.raises(SandboxError, match="connection was lost before the run"):
                await sb.exec("echo again")
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
    finally:
        await manager.aclose()
        await providers.aclose()
