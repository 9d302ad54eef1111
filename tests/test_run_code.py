"""run_code (issue 5): a stateful IPython kernel in a persistent sandbox, on the real local provider (real
bubblewrap, cgroups, ipykernel and jupyter_client from Debian inside the sandbox) and on docker (its python
image) where dockerd runs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator

import pytest
from tests.providers import docker_provider_or_skip, local_provider

from execbox import AsyncSandbox, CellResult, CellStatus, Engine, Limits, NotFoundError, RequestError, Sandbox
from execbox.providers.base import Provider
from execbox.providers.local import LocalProvider
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import SandboxManager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="persistent local sandboxes need root (uids, cgroups)")

LIMITS = Limits(wall_time_s=30, cpu_time_s=60, memory_mb=512, pids=128, disk_mb=128)
PNG = b"\x89PNG\r\n\x1a\n"
COUNT_KERNELS = ("import os\n"
                 "n = 0\n"
                 "for p in filter(str.isdigit, os.listdir('/proc')):\n"
                 "    if p == str(os.getpid()):\n"
                 "        continue  # this very program names the kernel too\n"
                 "    try:\n"
                 "        n += b'ipykernel_launcher' in open(f'/proc/{p}/cmdline', 'rb').read()\n"
                 "    except OSError:\n"
                 "        pass\n"
                 "print(n)")


def _docker() -> Iterator[Provider]:
    """The docker provider, when dockerd runs, it keeps sandboxes and its python image (with the kernel) is built."""
    for p in docker_provider_or_skip("python"):
        if not p.supports_persistent:
            pytest.skip("docker keeps no sandboxes here")
        yield p

# SIGKILL one of the kernel's processes and wait until it is gone: reaped, or a zombie (an empty command line)
# whose other threads have all exited too (its descriptors, the bridge's listening socket, close with the last
# thread: a leader already a zombie beside exiting ZMQ threads still accepted a connection)
KILL = ("pid=$(cat /tmp/.execbox-kernel/{name}.pid); kill -9 $pid; "
        "for _ in $(seq 1000); do ! grep -q . /proc/$pid/cmdline 2>/dev/null && "
        "[ $(ls /proc/$pid/task 2>/dev/null | wc -l) -le 1 ] && break; sleep 0.01; done")


@pytest.fixture(scope="module", params=["local", "docker"])
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    """run_code reaches the kernel through Instance.exec only: the same tests on both providers."""
    if request.param == "docker":
        yield from _docker()
        return
    p = local_provider("run-code", warm_pool=0, sandbox_pool=0)
    yield p
    shutil.rmtree(p.runtime, ignore_errors=True)


@pytest.fixture
async def manager(provider: Provider) -> AsyncIterator[SandboxManager]:
    """A manager on the test provider, passed to each sandbox; at the end nothing is left (the
    kernel and its bridge are background processes of the sandbox: they go with it)."""
    m = SandboxManager(Engine(providers=ProviderRegistry(instances={provider.name: provider},
                                                         default=provider.name)), max_sandboxes=4)
    yield m
    await m.aclose()
    if isinstance(provider, LocalProvider):
        assert not list((provider.runtime / "instances").iterdir()), "a sandbox left its workdir"
        assert provider.slots is not None and not provider.slots.held, "a sandbox left its uid held"
        me = f"{os.getpid()}-"
        for base in provider.cgroups.bases.values():
            assert not [d for d in base.iterdir() if d.name.startswith(me)], "a sandbox left a cgroup"


@pytest.fixture
async def sb(manager: SandboxManager) -> AsyncIterator[AsyncSandbox]:
    async with await AsyncSandbox.create("python", limits=LIMITS, manager=manager) as box:
        yield box


async def kernels(sb: AsyncSandbox) -> int:
    """ipykernel processes alive in the sandbox."""
    return int((await sb.exec(["python3", "-c", COUNT_KERNELS])).stdout)


async def test_state_persists_between_cells(sb: AsyncSandbox) -> None:
    first = await sb.run_code("x = 41")
    assert first.status is CellStatus.OK and first.ok and first.text is None and first.outputs == []
    second = await sb.run_code("x + 1")
    assert second.text == "42" and second.outputs == [{"text/plain": "42"}]
    assert second.execution_count == first.execution_count + 1  # type: ignore[operator]
    assert not first.restarted and not second.restarted and second.message is None
    # one kernel, whose files live outside the workdir; the cells' cwd is the workdir
    assert await kernels(sb) == 1
    assert await sb.files.list() == []
    await sb.files.write("helper.py", "def twice(v):\n    return 2 * v\n")
    assert (await sb.run_code("import os, helper\nprint(os.getcwd())\nhelper.twice(x)")).text == "82"
    assert (await sb.run_code("open('out.txt', 'w').write('from the kernel')")).ok
    assert await sb.files.read("out.txt") == b"from the kernel"


async def test_a_matplotlib_figure_comes_back_as_png(sb: AsyncSandbox) -> None:
    r = await sb.run_code("import matplotlib, matplotlib.pyplot as plt\n"
                          "plt.plot([1, 2, 3], [1, 4, 9]); plt.title('squares'); plt.show()")
    assert r.ok, r
    pngs = [o["image/png"] for o in r.outputs if "image/png" in o]
    assert len(pngs) == 1 and pngs[0].startswith(PNG) and len(pngs[0]) > 1000
    # the cache lands in the sandbox's /tmp, not in a (possibly read-only) home; the inline backend
    where = await sb.run_code("print(matplotlib.get_configdir(), matplotlib.get_backend())")
    assert where.stdout.split() == ["/tmp/.execbox-kernel/matplotlib", "module://matplotlib_inline.backend_inline"]
    # a figure as the cell's value: an execute_result with its PNG
    fig = await sb.run_code("fig, ax = plt.subplots(); ax.bar(['a', 'b'], [3, 5]); fig")
    assert fig.ok and fig.text is not None and fig.text.startswith("<Figure")
    assert any(o.get("image/png", b"").startswith(PNG) for o in fig.outputs)
    # in JSON the PNG is base64 text, and it comes back as the same bytes
    doc = json.loads(r.model_dump_json())
    assert isinstance(doc["outputs"][0]["image/png"], str)
    assert CellResult.model_validate_json(r.model_dump_json()) == r


async def test_an_exception_is_data_with_its_traceback(sb: AsyncSandbox) -> None:
    r = await sb.run_code("def f(d):\n    return 1 / d\n\nf(0)")
    assert r.status is CellStatus.ERROR and not r.ok
    assert r.error is not None and (r.error.name, r.error.value) == ("ZeroDivisionError", "division by zero")
    tb = "\n".join(r.error.traceback)
    assert "f(0)" in tb and "return 1 / d" in tb and "\x1b[" not in tb  # no terminal colours
    syntax = await sb.run_code("def (")
    assert syntax.status is CellStatus.ERROR and syntax.error is not None and syntax.error.name == "SyntaxError"
    no_stdin = await sb.run_code("input('name? ')")  # nobody to answer: an error, not a hang
    assert no_stdin.status is CellStatus.ERROR
    assert (await sb.run_code("f(2)")).text == "0.5"  # the kernel lives on


async def test_stdout_stderr_and_rich_outputs(sb: AsyncSandbox) -> None:
    r = await sb.run_code("import sys, warnings\n"
                          "print('to stdout'); print('to stderr', file=sys.stderr)\n"
                          "warnings.warn('careful')\n"
                          "from IPython.display import HTML, display\n"
                          "display(HTML('<b>bold</b>'))\n"
                          "import pandas as pd, numpy as np\n"
                          "pd.DataFrame({'n': np.arange(3)})")
    assert r.ok, r
    assert r.stdout == "to stdout\n"
    assert "to stderr" in r.stderr and "careful" in r.stderr
    assert r.outputs[0]["text/html"] == "<b>bold</b>"
    assert r.outputs[-1]["text/html"].lstrip().startswith("<div>") and "<table" in r.outputs[-1]["text/html"]
    assert r.text is not None and r.text.split() == ["n", "0", "0", "1", "1", "2", "2"]


async def test_output_past_the_cap_is_dropped(manager: SandboxManager) -> None:
    limits = LIMITS.model_copy(update={"output_bytes": 64 * 1024})
    async with await AsyncSandbox.create("python", limits=limits, manager=manager) as sb:
        r = await sb.run_code("for i in range(20000):\n    print('line', i)\n'done'")
        assert r.ok and r.truncated and r.text == "'done'"
        assert r.stdout.startswith("line 0\n") and 10_000 < len(r.stdout) < 64 * 1024
        small = await sb.run_code("print('small')")
        assert small.stdout == "small\n" and not small.truncated


async def test_a_cell_past_its_timeout_is_interrupted_and_the_state_survives(sb: AsyncSandbox) -> None:
    await sb.run_code("y = 5")
    r = await sb.run_code("import time\nfor _ in range(600):\n    time.sleep(0.1)", timeout_s=1)
    assert r.status is CellStatus.TIMEOUT and r.error is not None and r.error.name == "KeyboardInterrupt"
    assert r.message is not None and "interrupted" in r.message and not r.restarted
    after = await sb.run_code("y")
    assert after.text == "5" and not after.restarted
    assert (await sb.exec("echo alive")).stdout == "alive\n"


async def test_a_cell_ignoring_the_interrupt_gets_its_kernel_killed(sb: AsyncSandbox) -> None:
    await sb.run_code("y = 5")
    r = await sb.run_code("import time\n"
                          "while True:\n"
                          "    try:\n"
                          "        time.sleep(0.1)\n"
                          "    except KeyboardInterrupt:\n"
                          "        pass", timeout_s=1)
    assert r.status is CellStatus.TIMEOUT and r.message is not None and "kernel was killed" in r.message
    after = await sb.run_code("y")
    assert after.restarted and after.message is not None and "a new kernel was started" in after.message
    assert after.status is CellStatus.ERROR and after.error is not None and after.error.name == "NameError"
    assert (await sb.run_code("1 + 1")).text == "2" and await kernels(sb) == 1


async def test_a_kernel_that_dies_is_restarted_by_the_next_cell(sb: AsyncSandbox) -> None:
    await sb.run_code("z = 1")
    died = await sb.run_code("import os\nos._exit(3)")
    assert died.status is CellStatus.KERNEL_DIED and not died.restarted
    assert died.message is not None and "exited with status 3" in died.message
    after = await sb.run_code("z = 2\nz")
    assert after.ok and after.text == "2" and after.restarted and after.execution_count == 1
    assert after.message is not None and "status 3" in after.message
    # killed between cells, from outside the kernel: the next cell notices and starts a new one
    await sb.exec(KILL.format(name="kernel"))
    again = await sb.run_code("'z' in dir()")
    if again.status is CellStatus.KERNEL_DIED:  # the bridge had not seen the death yet: it is this cell's, said so
        assert again.message is not None and "SIGKILL" in again.message and not again.restarted, again
        again = await sb.run_code("'z' in dir()")
    else:
        assert "between cells" in (again.message or ""), again
    assert again.text == "False" and again.restarted, again
    # the bridge itself killed: the host starts a new one (and the orphaned kernel is not left behind)
    await sb.exec(KILL.format(name="bridge"))
    last = await sb.run_code("40 + 2")
    assert last.text == "42" and last.restarted and "bridge" in (last.message or "")
    assert not (await sb.run_code("1")).restarted
    assert await kernels(sb) == 1


async def test_the_memory_limit_kills_the_kernel_not_the_sandbox(manager: SandboxManager) -> None:
    limits = LIMITS.model_copy(update={"memory_mb": 256})
    async with await AsyncSandbox.create("python", limits=limits, manager=manager) as sb:
        await sb.run_code("keep = 1")
        r = await sb.run_code("blob = b'x' * (600 << 20)")
        assert r.status is CellStatus.KERNEL_DIED and r.message is not None and "memory" in r.message
        after = await sb.run_code("'keep' in dir()")
        assert after.text == "False" and after.restarted
        assert (await sb.exec("echo alive")).stdout == "alive\n"


async def test_bad_input_is_a_request_error(manager: SandboxManager, sb: AsyncSandbox) -> None:
    for code, timeout in (("x\0", None), ("\ud800", None), ("1", 0), ("1", -1)):
        with pytest.raises(RequestError):
            await sb.run_code(code, timeout_s=timeout)
    async with await AsyncSandbox.create("bash", limits=LIMITS, manager=manager) as shell:
        with pytest.raises(RequestError, match="runs Python"):
            await shell.run_code("1")


async def test_limits_too_small_for_a_kernel_are_the_requests_error(manager: SandboxManager) -> None:
    limits = LIMITS.model_copy(update={"memory_mb": 16})
    async with await AsyncSandbox.create("python", limits=limits, manager=manager) as sb:
        with pytest.raises(RequestError, match="could not start within this sandbox's limits"):
            await sb.run_code("1")
        assert (await sb.exec("echo alive")).stdout == "alive\n"


async def test_a_sandbox_destroyed_during_a_cell_is_not_found(sb: AsyncSandbox) -> None:
    assert (await sb.run_code("1")).ok
    cell = asyncio.create_task(sb.run_code("import time; time.sleep(25)"))
    await asyncio.sleep(1)  # the cell is running (were it not yet, the error is the same NotFoundError)
    await sb.destroy()
    with pytest.raises(NotFoundError, match="destroyed"):  # not a SandboxError (a 500 over HTTP)
        await cell


def test_the_sync_facade(manager: SandboxManager) -> None:
    with Sandbox.create("python", limits=LIMITS, manager=manager) as box:
        assert box.run_code("x = 41").ok
        assert box.run_code("x + 1").text == "42"
        assert box.run_code("1 / 0").error is not None


BURN_CELL = ("import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
             "round(time.process_time())")


async def test_each_cell_gets_its_timeout_of_cpu_time_not_the_kernel(manager: SandboxManager) -> None:
    """`timeout_s` is the cell's wall time and its CPU time, as `timeout` is everywhere: a sandbox whose CPU
    time is 4 s runs cell after cell of 2 s of CPU in one kernel (the kernel's lifetime rlimit was the
    sandbox's CPU time: the second cell killed it), and a cell past its timeout's CPU time is stopped."""
    limits = Limits(wall_time_s=30, cpu_time_s=4, memory_mb=512, pids=128, disk_mb=128)
    async with await AsyncSandbox.create("python", limits=limits, manager=manager) as box:
        for _ in range(3):
            r = await box.run_code(BURN_CELL.format(s=2), timeout_s=20)
            assert r.ok and not r.restarted, r
        assert int(r.text or 0) >= 6  # one kernel burnt all three cells' CPU
        spin = await box.run_code(BURN_CELL.format(s=60), timeout_s=3)
        assert spin.status is CellStatus.TIMEOUT and "3 s" in (spin.message or ""), spin
        assert (await box.run_code("1 + 1")).text == "2"
