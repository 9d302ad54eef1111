"""A burst of simultaneous requests against a real server at default settings; writes its section of
docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_burst.py [--before 0e22dbe] [--sizes 100,1000] [--docker-sizes 100]

For each code version (this checkout, and with ``--before REV`` the ``src/`` and ``images/`` of that commit,
extracted with `git archive` into a temporary directory, so both run side by side in one run), each provider (local and
docker, chosen by the body's `provider` field) and each burst size: start `execbox serve` with default
settings (its own data dir and port), warm it, then open every connection at once and send each one
POST /api/v1/execute python `print(1)`. Reported: p50, p95 and max latency (connect to last byte), errors
(anything but a 200 with output "1", by status and message), the burst's wall time, and the server's peak
memory (VmHWM) against its size before the burst (what the waiting requests held).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPORT, ROOT, machine, pct, start_server, write_section

SECTION = "## HTTP service: a burst of simultaneous requests"
KEY = "bench-key-0123456789abcdef"


@dataclass
class Burst:
    code: str  # "before" or "after"
    provider: str
    size: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # by message, its counts written N
    examples: dict[str, str] = field(default_factory=dict)  # one message of each, as sent
    wall_s: float = 0
    rss_before_mb: float = 0
    peak_mb: float = 0
    load: float = 0


def memory_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def request(provider: str) -> bytes:
    body = json.dumps({"language": "python", "code": "print(1)", "provider": provider}).encode()
    return (f"POST /api/v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def post(port: int, payload: bytes) -> tuple[float, str | None]:
    """One request on a connection of its own (a raw socket: a client library's CPU would be measured too,
    on the server's two cores). Returns (latency, None) or (latency, what went wrong)."""
    t = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await writer.drain()
        raw = await reader.read()  # Connection: close: the answer ends with the connection
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        answer = json.loads(body)
        if status == 200 and answer.get("output") == "1\n":
            return time.perf_counter() - t, None
        return time.perf_counter() - t, f"{status} {answer.get('detail') or answer.get('status')}"
    except (OSError, ValueError, IndexError) as e:
        return time.perf_counter() - t, f"{type(e).__name__}: {e}"


def shape(error: str) -> str:
    """An error with its counts blanked, so equal refusals are counted together."""
    return "".join("N" if c.isdigit() else c for c in error).replace("NN", "N").replace("NN", "N")


async def burst(port: int, provider: str, size: int) -> tuple[list[tuple[float, str | None]], float]:
    payload = request(provider)
    t = time.perf_counter()
    results = await asyncio.gather(*(post(port, payload) for _ in range(size)))
    return list(results), time.perf_counter() - t


async def warm(port: int, provider: str) -> None:
    payload = request(provider)
    for _ in range(5):
        await post(port, payload)
    await asyncio.gather(*(post(port, payload) for _ in range(2 * (os.cpu_count() or 1))))


def measure(versions: dict[str, Path], providers: dict[str, list[int]], tmp: Path) -> list[Burst]:
    """Every version's server up at once; each burst runs on one, then the same burst on the next (an idle
    server costs next to nothing), so the machine's load changes hit the versions alike."""
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    out = []
    try:
        for code, src in versions.items():
            (tmp / code).mkdir()
            servers[code] = start_server(tmp / code, KEY, src)
        for provider, sizes in providers.items():
            for _, port in servers.values():
                asyncio.run(warm(port, provider))
            for size in sizes:
                for code, (proc, port) in servers.items():
                    b = Burst(code, provider, size, load=os.getloadavg()[0])
                    b.rss_before_mb = memory_mb(proc.pid, "VmRSS")
                    results, b.wall_s = asyncio.run(burst(port, provider, size))
                    b.peak_mb = memory_mb(proc.pid, "VmHWM")
                    b.latencies = [dt for dt, _ in results]
                    for _, e in results:
                        if e is not None:
                            b.errors[shape(e)] += 1
                            b.examples.setdefault(shape(e), e)
                    out.append(b)
                    print(f"{code:6} {provider:6} {size:5}: wall {b.wall_s:.2f} s, errors {sum(b.errors.values())}",
                          file=sys.stderr)
                    time.sleep(3)  # the pool's resets finish; the next burst starts from rest
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(60)
    return out


def render(bursts: list[Burst], before: str | None, after: str) -> str:
    ms = 1000
    versions = f"Before: `{before}` (its `src/` and `images/`), after: `{after}`, both up at once, each burst " \
        "on one then the other. " if before else ""
    lines = [SECTION, "",
             f"Measured {datetime.date.today()} on {machine()}, by `benchmarks/bench_burst.py`: a real "
             "`execbox serve` at default settings (its data dir and port only; "
             f"{2 * (os.cpu_count() or 1)} executions at once), every connection opened at once, each sending "
             "`POST /api/v1/execute` python `print(1)` (the body's `provider` field chooses local or docker). "
             "Latency is connect to last byte; errors are anything but a 200 with output `1`. "
             f"{versions}"
             "The machine is shared with other test runs: the load average (1 min) at each burst's start is "
             "given.", "",
             "| code | provider | burst | p50 | p95 | max | errors | wall | load | server memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for b in bursts:
        lat = b.latencies
        n_err = sum(b.errors.values())
        lines.append(f"| {b.code} | {b.provider} | {b.size} | {statistics.median(lat) * ms:.0f} ms | "
                     f"{pct(lat, 95) * ms:.0f} ms | {max(lat) * ms:.0f} ms | **{n_err}** | {b.wall_s:.2f} s | "
                     f"{b.load:.1f} | {b.rss_before_mb:.0f} -> {b.peak_mb:.0f} MiB |")
    errors = [(b, e, n) for b in bursts for e, n in sorted(b.errors.items())]
    if errors:
        lines += ["", "Errors (the numbers in a message written N; one of them as sent):", ""]
        lines += [f"- {b.code}, {b.provider}, burst of {b.size}: {n} x `{e}` (e.g. `{b.examples[e]}`)"
                  for b, e, n in errors]
    lines += ["", "Before, admission was by a count (64 waiting, `max_queue`) and the rest of a burst was refused "
              "at once, with a count of 0 running; after, every request waits up to `queue_timeout_s` (60 s) for "
              "a slot in a first-come line, and `max_queue` (10000) only bounds memory. A burst the server cannot "
              "clear within `queue_timeout_s` still has errors after: the requests still waiting at 60 s get a 503 "
              "with `Retry-After`. Server memory is the server process's resident size before the burst and its "
              "peak (VmHWM, since its start) after it: what a burst's waiting requests cost.", ""]
    return "\n".join(lines)


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src", "images"], check=True,
                             capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a commit to measure side by side with this checkout (its src/)")
    ap.add_argument("--sizes", default="100,1000", help="burst sizes on the local provider")
    ap.add_argument("--docker-sizes", default="100", help="burst sizes on the docker provider ('' for none)")
    ap.add_argument("--out", type=Path, default=REPORT)
    a = ap.parse_args()
    providers = {"local": [int(n) for n in a.sizes.split(",") if n],
                 "docker": [int(n) for n in a.docker_sizes.split(",") if n]}
    providers = {p: sizes for p, sizes in providers.items() if sizes}
    after = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True).stdout.strip() or "this checkout"
    with tempfile.TemporaryDirectory() as tmp:
        versions = {"before": extract(a.before, Path(tmp))} if a.before else {}
        versions["after"] = ROOT / "src"
        bursts = measure(versions, providers, Path(tmp))
    order = {"local": 0, "docker": 1}
    bursts.sort(key=lambda b: (order.get(b.provider, 2), b.size, b.code != "before"))
    section = render(bursts, a.before, after)
    write_section(a.out, SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
