"""Local provider vs bare process, side by side in one run; writes docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_local.py [--runs 200] [--out docs/benchmarks.md]

Latency: /bin/true and `python3 -c 'print(1)'`, bare (subprocess) vs sandboxed (a whole execution), both
through the warm pool (the default: a sandbox pre-started before the request arrives; the pool is refilled,
and the previous run torn down, before each measured run, untimed, so that no background work overlaps
either side) and cold (warm_pool=0: workdir, cgroup, bubblewrap, seccomp, teardown all in the request).
Runs are interleaved (bare, sandboxed, bare, ...) so that noise on this shared machine hits both sides alike.
Throughput: python print(1) through the engine at concurrency 1, 2, 4 and 8, next to the bare process at
the same concurrency: sustained, with the pool's refilling and teardowns competing for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, pct, write_section

import execbox
from execbox.engine import Engine
from execbox.providers.base import ExecSpec, InstanceSpec
from execbox.providers.local import LocalProvider, LocalSettings
from execbox.providers.registry import ProviderRegistry

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"  # the interpreter the sandbox runs, so both sides run the same binary
SPEC = dict(wall_time_s=10, cpu_time_s=10, memory_mb=256, pids=64, output_bytes=65536, file_size_mb=16,
            open_files=256)
SECTION = "## Local provider: sandbox vs bare process"


def bare(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - t


async def sandboxed_true(provider: LocalProvider) -> float:
    if provider.warm_pool is not None:
        await asyncio.to_thread(provider.warm_pool.fill, 30)  # untimed: the pool is ready, teardowns done
    t = time.perf_counter()
    async with await provider.start(InstanceSpec(disk_mb=execbox.Limits().disk_mb)) as inst:
        o = await inst.exec(ExecSpec(argv=("/bin/true",), **SPEC))
    assert o.exit_code == 0, o
    return time.perf_counter() - t


async def sandboxed_python(engine: Engine, provider: LocalProvider | None = None) -> float:
    if provider is not None and provider.warm_pool is not None:
        await asyncio.to_thread(provider.warm_pool.fill, 30)
    t = time.perf_counter()
    r = await engine.execute(execbox.ExecutionRequest(language="python", code="print(1)"))
    assert r.ok and r.stdout == "1\n", r
    return time.perf_counter() - t


def engine_for(provider: LocalProvider) -> Engine:
    return Engine(providers=ProviderRegistry(instances={"local": provider}))


WORKLOADS = ("/bin/true", "python3 print(1)", "/bin/true, cold", "python3 print(1), cold")


async def latency(runs: int, progress: Progress) -> dict[str, dict[str, list[float]]]:
    warm, cold = LocalProvider(), LocalProvider(LocalSettings(warm_pool=0))
    assert warm.warm_pool is not None, "the warm pool needs root and cgroups"
    out: dict[str, dict[str, list[float]]] = {w: {"bare": [], "sandbox": []} for w in WORKLOADS}
    task = progress.add_task("latency", total=runs * len(WORKLOADS))
    py = [PYTHON, "-c", "print(1)"]
    for _ in range(5):  # warm caches on both sides
        bare(["/bin/true"]), bare(py)
        for p in (warm, cold):
            await sandboxed_true(p), await sandboxed_python(engine_for(p), p)
    for name, argv, p in (("/bin/true", ["/bin/true"], warm), ("python3 print(1)", py, warm),
                          ("/bin/true, cold", ["/bin/true"], cold), ("python3 print(1), cold", py, cold)):
        engine = engine_for(p)
        for _ in range(runs):
            if p.warm_pool is not None:
                await asyncio.to_thread(p.warm_pool.fill, 30)  # nothing in the background during `bare`
            out[name]["bare"].append(bare(argv))
            sandboxed = sandboxed_true(p) if argv[0] == "/bin/true" else sandboxed_python(engine, p)
            out[name]["sandbox"].append(await sandboxed)
            progress.advance(task)
    await warm.aclose()
    return out


async def throughput(total: int, progress: Progress) -> list[tuple[int, float, float]]:
    provider = LocalProvider()
    engine = engine_for(provider)
    rows = []
    task = progress.add_task("throughput", total=4 * total * 2)
    for conc in (1, 2, 4, 8):
        sem = asyncio.Semaphore(conc)

        async def one_sandbox(sem: asyncio.Semaphore = sem) -> None:
            async with sem:
                await sandboxed_python(engine)
                progress.advance(task)

        async def one_bare(sem: asyncio.Semaphore = sem) -> None:
            async with sem:
                p = await asyncio.create_subprocess_exec(PYTHON, "-c", "print(1)", stdout=subprocess.PIPE)
                await p.communicate()
                progress.advance(task)

        t = time.perf_counter()
        await asyncio.gather(*(one_bare() for _ in range(total)))
        bare_rate = total / (time.perf_counter() - t)
        t = time.perf_counter()
        await asyncio.gather(*(one_sandbox() for _ in range(total)))
        rows.append((conc, bare_rate, total / (time.perf_counter() - t)))
    await provider.aclose()
    return rows


def render(lat: dict[str, dict[str, list[float]]], thr: list[tuple[int, float, float]], runs: int,
           total: int) -> str:
    ms = 1000
    lines = [SECTION, "",
             f"Measured {datetime.date.today()} on {machine()}, by `benchmarks/bench_local.py` "
             f"({runs} interleaved runs per side). Default rows: through the local warm pool (the default, "
             "`LocalSettings.warm_pool=2`): the request finds a pre-started sandbox (workdir, cgroup, "
             "bubblewrap, seccomp and execbox's waiter ready) and its teardown runs after the result; the "
             "pool is refilled between runs, untimed. Cold rows: `warm_pool=0`, the whole sandbox set up and "
             "torn down in the request (and the path of requests the pool does not match: network, another "
             "disk size).", "",
             "| workload | bare p50 | bare p95 | sandbox p50 | sandbox p95 | overhead p50 | ratio p50 |",
             "|---|---|---|---|---|---|---|"]
    for name, sides in lat.items():
        b, s = sides["bare"], sides["sandbox"]
        b50, s50 = statistics.median(b), statistics.median(s)
        lines.append(f"| `{name}` | {b50 * ms:.2f} ms | {pct(b, 95) * ms:.2f} ms | {s50 * ms:.2f} ms | "
                     f"{pct(s, 95) * ms:.2f} ms | {(s50 - b50) * ms:.2f} ms | {s50 / b50:.2f}x |")
    lines += ["", f"Throughput, python `print(1)` through the engine with the warm pool ({total} executions per "
              "level; sustained: refilling and teardowns share the cores with the requests):", "",
              "| concurrency | bare process/s | execbox/s | ratio |", "|---|---|---|---|"]
    for conc, b, s in thr:
        lines.append(f"| {conc} | {b:.1f} | {s:.1f} | {s / b:.2f} |")
    def over(name: str) -> float:
        return (statistics.median(lat[name]["sandbox"]) - statistics.median(lat[name]["bare"])) * ms

    def ratio(name: str) -> float:
        return statistics.median(lat[name]["sandbox"]) / statistics.median(lat[name]["bare"])

    true_over, true_cold = over("/bin/true"), over("/bin/true, cold")
    py_ratio, py_cold = ratio("python3 print(1)"), ratio("python3 print(1), cold")
    lines += ["", "Targets (issue 2): sandbox overhead on `/bin/true` <= 8 ms p50: "
              f"**{true_over:.2f} ms** ({'met' if true_over <= 8 else 'not met'}; cold {true_cold:.2f} ms); "
              f"python hello through execbox <= 1.6x bare: **{py_ratio:.2f}x** "
              f"({'met' if py_ratio <= 1.6 else 'not met'}; cold {py_cold:.2f}x).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--throughput-count", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    a = ap.parse_args()
    with Progress(transient=True) as progress:
        lat = asyncio.run(latency(a.runs, progress))
        thr = asyncio.run(throughput(a.throughput_count, progress))
    section = render(lat, thr, a.runs, a.throughput_count)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_section(a.out, SECTION, section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
