"""The sandbox manager and AsyncSandbox above the provider boundary, on the mock provider (no root needed):
what reaches the provider, the files API, the fallback stream, refusals. The real thing: test_sandbox.py."""

from __future__ import annotations

import pytest

from execbox import Engine, Limits, NotFoundError, RequestError, SandboxError, Status, UnknownLanguageError
from execbox.languages import LanguageRegistry
from execbox.providers.mock import MockProvider, echo
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import SandboxManager


class OneShotOnly(MockProvider):
    name = "oneshot"
    supports_persistent = False


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch, tmp_path) -> SandboxManager:
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(tmp_path))
    providers = ProviderRegistry(instances={"mock": MockProvider(), "oneshot": OneShotOnly()}, default="mock")
    return SandboxManager(Engine(providers=providers, languages=LanguageRegistry.load()), max_sandboxes=2)


async def test_exec_reaches_the_provider_with_the_sandbox_limits_tightened_per_exec(manager) -> None:
    sb = await manager.create("python", limits=Limits(wall_time_s=5, memory_mb=256), env={"A": "1"})
    provider = manager.engine.providers.get("mock")
    instance = provider.instances[-1]
    assert instance.spec.persistent and instance.spec.memory_mb == 256 and instance.spec.disk_mb == 256
    r = await sb.exec("echo hi", stdin="in", env={"B": "2"}, limits=Limits(wall_time_s=60, memory_mb=64))
    assert r.status is Status.OK and r.stdout == "/bin/sh -c echo hi\nin" and r.provider == "mock"
    spec = provider.calls[-1]
    assert spec.wall_time_s == 5 and spec.memory_mb == 64  # tightened, never widened
    assert spec.env["A"] == "1" and spec.env["B"] == "2"
    await sb.exec(["ls", "-l"], cwd="sub")
    assert provider.calls[-1].argv == ("ls", "-l") and provider.calls[-1].cwd == "sub"
    for bad in ("", "   ", []):
        with pytest.raises(RequestError):
            await sb.exec(bad)
    with pytest.raises(RequestError):
        await sb.exec("true", cwd="../x")
    events = [e async for e in sb.stream("echo x")]  # the provider's fallback: everything at the end
    assert [e.type for e in events] == ["stdout", "exit"]
    await sb.destroy()
    assert instance.closed and len(manager) == 0


async def test_files_api(manager) -> None:
    sb = await manager.create("python")
    await sb.files.write("a/b.txt", "text")
    await sb.files.write("c.bin", b"\0\1")
    assert await sb.files.read("a/b.txt") == b"text"
    assert [(f.name, f.path, f.kind, f.size_bytes) for f in await sb.files.list()] == [
        ("a", "a", "dir", 0), ("c.bin", "c.bin", "file", 2)]
    assert [f.path for f in await sb.files.list("a")] == ["a/b.txt"]
    assert await sb.files.remove("a") and not await sb.files.remove("a")
    with pytest.raises(NotFoundError):
        await sb.files.read("a/b.txt")
    with pytest.raises(NotFoundError):
        await sb.files.list("a")
    with pytest.raises(RequestError):
        await sb.files.write("../escape", b"")
    await manager.aclose()


async def test_refusals(manager) -> None:
    with pytest.raises(RequestError, match="cannot keep sandboxes"):
        await manager.create("python", provider="oneshot")
    with pytest.raises(RequestError):
        await manager.create("python", ttl_s=0)
    with pytest.raises(RequestError):
        await manager.create("python", labels={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(RequestError, match="labels"):  # the HTTP API's rule of labels, in process too
        await manager.create("python", labels={"bad key!": "v"})
    assert len(manager) == 0


async def test_run_compiles_and_runs_in_the_sandbox_through_the_engines_steps(manager) -> None:
    """sb.run: the language's steps in the sandbox's one instance (the files stay), its limits the sandbox's
    tightened by the run's, the sandbox's env under the run's."""
    sb = await manager.create("python", limits=Limits(wall_time_s=5, memory_mb=256), env={"A": "1"})
    provider = manager.engine.providers.get("mock")
    instance = provider.instances[-1]
    r = await sb.run("int main(){}", language="c", files={"util.h": "#define X 1"}, stdin="in", args=["-v"],
                     env={"B": "2"}, limits=Limits(wall_time_s=60, memory_mb=64))
    assert r.status is Status.OK and r.language == "c" and r.provider == "mock"
    assert r.compile is not None and r.compile.stdout.startswith("gcc ")
    assert r.stdout == "./main -v\nin"
    assert len(provider.instances) == 1  # no new instance: the sandbox's
    assert instance.files == {"util.h": b"#define X 1", "main.c": b"int main(){}"}
    built, ran = provider.calls[-2:]
    assert built.argv[0] == "gcc" and "main.c" in built.argv
    assert ran.argv == ("./main", "-v") and ran.stdin == b"in"
    assert ran.wall_time_s == 5 and ran.memory_mb == 64  # tightened, never widened
    assert ran.env["A"] == "1" and ran.env["B"] == "2" and built.env["A"] == "1"
    r = await sb.run("print(1)")  # the sandbox's language by default
    assert r.language == "python" and provider.calls[-1].argv == ("python3", "main.py")
    assert instance.files["main.py"] == b"print(1)" and "main.c" in instance.files  # earlier files stay
    await sb.destroy()
    with pytest.raises(NotFoundError):
        await sb.run("print(1)")


async def test_run_refuses_bad_input_before_running(manager) -> None:
    sb = await manager.create("python")
    provider = manager.engine.providers.get("mock")
    before = len(provider.calls)
    with pytest.raises(UnknownLanguageError):
        await sb.run("x", language="cobol")
    with pytest.raises(RequestError, match="invalid request"):
        await sb.run("x", files={"../evil": "x"})
    with pytest.raises(RequestError, match="no test command"):
        await sb.run("x", language="bash", command="test")
    with pytest.raises(RequestError, match="given twice"):
        await sb.run("x", files={"main.py": "y"})
    assert len(provider.calls) == before
    await manager.aclose()


async def test_run_reads_this_runs_return_value_never_an_earlier_ones(manager) -> None:
    def answer(spec, files):  # main() returns only when the argument says so
        if b'"ret": true' in files.get(".execbox_args.json", b""):
            files[".execbox_return.json"] = b'{"v": 1}'
        return echo(spec, files)

    manager.engine.providers.get("mock").handler = answer
    sb = await manager.create("python")
    assert (await sb.run("def main(ret): pass", arguments={"ret": True})).return_value == {"v": 1}
    r = await sb.run("def main(ret): pass", arguments={"ret": False})
    assert r.status is Status.RUNTIME_ERROR and r.return_value is None and "did not return" in r.message
    await manager.aclose()


async def test_a_provider_failure_is_a_sandbox_error(manager) -> None:
    def broken(spec, files):
        raise OSError("disk on fire")

    sb = await manager.create("python")
    manager.engine.providers.get("mock").handler = broken
    for op in (sb.exec("true"), sb.run("print(1)")):
        with pytest.raises(SandboxError, match=r"provider .mock. failed.*disk on fire"):
            await op
    with pytest.raises(SandboxError, match=r"provider .mock. failed.*disk on fire"):
        [e async for e in sb.stream("true")]
    await manager.aclose()


def test_the_blocking_facade_runs_the_implementations_and_manager_is_the_one_passed(manager) -> None:
    """execbox.Sandbox over AsyncSandbox: each method reaches the sandbox's own (not the protocol's stub), and
    manager= keeps everything in that manager (the library's default one is left alone)."""
    from execbox import Sandbox
    from execbox.sandbox import default_manager

    before = len(default_manager())
    with Sandbox.create("python", labels={"b": "1"}, manager=manager) as sb:
        assert sb.exec("echo hi").stdout == "/bin/sh -c echo hi\n"
        sb.files.write("a.txt", "x")
        assert sb.files.read("a.txt") == b"x" and [f.name for f in sb.files.list()] == ["a.txt"]
        assert sb.run("print(1)").stdout == "python3 main.py\n"
        assert [e.type for e in sb.stream("true")] == ["stdout", "exit"]
        assert sb.files.remove("a.txt") and not sb.files.remove("a.txt")
        assert len(manager) == 1 and len(default_manager()) == before
        assert Sandbox.get(sb.id, manager=manager).id == sb.id
        assert Sandbox.find({"b": "1"}, manager=manager).id == sb.id  # type: ignore[union-attr]
        assert [s.id for s in Sandbox.list(manager=manager)] == [sb.id]
        assert Sandbox.get_or_create({"b": "1"}, manager=manager).id == sb.id
        assert Sandbox.find({"b": "1"}) is None  # not in the default manager
        assert repr(sb).startswith("<Sandbox sb_")
    assert not sb.alive and len(manager) == 0
