"""The code interpreter, ``sandbox.run_code``, on the local and docker providers: the first cell (which starts
the kernel) and a warm cell, side by side with a bare ``python3`` exec in the same sandbox; writes its section
of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_run_code.py [--runs 100] [--starts 5] [--providers local,docker]
                                                  [--out docs/benchmarks.md]

First cell: ``create("python")`` then ``run_code("x = 41")`` timed from the create, ``--starts`` sandboxes.
Warm: in one sandbox whose kernel is up, ``run_code("x + 1")`` interleaved with ``exec(["python3", "-c",
"pass"])`` (the cost of starting an interpreter, which the kernel saves) and ``exec("true")`` (the exec path
alone), ``--runs`` each; and a matplotlib figure cell (``plt.plot``, shown as PNG) after its first import.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPORT, machine, pct, write_section

from execbox import Limits
from execbox.engine import Engine
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import AsyncSandbox, SandboxManager

SECTION = "## Code interpreter: `run_code` (local, docker)"
FIGURE = "plt.figure(); plt.plot([1, 4, 9]); plt.show()"
LIMITS = Limits(wall_time_s=60, cpu_time_s=600)


async def _timed(call: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await call()
    return (time.perf_counter() - t0) * 1000


async def _cell(sb: AsyncSandbox, code: str, kernel_ms: list[float] | None = None) -> None:
    r = await sb.run_code(code)
    assert r.ok, r
    if kernel_ms is not None:
        kernel_ms.append(r.duration_s * 1000)


async def _exec(sb: AsyncSandbox, cmd: str | list[str]) -> None:
    r = await sb.exec(cmd)
    assert r.ok, r


async def measure(provider: str, runs: int, starts: int) -> dict[str, list[float]]:
    if provider == "docker":
        from execbox.providers.docker import DockerProvider
        p: object = DockerProvider()
    else:
        from execbox.providers.local import LocalProvider, LocalSettings
        p = LocalProvider(LocalSettings(warm_pool=0))
    m = SandboxManager(Engine(providers=ProviderRegistry(instances={provider: p}, default=provider)))  # type: ignore[dict-item]
    xs: dict[str, list[float]] = {"first": [], "cell": [], "python3": [], "true": [], "figure": [],
                                  "cell_kernel": [], "figure_kernel": []}
    try:
        with Progress() as progress:
            task = progress.add_task(f"{provider}: first cells", total=starts)
            for _ in range(starts):
                t0 = time.perf_counter()
                sb = await m.create("python", limits=LIMITS)
                await _cell(sb, "x = 41")
                xs["first"].append((time.perf_counter() - t0) * 1000)
                await sb.destroy()
                progress.advance(task)
            sb = await m.create("python", limits=LIMITS)
            await _cell(sb, "x = 41\nimport matplotlib.pyplot as plt")
            for _ in range(5):  # warm-up: the kernel's and the page cache's first calls
                await _cell(sb, "x + 1")
                await _cell(sb, FIGURE)
                await _exec(sb, ["python3", "-c", "pass"])
            task = progress.add_task(f"{provider}: warm cells, interleaved", total=runs)
            for _ in range(runs):
                xs["cell"].append(await _timed(lambda: _cell(sb, "x + 1", xs["cell_kernel"])))
                xs["python3"].append(await _timed(lambda: _exec(sb, ["python3", "-c", "pass"])))
                xs["true"].append(await _timed(lambda: _exec(sb, "true")))
                xs["figure"].append(await _timed(lambda: _cell(sb, FIGURE, xs["figure_kernel"])))
                progress.advance(task)
            await sb.destroy()
    finally:
        await m.aclose()
        await p.aclose()  # type: ignore[attr-defined]
    return xs


ROWS = [("first", "first cell: `create(\"python\")` + `run_code(\"x = 41\")` (starts the kernel)"),
        ("cell", "warm cell `run_code(\"x + 1\")`"),
        ("python3", "baseline: `exec([\"python3\", \"-c\", \"pass\"])` in the same sandbox"),
        ("true", "baseline: `exec(\"true\")` (the exec path alone)"),
        ("figure", "warm cell drawing a matplotlib figure (PNG back)")]


def main(providers: list[str], runs: int, starts: int, out: Path) -> None:
    results = {p: asyncio.run(measure(p, runs, starts)) for p in providers}
    load = Path("/proc/loadavg").read_text().split()[0]
    lines = ["| | " + " | ".join(f"{p} p50 (ms) | {p} p95 (ms)" for p in providers) + " |",
             "|---|" + "---|---|" * len(providers)]
    for key, name in ROWS:
        lines.append(f"| {name} | " + " | ".join(f"{pct(results[p][key], 50):.1f} | {pct(results[p][key], 95):.1f}"
                                                for p in providers) + " |")
    def p50(p: str, key: str) -> float:
        return pct(results[p][key], 50)

    ratios = "; ".join(f"{p}: warm cell / bare `python3` exec = **{p50(p, 'cell') / p50(p, 'python3'):.2f}x** (p50), "
                       f"warm cell - `exec(\"true\")` = {p50(p, 'cell') - p50(p, 'true'):.1f} ms" for p in providers)
    section = f"""{SECTION}

{datetime.date.today()}, {machine()}, load average {load} at the end;
`benchmarks/bench_run_code.py --runs {runs} --starts {starts}`. Python sandboxes, wall time 60 s.
First cells: {starts} sandboxes each; warm: {runs} of each row, interleaved in one sandbox whose kernel is up.

{chr(10).join(lines)}

{ratios}. Means of the warm cell: {", ".join(f"{p} {statistics.mean(results[p]['cell']):.1f} ms" for p in providers)}.
Time inside the kernel (the result's `duration_s`), p50: {", ".join(
    f"{p} {p50(p, 'cell_kernel'):.1f} ms for `x + 1`, {p50(p, 'figure_kernel'):.1f} ms for the figure"
    for p in providers)}.

A warm cell is one exec of the stdlib relay (`python3 -I -S`) that hands the cell to the bridge over a unix
socket, the kernel's execute request over jupyter's ipc sockets and the JSON answer back: about what starting
a `python3` for the cell costs, with the state kept. The first cell also starts the bridge (importing
jupyter_client) and the IPython kernel; nothing is pre-started for it.
"""
    write_section(out, SECTION, section)
    print(section)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--providers", default="local,docker", help="comma-separated: local, docker")
    args = ap.parse_args()
    main(args.providers.split(","), args.runs, args.starts, args.out)
