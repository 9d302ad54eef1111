"""Persistent sandboxes on the local and docker providers: time to create one and run its first command, and
the memory an idle local one holds; writes their sections of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_sandbox.py [--runs 100] [--idle 20] [--providers local,docker]
                                                 [--out docs/benchmarks.md]

Latency: ``AsyncSandbox``-style create (uid, tmpfs workdir, cgroup, launcher, bubblewrap, seccomp, the agent
up and ready) + ``exec("echo hi")`` (a shell, as the issue's figure is defined: the figure E2B, Daytona and
Modal are compared on), through the library's SandboxManager; destroy() is untimed, run between creates.
Memory: ``--idle`` sandboxes created and left idle at once; per sandbox, the sandbox cgroup's charged memory
(the agent, bubblewrap and the launcher, page tables and kernel memory it accounts, its tmpfs pages) and the
proportional set size (PSS) of its processes.
Docker: the same create + ``exec("echo hi")`` through the docker provider (a dedicated container per sandbox).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import time
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPORT, machine, pct, write_section

from execbox import Limits
from execbox.engine import Engine
from execbox.providers.local import LocalProvider, LocalSettings
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import AsyncSandbox, SandboxManager

SECTION = "## Persistent sandboxes: create + first command (local)"
DOCKER_SECTION = "## Persistent sandboxes: create + first command (docker)"


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _memory(sb: AsyncSandbox) -> tuple[float, float]:
    """(cgroup-charged MiB, PSS MiB) of one sandbox."""
    cg = sb._instance.cgroup  # type: ignore[attr-defined]
    usage = int((cg.dirs["memory"] / "memory.usage_in_bytes").read_text()) if cg.version == 1 else int(
        (cg.dirs[""] / "memory.current").read_text())
    pss = sum(_pss_kb(pid) for pid in cg.pids())
    return usage / 2**20, pss / 1024


async def _one(manager: SandboxManager, limits: Limits) -> tuple[float, float]:
    """(create + first command, the first command alone), in ms; destroy() after, untimed."""
    t0 = time.perf_counter()
    sb = await manager.create("bash", limits=limits)
    t1 = time.perf_counter()
    r = await sb.exec("echo hi")
    t2 = time.perf_counter()
    assert r.ok and r.stdout == "hi\n", r
    await sb.destroy()
    return (t2 - t0) * 1000, (t2 - t1) * 1000


def _row(name: str, xs: list[tuple[float, float]]) -> str:
    total, first = [x[0] for x in xs], [x[1] for x in xs]
    return (f"| {name} | {pct(total, 50):.2f} | {pct(total, 95):.2f} | {statistics.mean(total):.2f} | "
            f"{pct(first, 50):.2f} |")


async def docker(runs: int, out: Path) -> None:
    from execbox.providers.docker import DockerProvider

    p = DockerProvider()
    m = SandboxManager(Engine(providers=ProviderRegistry(instances={"docker": p}, default="docker")))
    limits = Limits()
    try:
        for _ in range(3):  # warm-up: the image's layers and dockerd's caches
            await _one(m, limits)
        xs: list[tuple[float, float]] = []
        with Progress() as progress:
            task = progress.add_task("docker: create + echo hi", total=runs)
            for _ in range(runs):
                xs.append(await _one(m, limits))
                progress.advance(task)
    finally:
        await m.aclose()
        await p.aclose()
    p50 = pct([x[0] for x in xs], 50)
    load = Path("/proc/loadavg").read_text().split()[0]
    section = f"""{DOCKER_SECTION}

{datetime.date.today()}, {machine()}, load average {load} at the end (other test runs share the machine);
`benchmarks/bench_sandbox.py --runs {runs}`. `bash` sandboxes (the `shell` image), default limits.

| create + `exec("echo hi")` | p50 (ms) | p95 (ms) | mean (ms) | first exec alone, p50 (ms) |
|---|---|---|---|---|
{_row("docker (a dedicated container per sandbox)", xs)}

Target (issue 5): docker create + first command <= 300 ms p50: **{p50:.2f} ms** ({"met" if p50 <= 300 else "not met"}).

A create is: `docker create` of a hardened container (as the warm pool's: no network, read-only root, tmpfs,
no capabilities, execbox's seccomp profile) with the sandbox's memory/pids caps, `docker start`, an inspect,
the AGENT's `docker exec` started and left waiting, and the container's `/work` opened from the host
(`/proc/<pid>/root/work`). The first exec is: the exec's cgroup under the container's, an exec inspect (the
AGENT's host pid) and its move into that cgroup, the header on its stdin, then `/bin/sh -c 'echo hi'`.
`destroy()` (`docker rm -f`) runs between creates, untimed.
"""
    write_section(out, DOCKER_SECTION, section)
    print(section)


async def main(runs: int, idle: int, out: Path) -> None:
    cold_p = LocalProvider(LocalSettings(warm_pool=0, sandbox_pool=0))
    pool_p = LocalProvider(LocalSettings(warm_pool=0, sandbox_pool=2))
    pool = pool_p.sandbox_pool
    assert pool is not None

    def manager(p: LocalProvider) -> SandboxManager:
        return SandboxManager(Engine(providers=ProviderRegistry(instances={"local": p}, default="local")),
                              max_sandboxes=max(idle, 4) + 1)

    cold_m, pool_m = manager(cold_p), manager(pool_p)
    limits = Limits()
    for _ in range(3):  # warm-up: the agent is compiled once per version of its source; caches fill
        await _one(cold_m, limits)
        await _one(pool_m, limits)
    cold: list[tuple[float, float]] = []
    pooled: list[tuple[float, float]] = []
    with Progress() as progress:
        task = progress.add_task("create + echo hi (cold, pooled interleaved)", total=runs)
        for _ in range(runs):
            cold.append(await _one(cold_m, limits))
            await asyncio.to_thread(pool.fill, 30)  # untimed: the pool is ready, as it is between requests
            pooled.append(await _one(pool_m, limits))
            progress.advance(task)
        task = progress.add_task(f"{idle} idle sandboxes", total=idle)
        live = []
        for _ in range(idle):
            live.append(await cold_m.create("bash", limits=limits))
            progress.advance(task)
    await asyncio.sleep(1)
    mems = [_memory(sb) for sb in live]
    await cold_m.aclose()
    await pool_m.aclose()
    await pool_p.aclose()

    p50 = pct([x[0] for x in cold], 50)
    p50_pool = pct([x[0] for x in pooled], 50)
    cg_mb = statistics.mean(m[0] for m in mems)
    pss_mb = statistics.mean(m[1] for m in mems)
    load = Path("/proc/loadavg").read_text().split()[0]
    section = f"""{SECTION}

{datetime.date.today()}, {machine()}, load average {load} at the end (other test runs share the machine);
`benchmarks/bench_sandbox.py --runs {runs} --idle {idle}`. Cold and pooled creates interleaved.

| create + `exec("echo hi")` | p50 (ms) | p95 (ms) | mean (ms) | first exec alone, p50 (ms) |
|---|---|---|---|---|
{_row("cold (`sandbox_pool=0`)", cold)}
{_row("from the sandbox pool (`sandbox_pool=2`, the default)", pooled)}

Memory per idle sandbox ({idle} alive at once): **{cg_mb:.2f} MiB** charged to its cgroup (the agent, bubblewrap,
the launcher and the kernel memory their cgroup accounts), **{pss_mb:.2f} MiB** PSS of its processes.
Target (issue 5): local create + first command <= 50 ms p50: **{p50_pool:.2f} ms** from the pool, the
default ({"met" if p50_pool <= 50 else "not met"}); **{p50:.2f} ms** cold ({"met" if p50 <= 50 else "not met"}).

A cold create is: a uid slot, the tmpfs workdir mounted, the sandbox's cgroup, the launcher, bubblewrap
(namespaces, mounts, seccomp) and the agent's ready byte; from the pool (`LocalSettings.sandbox_pool`, the
default: 2) all of that happened before the request, which only raises the sandbox's cgroup caps to its limits.
An exec is: the exec's cgroup, pipes and a memfd for stdin, one message to the agent (with them and the
cgroup's `cgroup.procs` descriptors), its fork, the child joining the cgroup, then the program (`/bin/sh`,
then `echo`).
"""
    write_section(out, SECTION, section)
    print(section)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--idle", type=int, default=20)
    ap.add_argument("--out", type=Path, default=REPORT)
    ap.add_argument("--providers", default="local,docker", help="comma-separated: local, docker")
    args = ap.parse_args()
    providers = args.providers.split(",")
    if "local" in providers:
        asyncio.run(main(args.runs, args.idle, args.out))
    if "docker" in providers:
        asyncio.run(docker(args.runs, args.out))
