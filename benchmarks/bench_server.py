"""The HTTP service under load; writes its section of docs/benchmarks.md.

    .venv/bin/python benchmarks/bench_server.py [--count 300] [--runs 200]

Starts a real server (`execbox serve`, default settings, its own data dir) on a free loopback port, then:
1. latency at concurrency 1: POST /api/v1/execute python `print(1)` against `Engine.execute` of the same
   request in this process, interleaved (HTTP, in-process, HTTP, ...) so noise hits both alike;
2. load: `--count` requests at concurrency 1, 8 and 32, with p50/p95/p99 latency, throughput and errors
   (anything but a 200 with output "1").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPORT, machine, pct, start_server, write_section

import execbox
from execbox.engine import Engine

SECTION = "## HTTP service: load"
KEY = "bench-key-0123456789abcdef"
BODY = {"language": "python", "code": "print(1)"}


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the server's two cores, and a full
    client library (httpx: ~10 ms of CPU a request here) would take a fifth of them and measure itself."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        body = json.dumps(BODY).encode()
        self.request = (f"POST /api/v1/execute HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(*self.addr)
        reader, writer = self.streams
        writer.write(self.request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def http_once(conn: Connection) -> tuple[float, bool]:
    t = time.perf_counter()
    try:
        status, payload = await conn.post()
        ok = status == 200 and json.loads(payload)["output"] == "1\n"
    except (OSError, ValueError, asyncio.IncompleteReadError):
        await conn.close()
        ok = False
    return time.perf_counter() - t, ok


async def inproc_once(engine: Engine) -> float:
    t = time.perf_counter()
    r = await engine.execute(execbox.ExecutionRequest(**BODY))
    assert r.ok and r.stdout == "1\n", r
    return time.perf_counter() - t


async def latency(url: str, runs: int, progress: Progress) -> tuple[list[float], list[float]]:
    engine = Engine()
    http, inproc = [], []
    task = progress.add_task("latency, concurrency 1", total=runs)
    conn = Connection(url)
    for _ in range(10):  # warm both
        await http_once(conn), await inproc_once(engine)
    for _ in range(runs):
        dt, ok = await http_once(conn)
        assert ok
        http.append(dt)
        inproc.append(await inproc_once(engine))
        progress.advance(task)
    await conn.close()
    return http, inproc


async def load(url: str, concurrency: int, count: int, progress: Progress) -> dict[str, float]:
    task = progress.add_task(f"load, concurrency {concurrency}", total=count)
    lat: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:  # one keep-alive connection each
        nonlocal errors
        conn = Connection(url)
        while not queue.empty():
            queue.get_nowait()
            dt, ok = await http_once(conn)
            lat.append(dt)
            errors += not ok
            progress.advance(task)
        await conn.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t
    return {"p50": statistics.median(lat), "p95": pct(lat, 95), "p99": pct(lat, 99), "rate": count / elapsed,
            "errors": errors}


def render(http: list[float], inproc: list[float], rows: dict[int, dict[str, float]], runs: int, count: int) -> str:
    ms = 1000
    h50, i50 = statistics.median(http), statistics.median(inproc)
    ratio = h50 / i50
    lines = [SECTION, "",
             f"Measured {datetime.date.today()} on {machine()}, by `benchmarks/bench_server.py`: a real "
             "`execbox serve` (default settings: local provider, SQLite store, "
             f"{os.cpu_count() and 2 * os.cpu_count()} executions at once) on loopback, python `print(1)` "
             "through `POST /api/v1/execute`.", "",
             f"Latency at concurrency 1 ({runs} interleaved runs per side):", "",
             "| path | p50 | p95 | ratio p50 |", "|---|---|---|---|",
             f"| `Engine.execute` in-process | {i50 * ms:.2f} ms | {pct(inproc, 95) * ms:.2f} ms | 1.00x |",
             f"| HTTP `POST /api/v1/execute` | {h50 * ms:.2f} ms | {pct(http, 95) * ms:.2f} ms | {ratio:.2f}x |",
             "", f"Load ({count} requests per level):", "",
             "| concurrency | p50 | p95 | p99 | executions/s | errors |", "|---|---|---|---|---|---|"]
    for conc, r in rows.items():
        lines.append(f"| {conc} | {r['p50'] * ms:.1f} ms | {r['p95'] * ms:.1f} ms | {r['p99'] * ms:.1f} ms | "
                     f"{r['rate']:.1f} | {int(r['errors'])} |")
    best = max(r["rate"] for r in rows.values())
    errs32 = int(rows[32]["errors"]) if 32 in rows else -1
    lines += ["", "Targets (issue 3): p50 at concurrency 1 within 1.3x of in-process: "
              f"**{ratio:.2f}x** ({'met' if ratio <= 1.3 else 'not met'}); zero errors at concurrency 32: "
              f"**{errs32}** ({'met' if errs32 == 0 else 'not met'}); throughput >= 40 executions/s: "
              f"**{best:.1f}/s** ({'met' if best >= 40 else 'not met'}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="interleaved latency runs per side")
    ap.add_argument("--count", type=int, default=300, help="requests per concurrency level")
    ap.add_argument("--out", type=Path, default=REPORT)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp), KEY)
        url = f"http://127.0.0.1:{port}"
        try:
            with Progress(transient=True) as progress:
                http, inproc = asyncio.run(latency(url, a.runs, progress))
                rows = {c: asyncio.run(load(url, c, a.count, progress)) for c in (1, 8, 32)}
        finally:
            proc.terminate()
            proc.wait(30)
    section = render(http, inproc, rows, a.runs, a.count)
    write_section(a.out, SECTION, section)
    print(section)


if __name__ == "__main__":
    main()
