"""Local provider vs bare process, side by side in one run; writes docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_local.py [--runs 200] [--out docs/benchmarks.md]

Latency: /bin/true and `python3 -c 'print(1)'`, bare (subprocess) vs sandboxed (a whole execution: workdir,
cgroup, bubblewrap, seccomp, teardown). Runs are interleaved (bare, sandboxed, bare, ...) so that noise on
this shared machine hits both sides alike. Throughput: python print(1) through execbox.arun at concurrency
1, 2, 4 and 8, next to the bare process at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.progress import Progress

import execbox
from execbox.engine import Engine
from execbox.providers.base import ExecSpec, InstanceSpec
from execbox.providers.local import LocalProvider

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"  # the interpreter the sandbox runs, so both sides run the same binary
SPEC = dict(wall_time_s=10, cpu_time_s=10, memory_mb=256, pids=64, output_bytes=65536, file_size_mb=16,
            open_files=256)
SECTION = "## Local provider: sandbox vs bare process"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def bare(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - t


async def sandboxed_true(provider: LocalProvider) -> float:
    t = time.perf_counter()
    async with await provider.start(InstanceSpec(disk_mb=16)) as inst:
        o = await inst.exec(ExecSpec(argv=("/bin/true",), **SPEC))
    assert o.exit_code == 0, o
    return time.perf_counter() - t


async def sandboxed_python(engine: Engine) -> float:
    t = time.perf_counter()
    r = await engine.execute(execbox.ExecutionRequest(language="python", code="print(1)"))
    assert r.ok and r.stdout == "1\n", r
    return time.perf_counter() - t


async def latency(runs: int, progress: Progress) -> dict[str, dict[str, list[float]]]:
    provider = LocalProvider()
    engine = Engine()
    out: dict[str, dict[str, list[float]]] = {"/bin/true": {"bare": [], "sandbox": []},
                                              "python3 print(1)": {"bare": [], "sandbox": []}}
    task = progress.add_task("latency", total=runs * 2)
    for _ in range(5):  # warm caches on both sides
        bare(["/bin/true"]), bare([PYTHON, "-c", "print(1)"])
        await sandboxed_true(provider), await sandboxed_python(engine)
    for _ in range(runs):
        out["/bin/true"]["bare"].append(bare(["/bin/true"]))
        out["/bin/true"]["sandbox"].append(await sandboxed_true(provider))
        progress.advance(task)
    for _ in range(runs):
        out["python3 print(1)"]["bare"].append(bare([PYTHON, "-c", "print(1)"]))
        out["python3 print(1)"]["sandbox"].append(await sandboxed_python(engine))
        progress.advance(task)
    return out


async def throughput(total: int, progress: Progress) -> list[tuple[int, float, float]]:
    engine = Engine()
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
    return rows


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) // 1024 // 1024
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem} GiB, Linux {platform.release()}"


def render(lat: dict[str, dict[str, list[float]]], thr: list[tuple[int, float, float]], runs: int,
           total: int) -> str:
    ms = 1000
    lines = [SECTION, "",
             f"Measured {datetime.date.today()} on {machine()}, by `benchmarks/bench_local.py` "
             f"({runs} interleaved runs per side; one whole execution each: workdir, cgroup, bubblewrap, "
             "seccomp, teardown).", "",
             "| workload | bare p50 | bare p95 | sandbox p50 | sandbox p95 | overhead p50 | ratio p50 |",
             "|---|---|---|---|---|---|---|"]
    for name, sides in lat.items():
        b, s = sides["bare"], sides["sandbox"]
        b50, s50 = statistics.median(b), statistics.median(s)
        lines.append(f"| `{name}` | {b50 * ms:.2f} ms | {pct(b, 95) * ms:.2f} ms | {s50 * ms:.2f} ms | "
                     f"{pct(s, 95) * ms:.2f} ms | {(s50 - b50) * ms:.2f} ms | {s50 / b50:.2f}x |")
    lines += ["", f"Throughput, python `print(1)` ({total} executions per level):", "",
              "| concurrency | bare process/s | execbox.arun/s | ratio |", "|---|---|---|---|"]
    for conc, b, s in thr:
        lines.append(f"| {conc} | {b:.1f} | {s:.1f} | {s / b:.2f} |")
    true_over = (statistics.median(lat["/bin/true"]["sandbox"]) - statistics.median(lat["/bin/true"]["bare"])) * ms
    py = lat["python3 print(1)"]
    py_ratio = statistics.median(py["sandbox"]) / statistics.median(py["bare"])
    lines += ["", "Targets (issue 2): sandbox overhead on `/bin/true` <= 8 ms p50: "
              f"**{true_over:.2f} ms** ({'met' if true_over <= 8 else 'not met'}); python hello through "
              f"execbox <= 1.6x bare: **{py_ratio:.2f}x** ({'met' if py_ratio <= 1.6 else 'not met'}).", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section in docs/benchmarks.md, keeping the other benchmarks' sections."""
    text = path.read_text() if path.exists() else "# execbox benchmarks\n\nWritten by the scripts in `benchmarks/`.\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("" if end < 0 else text[end + 1:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


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
    write_section(a.out, section)
    print(section)


if __name__ == "__main__":
    sys.exit(main())
