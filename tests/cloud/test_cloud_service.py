"""The sandbox-service layer written once for every vendor (providers/cloud/service.py), on a box that is a
real /bin/sh in a temp dir: the command line's limits, env, stdin and cwd, and the outcome's mapping, as a
vendor sandbox would run them."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from execbox.engine import Engine
from execbox.errors import SandboxError
from execbox.models import ExecutionRequest, Limits, Status
from execbox.providers.base import ExecSpec, InstanceSpec
from execbox.providers.cloud.service import Box, Ran, Service, ServiceProvider, ServiceSettings, command_line
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import SandboxManager


class ShellBox(Box):
    """A vendor sandbox stand-in: the command lines run for real, in /bin/sh, in a temp workdir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workdir = str(root / "work")
        os.makedirs(self.workdir)
        self.killed = False
        self.lines: list[str] = []

    async def run(self, command: str, timeout_s: float) -> Ran:
        self.lines.append(command)
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            os.killpg(proc.pid, 9)
            await proc.wait()
            raise
        assert proc.returncode is not None
        return Ran(proc.returncode, out, err)

    async def write(self, path: str, data: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        p = Path(path)
        return p.read_bytes()[:max_bytes] if p.is_file() else None

    async def kill(self) -> None:
        self.killed = True
        shutil.rmtree(self.root, ignore_errors=True)


class ShellService(Service):
    def __init__(self, tmp: Path, delay_s: float = 0.0) -> None:
        self.tmp, self.delay_s = tmp, delay_s
        self.boxes: list[ShellBox] = []

    async def create(self, spec: InstanceSpec) -> Box:
        await asyncio.sleep(self.delay_s)
        box = ShellBox(self.tmp / f"box{len(self.boxes)}")
        self.boxes.append(box)
        return box


@pytest.fixture
def service(tmp_path: Path) -> ShellService:
    return ShellService(tmp_path)


def engine_on(service: Service) -> Engine:
    provider = ServiceProvider(service, ServiceSettings(extra_time_s=5))
    return Engine(providers=ProviderRegistry(default="svc", instances={"svc": provider}))


async def run(service: Service, code: str, **kw: object) -> object:
    return await engine_on(service).execute(ExecutionRequest(language="python", code=code, **kw))  # type: ignore[arg-type]


async def test_hello_stdin_env_and_the_box_is_destroyed(service: ShellService) -> None:
    r = await run(service, "import os,sys; print(sys.stdin.read().upper(), os.environ['WHO'])",
                  stdin="hi", env={"WHO": "there"})
    assert (r.status, r.stdout) == (Status.OK, "HI there\n")  # type: ignore[attr-defined]
    assert service.boxes[0].killed
    assert not list(Path("/tmp").glob(".execbox-stdin-*")), "the stdin file is unlinked once opened"


async def test_a_failing_program_is_a_runtime_error_with_its_exit_code(service: ShellService) -> None:
    r = await run(service, "import sys; print('bad', file=sys.stderr); sys.exit(3)")
    assert (r.status, r.exit_code, r.stderr) == (Status.RUNTIME_ERROR, 3, "bad\n")  # type: ignore[attr-defined]


async def test_wall_time_is_enforced_inside_the_box(service: ShellService) -> None:
    r = await run(service, "import time; time.sleep(30)", limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT and "wall time" in r.message  # type: ignore[attr-defined]
    assert r.wall_time_s < 5  # type: ignore[attr-defined]


async def test_a_program_ignoring_sigterm_past_its_wall_time_is_a_timeout(service: ShellService) -> None:
    # timeout's SIGTERM is ignored; its -k SIGKILL (sent to its own group, so timeout dies by it too) ends it
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(30)"
    r = await run(service, code, limits=Limits(wall_time_s=1))
    assert r.status is Status.TIMEOUT and "wall time" in r.message, r  # type: ignore[attr-defined]


async def test_a_sub_millisecond_wall_time_is_still_a_limit(service: ShellService) -> None:
    # formatted to 3 decimals it would read "0", which coreutils' timeout takes as no limit at all
    r = await run(service, "import time; time.sleep(3)", limits=Limits(wall_time_s=0.0001))
    assert r.status is Status.TIMEOUT and r.wall_time_s < 2.5, r  # type: ignore[attr-defined]


async def test_cpu_time_is_enforced_by_ulimit(service: ShellService) -> None:
    r = await run(service, "while True: pass", limits=Limits(cpu_time_s=1, wall_time_s=10))
    assert r.status is Status.TIMEOUT and "CPU" in r.message  # type: ignore[attr-defined]


async def test_output_over_the_cap_stops_the_run(service: ShellService) -> None:
    r = await run(service, "print('x' * 5000)", limits=Limits(output_bytes=1000))
    assert r.status is Status.OUTPUT_LIMIT and r.stdout_truncated and len(r.stdout) == 1000  # type: ignore[attr-defined]


async def test_file_size_and_open_files_are_enforced(service: ShellService) -> None:
    r = await run(service, "open('big','wb').write(b'x' * (3 * 1024 * 1024))", limits=Limits(file_size_mb=1))
    assert r.status is Status.RUNTIME_ERROR and "File too large" in r.stderr  # type: ignore[attr-defined]
    r = await run(service, "fs=[open('/dev/null') for _ in range(100)]", limits=Limits(open_files=20))
    assert r.status is Status.RUNTIME_ERROR and "Too many open files" in r.stderr  # type: ignore[attr-defined]


async def test_a_compiled_language_and_main_return_value(service: ShellService) -> None:
    c = '#include <stdio.h>\nint main(){puts("c");}'
    r = await engine_on(service).execute(ExecutionRequest(language="c", code=c))
    assert (r.status, r.stdout) == (Status.OK, "c\n")
    r = await run(service, "def main(a, b):\n    return a + b\n", arguments={"a": 2, "b": 3})
    assert (r.status, r.return_value) == (Status.OK, 5)  # type: ignore[attr-defined]


def test_the_line_quotes_what_the_program_gives() -> None:
    spec = ExecSpec(argv=("echo", "$(touch /tmp/pwned)", "a b"), wall_time_s=2, cpu_time_s=2, memory_mb=64,
                    pids=8, output_bytes=100, file_size_mb=1, open_files=64, env={"X": "'; touch /tmp/pwned; '"})
    line = command_line(spec, "/w d", None)
    assert "'$(touch /tmp/pwned)'" in line and "'/w d'" in line
    assert "'X='\"'\"'; touch /tmp/pwned; '\"'\"''" in line


async def test_a_wrapper_failure_is_the_sandboxs_not_the_programs(service: ShellService) -> None:
    engine = engine_on(service)
    provider = engine.providers.get("svc")
    instance = await provider.start(InstanceSpec(disk_mb=10))
    spec = ExecSpec(argv=("true",), wall_time_s=2, cpu_time_s=2, memory_mb=64, pids=8, output_bytes=100,
                    file_size_mb=1, open_files=64, cwd="no/such/dir")
    with pytest.raises(SandboxError, match="no such directory"):
        await instance.exec(spec)
    await instance.close()


async def test_a_persistent_sandbox_files_in_and_out(service: ShellService) -> None:
    manager = SandboxManager(engine_on(service))
    sb = await manager.create("python")
    try:
        await sb.files.write("d/in.txt", "hello")
        r = await sb.exec(["sh", "-c", "cat d/in.txt > out.txt; echo done"])
        assert (r.status, r.stdout) == (Status.OK, "done\n")
        assert await sb.files.read("out.txt") == b"hello"
        names = {(f.name, f.kind) for f in await sb.files.list(".")}
        assert {("d", "dir"), ("out.txt", "file")} <= names
        assert await sb.files.remove("d") is True
        assert await sb.files.remove("d") is False
        assert (await sb.run("x = 1\nprint(x + 1)")).stdout == "2\n"
    finally:
        await sb.destroy()
    assert service.boxes[0].killed


async def test_a_box_made_while_its_caller_was_cancelled_is_killed(tmp_path: Path) -> None:
    service = ShellService(tmp_path, delay_s=0.3)
    provider = ServiceProvider(service, ServiceSettings())
    task = asyncio.ensure_future(provider.start(InstanceSpec(disk_mb=10)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(service.boxes) == 1 and service.boxes[0].killed
