"""A provider that runs nothing: for testing everything above the provider boundary (engine, API, CLI).

Give it a handler that turns an ExecSpec (and the instance's files) into a ProcessOutcome; the default one
echoes the argv and stdin, so tests can see exactly what the core asked the provider to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from execbox.errors import SandboxError
from execbox.providers.base import ExecSpec, FileEntry, Instance, InstanceSpec, ProcessOutcome, Provider

Handler = Callable[[ExecSpec, dict[str, bytes]], ProcessOutcome]


def echo(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
    out = (" ".join(spec.argv) + "\n").encode() + spec.stdin
    return ProcessOutcome(exit_code=0, signal=None, stdout=out, stderr=b"", stdout_truncated=False,
                          stderr_truncated=False, wall_time_s=0.0, cpu_time_s=0.0, max_rss_mb=0.0)


class MockInstance(Instance):
    def __init__(self, provider: MockProvider, spec: InstanceSpec) -> None:
        self.provider, self.spec = provider, spec
        self.files: dict[str, bytes] = {}
        self.closed = False

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        self.files.update(files)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        data = self.files.get(path)
        return None if data is None else data[:max_bytes]

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        self.provider.calls.append(spec)
        return self.provider.handler(spec, self.files)

    async def list_files(self, path: str) -> list[FileEntry]:
        prefix = "" if path in ("", ".") else path.rstrip("/") + "/"
        if prefix and not any(k.startswith(prefix) for k in self.files):
            raise SandboxError(f"{path!r} is not a directory")
        entries: dict[str, FileEntry] = {}
        for k, v in self.files.items():
            if k.startswith(prefix):
                head, sep, _ = k[len(prefix):].partition("/")
                entries[head] = FileEntry(head, "dir", 0) if sep else FileEntry(head, "file", len(v))
        return [entries[n] for n in sorted(entries)]

    async def remove_file(self, path: str) -> bool:
        gone = [k for k in self.files if k == path or k.startswith(path.rstrip("/") + "/")]
        for k in gone:
            del self.files[k]
        return bool(gone)

    async def close(self) -> None:
        self.closed = True


class MockProvider(Provider):
    name = "mock"
    supports_persistent = True  # an instance keeps its files across execs (the handler sees them)

    def __init__(self, handler: Handler = echo) -> None:
        self.handler = handler
        self.calls: list[ExecSpec] = []
        self.instances: list[MockInstance] = []

    async def start(self, spec: InstanceSpec) -> MockInstance:
        inst = MockInstance(self, spec)
        self.instances.append(inst)
        return inst


def from_settings(settings: object = None) -> MockProvider:
    """The mock kind's factory (it has nothing to set)."""
    return MockProvider()
