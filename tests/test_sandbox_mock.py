"""The sandbox manager and AsyncSandbox above the provider boundary, on the mock provider (no root needed):
what reaches the provider, the files API, the fallback stream, refusals. The real thing: test_sandbox.py."""

from __future__ import annotations

import pytest

from execbox import Engine, Limits, NotFoundError, RequestError, Status
from execbox.languages import LanguageRegistry
from execbox.providers.mock import MockProvider
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
