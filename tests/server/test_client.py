"""The remote client (execbox.connect / aconnect) against a real server, and get_or_create over HTTP.

The same test bodies run against the library's in-process sandboxes and the server's through the client:
code written against the library works against a server unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from tests.server.conftest import KEY, Server, free_port

import execbox
from execbox import (
    AsyncSandbox,
    AuthenticationError,
    CapacityError,
    CellStatus,
    ExecutionFailed,
    ExecutionResult,
    InvalidFileError,
    Limits,
    NotFoundError,
    RequestError,
    Sandbox,
    ServerUnreachable,
    Status,
    UnknownLanguageError,
    transport,
)
from execbox import client as client_module

API = "/api/v1/sandboxes"


def unique() -> dict[str, str]:
    return {"test": uuid.uuid4().hex[:12]}


@pytest.fixture(scope="module")
def remote(server: Server) -> Iterator[client_module.Client]:
    with execbox.connect(server.url, KEY) as c:
        yield c


@pytest.fixture(params=["library", "remote"])
def SandboxAPI(request: pytest.FixtureRequest) -> Any:
    """execbox.Sandbox in this process, or the server's through the client: the same API."""
    if request.param == "library":
        return Sandbox
    return request.getfixturevalue("remote").Sandbox


@pytest.fixture(params=["library", "remote"])
async def AsyncSandboxAPI(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "library":
        yield AsyncSandbox
        return
    async with execbox.aconnect(request.getfixturevalue("server").url, KEY) as c:
        yield c.AsyncSandbox


@pytest.fixture(params=["library", "remote"])
def run(request: pytest.FixtureRequest) -> Any:
    if request.param == "library":
        return execbox.run
    return request.getfixturevalue("remote").run


# --- one body, two backends -----------------------------------------------------------------------------------

def test_a_sandbox_session_runs_unchanged_in_process_and_over_http(SandboxAPI: Any) -> None:
    labels = unique()
    with SandboxAPI.create("python", labels=labels, ttl_s=120, limits=Limits(memory_mb=1024, wall_time_s=60)) as sb:
        assert sb.id.startswith("sb_") and sb.language == "python" and sb.labels == labels and sb.alive
        r = sb.exec("echo 'x = 41' > state.py && echo done")
        assert isinstance(r, ExecutionResult)
        assert (r.status, r.exit_code, r.stdout) == (Status.OK, 0, "done\n")
        assert sb.exec(["python3", "-c", "from state import x; print(x + 1)"]).stdout == "42\n"
        r = sb.exec("mkdir -p d && cd d && cat && echo $FOO", stdin="in\n", env={"FOO": "bar"})
        assert r.stdout == "in\nbar\n"
        assert sb.exec("pwd", cwd="d").stdout.rstrip().endswith("/d")
        r = sb.exec("echo err >&2; exit 3")
        assert (r.status, r.exit_code, r.stderr) == (Status.RUNTIME_ERROR, 3, "err\n")
        with pytest.raises(ExecutionFailed) as failed:
            sb.exec("exit 4", check=True)
        assert failed.value.result.exit_code == 4
        assert sb.exec("sleep 30", limits=Limits(wall_time_s=1)).status is Status.TIMEOUT
        assert sb.exec("echo still here").stdout == "still here\n"  # a runaway command killed, the sandbox lives
        with pytest.raises(RequestError):
            sb.exec("   ")

        blob = os.urandom(200_000) + b"\0\xff"
        sb.files.write("data/blob.bin", blob)
        assert sb.files.read("data/blob.bin") == blob
        assert sb.files.read("data/blob.bin", max_bytes=10) == blob[:10]
        assert [(f.name, f.path, f.kind, f.size_bytes) for f in sb.files.list("data")] == [
            ("blob.bin", "data/blob.bin", "file", len(blob))]
        assert {"data", "state.py", "d"} <= {f.name for f in sb.files.list()}
        sb.files.write("name with spaces#?.txt", "héllo")
        assert sb.exec(["cat", "name with spaces#?.txt"]).stdout == "héllo"
        assert sb.files.remove("name with spaces#?.txt") is True
        assert sb.files.remove("name with spaces#?.txt") is False
        with pytest.raises(NotFoundError):
            sb.files.read("name with spaces#?.txt")
        with pytest.raises(NotFoundError):
            sb.files.list("no-such-dir")
        with pytest.raises(InvalidFileError):
            sb.files.write("../escape", b"x")

        events = list(sb.stream("echo a; echo b >&2; echo c; exit 5"))
        assert "".join(e.data for e in events if e.type == "stdout") == "a\nc\n"
        assert "".join(e.data for e in events if e.type == "stderr") == "b\n"
        assert [e.type for e in events].count("exit") == 1 and events[-1].type == "exit"
        assert events[-1].result is not None and events[-1].result.exit_code == 5

        assert sb.run_code("y = 41").ok
        cell = sb.run_code("y + 1")
        assert (cell.status, cell.text) == (CellStatus.OK, "42")
        cell = sb.run_code("1 / 0")
        assert cell.status is CellStatus.ERROR and cell.error is not None and cell.error.name == "ZeroDivisionError"
        cell = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()", timeout_s=60)
        assert any(isinstance(o.get("image/png"), bytes) and o["image/png"].startswith(b"\x89PNG")
                   for o in cell.outputs), cell

        assert SandboxAPI.get(sb.id).id == sb.id
        assert [s.id for s in SandboxAPI.list(labels)] == [sb.id]
        assert sb.id in {s.id for s in SandboxAPI.list()}
        found = SandboxAPI.find(labels)
        assert found is not None and found.id == sb.id
        assert SandboxAPI.get_or_create(labels).id == sb.id
        assert SandboxAPI.find(unique()) is None
    assert not sb.alive
    with pytest.raises(NotFoundError):
        SandboxAPI.get(sb.id)
    with pytest.raises(NotFoundError):
        sb.exec("true")
    sb.destroy()  # idempotent
    assert SandboxAPI.find(labels) is None


def test_stream_delivers_output_while_the_command_runs(SandboxAPI: Any) -> None:
    """The command waits for a file the test writes only once the first chunk has arrived: without
    streaming it would run into its time limit instead."""
    with SandboxAPI.create("bash", labels=unique()) as sb:
        seen = []
        for ev in sb.stream("echo ready; while [ ! -e go ]; do sleep 0.05; done; echo done",
                            limits=Limits(wall_time_s=30)):
            seen.append(ev)
            if ev.type == "stdout" and ev.data == "ready\n":
                sb.files.write("go", b"")
        assert seen[-1].result is not None and seen[-1].result.status is Status.OK
        assert "".join(e.data for e in seen if e.type == "stdout") == "ready\ndone\n"


def test_a_program_runs_in_a_sandbox_unchanged_in_process_and_over_http(SandboxAPI: Any) -> None:
    """sb.run: the language's steps in the live sandbox (the files stay), in-process or on the server."""
    with SandboxAPI.create("c", labels=unique(), limits=Limits(wall_time_s=5)) as sb:
        r = sb.run('#include "u.h"\nint main(int c, char **v){ return f() + c; }', files={"u.h": b"int f(){return 3;}"},
                   args=["x"])
        assert (r.status, r.exit_code, r.language) == (Status.RUNTIME_ERROR, 5, "c") and r.compile is not None
        assert sorted(f.name for f in sb.files.list()) == ["main", "main.c", "u.h"]
        r = sb.run("read x; echo $x$Y", language="bash", stdin=b"hi", env={"Y": "!"})
        assert (r.status, r.stdout) == (Status.OK, "hi!\n")
        with pytest.raises(ExecutionFailed):
            sb.run("exit 1", language="bash", check=True)
        with pytest.raises(UnknownLanguageError):
            sb.run("1", language="cobol")
        with pytest.raises(RequestError):
            sb.run(None)
        assert sb.run("int main() { return }").status is Status.COMPILE_ERROR


async def test_the_async_api_runs_unchanged_in_process_and_over_http(AsyncSandboxAPI: Any) -> None:
    labels = unique()
    async with await AsyncSandboxAPI.create("bash", labels=labels) as sb:
        await sb.files.write("in.txt", "one\ntwo\n")
        assert (await sb.exec("wc -l < in.txt")).stdout.strip() == "2"
        chunks = [ev async for ev in sb.stream(["sh", "-c", "cat in.txt; exit 2"])]
        assert "".join(e.data for e in chunks if e.type == "stdout") == "one\ntwo\n"
        assert chunks[-1].result is not None and chunks[-1].result.exit_code == 2
        same = await asyncio.gather(*(AsyncSandboxAPI.get_or_create(labels) for _ in range(3)))
        assert {s.id for s in same} == {sb.id}
        assert [f.name for f in await sb.files.list()] == ["in.txt"]
        assert await sb.files.remove("in.txt") and not await sb.files.list()
    with pytest.raises(NotFoundError):
        await AsyncSandboxAPI.get(sb.id)


def test_one_shot_run_is_the_same_in_process_and_over_http(run: Any) -> None:
    r = run("print(input()[::-1])", "python", stdin="hello")
    assert (r.status, r.stdout, r.language) == (Status.OK, "olleh\n", "python")
    r = run(files={"main.c": '#include "u.h"\nint main(){return f();}', "u.h": b"int f(){return 3;}"},
            language="c")
    assert (r.status, r.exit_code) == (Status.RUNTIME_ERROR, 3) and r.compile is not None
    r = run("def main(a, b):\n    return {'sum': a + b}", "python", arguments={"a": 1, "b": 2})
    assert r.return_value == {"sum": 3}
    r = run("import sys; print(sys.argv[1:])", args=["x", "-y"], limits=Limits(wall_time_s=5))
    assert r.stdout == "['x', '-y']\n"
    with pytest.raises(ExecutionFailed):
        run("raise SystemExit(1)", check=True)
    with pytest.raises(UnknownLanguageError) as unknown:
        run("1", "cobol")
    assert "python" in unknown.value.supported
    with pytest.raises(RequestError):
        run(None, "python")


def test_none_means_nothing_in_process_and_over_http(run: Any) -> None:
    """As subprocess takes it: stdin/args/env/files None are none (`run(code, stdin=None)` was an invalid
    request)."""
    r = run("import sys, os; print(repr(sys.stdin.read()), sys.argv[1:], 'K' in os.environ)", "python",
            stdin=None, args=None, env=None, files=None)
    assert (r.status, r.stdout) == (Status.OK, "'' [] False\n"), r


def test_none_means_nothing_in_a_sandbox(SandboxAPI: Any) -> None:
    with SandboxAPI.create("bash", labels=unique(), env=None) as sb:
        r = sb.exec("cat; echo done", stdin=None, env=None)
        assert (r.status, r.stdout) == (Status.OK, "done\n"), r
        events = list(sb.stream("cat; echo streamed", stdin=None, env=None))
        assert events[-1].result is not None and events[-1].result.stdout == "streamed\n"


# --- the remote client's own behaviour ----------------------------------------------------------------------------

async def test_concurrent_get_or_create_through_the_client_makes_one_sandbox(server: Server) -> None:
    labels = unique()
    async with execbox.aconnect(server.url, KEY) as c:
        got = await asyncio.gather(*(c.AsyncSandbox.get_or_create(labels, language="bash") for _ in range(6)))
        try:
            assert len({sb.id for sb in got}) == 1
            assert len(await c.AsyncSandbox.list(labels)) == 1
        finally:
            await got[0].destroy()


def test_http_errors_are_execbox_exceptions(server: Server, remote: client_module.Client) -> None:
    with execbox.connect(server.url, "not-a-key") as bad, pytest.raises(AuthenticationError):
        bad.Sandbox.list()
    with execbox.connect(server.url, "") as none, pytest.raises(AuthenticationError):
        none.run("print(1)")
    with execbox.connect(f"http://127.0.0.1:{free_port()}", KEY) as nowhere, pytest.raises(ServerUnreachable):
        nowhere.Sandbox.list()
    with pytest.raises(UnknownLanguageError) as unknown:
        remote.Sandbox.create("cobol")
    assert "bash" in unknown.value.supported
    with pytest.raises(NotFoundError):
        remote.Sandbox.get("sb_does_not_exist")
    with pytest.raises(RequestError):  # the server's label rule, a 422
        remote.Sandbox.create("bash", labels={"bad key!": "v"})
    with pytest.raises(RequestError):
        remote.run("print(1)", arguments={"x": object()})  # not JSON
    with pytest.raises(RequestError):
        execbox.connect("ftp://example.org")


def test_capacity_and_ownership(make_server) -> None:  # type: ignore[no-untyped-def]
    other = "other-key-" + "y" * 24
    server: Server = make_server(env={"EXECBOX_API_KEY": f"{KEY},{other}", "EXECBOX_MAX_SANDBOXES_PER_KEY": "1"})
    with execbox.connect(server.url, KEY) as mine, execbox.connect(server.url, other) as theirs:
        sb = mine.Sandbox.create("bash", labels={"who": "me"})
        with pytest.raises(CapacityError):
            mine.Sandbox.create("bash")
        with pytest.raises(NotFoundError):
            theirs.Sandbox.get(sb.id)
        assert theirs.Sandbox.find({"who": "me"}) is None
        assert theirs.Sandbox.get_or_create({"who": "me"}, language="bash").id != sb.id  # its own
        sb.destroy()
        assert mine.Sandbox.create("bash").alive  # room again


def test_a_sandbox_outlives_its_client(server: Server) -> None:
    labels = unique()
    with execbox.connect(server.url, KEY) as first:
        sb_id = first.Sandbox.create("bash", labels=labels).id
        first.Sandbox.get(sb_id).exec("echo kept > f")
    with execbox.connect(server.url, KEY) as second:
        sb = second.Sandbox.get_or_create(labels)
        assert sb.id == sb_id and sb.files.read("f") == b"kept\n"
        sb.destroy()


def test_default_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: Server,
                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EXECBOX_URL", server.url)
    monkeypatch.setenv("EXECBOX_API_KEY", f"{KEY},another")
    with execbox.connect() as c:
        assert c.url == server.url and c.run("print(2)").stdout == "2\n"
    monkeypatch.delenv("EXECBOX_API_KEY")
    monkeypatch.setenv("EXECBOX_DATA_DIR", str(tmp_path))
    (tmp_path / "dev-api-key").write_text(KEY + "\n")  # what `execbox serve` writes
    with execbox.connect() as c:
        assert c.run("print(3)").stdout == "3\n"


# --- get_or_create over HTTP ------------------------------------------------------------------------------------

def test_get_or_create_over_http(client: httpx.Client) -> None:
    labels = unique()
    r = client.post(f"{API}/get_or_create", json={"language": "bash", "labels": labels, "ttl_s": 60})
    assert r.status_code == 200, r.text
    first = r.json()
    try:
        assert first["labels"] == labels and first["language"] == "bash" and first["ttl_s"] == 60
        again = client.post(f"{API}/get_or_create", json={"language": "python", "labels": labels})
        assert again.status_code == 200 and again.json()["id"] == first["id"]  # found: as it is
        assert again.json()["language"] == "bash"
        other = client.post(f"{API}/get_or_create", json={"language": "bash", "labels": {**labels, "n": "2"}})
        assert other.status_code == 200 and other.json()["id"] != first["id"]
        client.delete(f"{API}/{other.json()['id']}")
        bad = client.post(f"{API}/get_or_create", json={"language": "bash", "labels": labels, "ttl_s": -1})
        assert bad.status_code == 422
    finally:
        client.delete(f"{API}/{first['id']}")


def test_simultaneous_get_or_create_requests_make_one_sandbox(server: Server) -> None:
    labels, n = unique(), 6
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []

    def ask() -> None:
        with server.client() as c:
            barrier.wait()
            answers.append(c.post(f"{API}/get_or_create", json={"language": "bash", "labels": labels}))

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with server.client() as c:
        listed = c.get(API, params={"label": [f"{k}:{v}" for k, v in labels.items()]}).json()["sandboxes"]
        for info in listed:
            c.delete(f"{API}/{info['id']}")
    assert [a.status_code for a in answers] == [200] * n
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(listed) == 1


def test_get_or_create_is_in_the_openapi(client: httpx.Client) -> None:
    op = client.get("/openapi.json").json()["paths"][f"{API}/get_or_create"]["post"]
    assert "200" in op["responses"] and "429" in op["responses"]
    assert "Concurrent calls" in op["description"]


def test_one_table_maps_statuses_and_exceptions_both_ways() -> None:
    """What the server answers for an exception, the client reads back as that kind of exception."""
    from execbox import errors
    from execbox.wire import ERROR_STATUS, error_of, status_of

    for cls in (errors.NotFoundError, errors.RequestError, errors.CapacityError, errors.ProviderUnavailable,
                errors.SandboxError, errors.IsolationError, errors.InvalidFileError, errors.AuthenticationError,
                errors.AtCapacity, errors.RateLimited):
        status, retry = status_of(cls("x"))
        back = error_of(status, retry is not None)
        assert back is not None and issubclass(cls, back), (cls, status, back)
    assert (error_of(503, True), error_of(503, False)) == (errors.AtCapacity, errors.ProviderUnavailable)
    assert error_of(422, False) is errors.RequestError and error_of(418, False) is None
    assert {cls for cls, _, _ in ERROR_STATUS} >= {errors.ExecboxError}
    err = transport._http_error(429, {}, b'{"detail": "slow down"}', None)
    assert isinstance(err, errors.CapacityError) and "slow down" in str(err)


def test_the_client_serialises_the_wire_models() -> None:
    """The execute body is ExecutionRequest's fields (not written again), env spelt as the library's."""
    from execbox.models import ExecutionRequest, File
    from execbox.wire import ExecuteBody

    assert set(ExecutionRequest.model_fields) <= set(ExecuteBody.model_fields)
    req = ExecutionRequest(language="python", code="x", env={"A": "1"}, files=[File(name="b", content=b"\xff")],
                           limits=Limits(pids=3))
    body = client_module._dump(ExecuteBody.of(req))
    assert body["env"] == {"A": "1"} and "environment" not in body and body["limits"] == {"pids": 3}
    assert body["files"] == [{"name": "b", "content": "/w==", "encoding": "base64"}]
    assert ExecuteBody.model_validate(body).to_request() == req


# --- the surface: parity with the library and between the client's sync and async faces ---------------------

def _params(f: Any) -> list[tuple[str, Any, Any, Any]]:
    sig = inspect.signature(f, eval_str=True)
    return [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]


def test_the_remote_api_has_the_librarys_names_and_signatures() -> None:
    """Both against execbox.protocol: tests/test_public_api.py; here the one-shot run."""
    assert _params(execbox.arun) == _params(client_module.AsyncClient.run)[1:]  # but self
    # (id, labels, language, alive: checked on live sandboxes by the tests above)


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and (
        callable(inspect.getattr_static(cls, n)) or isinstance(inspect.getattr_static(cls, n), classmethod))}


@pytest.mark.parametrize(("sync_cls", "async_cls"), [
    (client_module.Client, client_module.AsyncClient), (client_module.RemoteSandbox, client_module.AsyncSandboxes),
    (client_module.RemoteSandbox, client_module.RemoteAsyncSandbox),
    (client_module.RemoteFiles, client_module.RemoteAsyncFiles)])
def test_the_clients_sync_face_matches_its_async_core(sync_cls: type, async_cls: type) -> None:
    shared = {n for n in _public(async_cls) if inspect.iscoroutinefunction(getattr(async_cls, n))
              or inspect.isasyncgenfunction(getattr(async_cls, n))} - {"aclose"}
    assert shared <= _public(sync_cls)
    if async_cls is client_module.AsyncSandboxes:  # the constructors: the backend's **options added
        for name in shared:
            sm, am = getattr(sync_cls, name), getattr(async_cls, name)
            assert _params(sm)[:-1] == _params(am)[1:] and _params(sm)[-1][0] == "options", name
            assert sm.__doc__ == am.__doc__, name
        return
    for name in shared:
        sm, am = getattr(sync_cls, name), getattr(async_cls, name)
        assert not inspect.iscoroutinefunction(sm) and not inspect.isasyncgenfunction(sm), name
        assert _params(sm) == _params(am), name
        assert sm.__doc__ == am.__doc__, name
        ret_s = str(inspect.signature(sm, eval_str=True).return_annotation)
        ret_a = str(inspect.signature(am, eval_str=True).return_annotation)
        assert ret_s == ret_a.replace("AsyncSandbox", "Sandbox").replace("AsyncIterator", "Iterator"), name
    assert _params(execbox.connect) == _params(execbox.aconnect)
