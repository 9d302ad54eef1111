"""One program through three providers in one run: local (in this process), ssh (a real sshd on loopback, the
far side's execbox agent driving this host's local provider) and remote (a second real `execbox serve`).
The rounds are interleaved (local, ssh, remote, local, ...) so the machine's noise falls on all three alike;
the far sides keep warm pools as the local provider does. Writes its section of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_providers.py [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' sshd helper

from benchmarks.common import REPORT, machine, pct, start_server, write_section
from tests.ssh.conftest import SRC, Sshd

from execbox import Engine, ExecutionRequest, ExecutionResult
from execbox.providers.registry import ProviderRegistry, parse_instance

KEY = "bench-key-" + "x" * 24
HELLO = ExecutionRequest(language="python", code="print('hello')")
C_PROGRAM = ExecutionRequest(language="c", code='#include <stdio.h>\nint main(void){puts("hello");return 0;}\n')


class Pinned:
    """An engine's executions pinned to one provider."""

    def __init__(self, engine: Engine, provider: str) -> None:
        self.engine, self.provider = engine, provider

    async def execute(self, request: ExecutionRequest) -> ExecutionResult:
        return await self.engine.execute(request.model_copy(update={"provider": self.provider}))


async def measure(engines: dict[str, Pinned], request: ExecutionRequest, runs: int, progress: Progress,
                  ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in engines}
    task = progress.add_task(f"{request.language}: {' / '.join(engines)}", total=runs * len(engines))
    for name, engine in engines.items():  # warm: the agent started, connections and pools up
        for _ in range(3):
            assert (await engine.execute(request)).ok, name
    for _ in range(runs):
        for name, engine in engines.items():
            start = time.perf_counter()
            result = await engine.execute(request)
            times[name].append((time.perf_counter() - start) * 1000)
            assert result.ok and result.stdout == "hello\n", (name, result)
            progress.advance(task)
    return times


def render(figures: dict[str, dict[str, list[float]]], runs: int) -> str:
    lines = ["## Providers: local, ssh and remote, the same program",
             "",
             f"`benchmarks/bench_providers.py`, {runs} runs per provider and program, interleaved round by round "
             "in one run (so the machine's noise falls on all three alike), after 3 warm-up runs; milliseconds "
             "from `Engine.execute` called to result, in this process. **ssh**: a real OpenSSH sshd on "
             "127.0.0.1, host key pinned, the far side's `execbox agent` (one per connection) driving that "
             "host's local provider, here this same machine. **remote**: a second `execbox serve` on loopback, "
             "the whole request in one POST with an Idempotency-Key. Every far side keeps the same warm pools "
             "as the local provider (2 pre-started sandboxes).",
             "",
             f"Measured {datetime.date.today()} on {machine()} (load average {os.getloadavg()[0]:.1f}).",
             "",
             "| program | provider | p50 ms | p95 ms | min ms | p50 / local |",
             "|---|---|---|---|---|---|"]
    for program, times in figures.items():
        base = pct(times["local"], 50)
        for name, xs in times.items():
            lines.append(f"| {program} | {name} | {pct(xs, 50):.1f} | {pct(xs, 95):.1f} | {min(xs):.1f} | "
                         f"{pct(xs, 50) / base:.2f}x |")
    lines += ["", "The ssh and remote figures include everything the far side does (its sandbox and its "
              "program) plus the hop: their difference from local is the cost of the hop."]
    return "\n".join(lines)


async def run(runs: int, tmp: Path) -> dict[str, dict[str, list[float]]]:
    sshd = Sshd(tmp / "sshd").start()
    (tmp / "far").mkdir()
    proc, port = start_server(tmp / "far", KEY)
    command = f"env PYTHONPATH={shlex.quote(str(SRC))} {shlex.quote(sys.executable)} -m execbox.cli"
    registry = ProviderRegistry(default="local", configs={
        "ssh": parse_instance("ssh", "ssh", sshd.settings(execbox_command=command)),
        "remote": parse_instance("remote", "remote", {"url": f"http://127.0.0.1:{port}", "api_key": KEY})})
    engine = Engine(providers=registry, chain=[])
    pinned = {name: Pinned(engine, name) for name in ("local", "ssh", "remote")}
    try:
        with Progress() as progress:
            return {program.language: await measure(pinned, program, runs, progress)
                    for program in (HELLO, C_PROGRAM)}
    finally:
        await registry.aclose()
        proc.terminate()
        proc.wait(20)
        sshd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="execbox-bench-providers-") as tmp:
        figures = asyncio.run(run(args.runs, Path(tmp)))
    section = render(figures, args.runs)
    write_section(REPORT, "## Providers: local, ssh and remote", section)
    print(section)


if __name__ == "__main__":
    main()
