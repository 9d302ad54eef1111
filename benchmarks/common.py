"""What the benchmark scripts share: a real server started for a run, percentiles, the machine's description,
and writing one section of docs/benchmarks.md while keeping the others."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"


def start_server(data_dir: Path, api_key: str, src: Path | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """`execbox serve` at default settings but its data dir, a free port and ``api_key`` (no dev key), from
    ``src`` (another checkout's src/) or this one; its process and port once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
    env.update(EXECBOX_DATA_DIR=str(data_dir), EXECBOX_PORT=str(port), EXECBOX_API_KEY=api_key,
               EXECBOX_DEV_KEY="false", **({"PYTHONPATH": str(src)} if src is not None else {}))
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "execbox.cli", "serve"], env=env, stdout=log, stderr=log)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server ({src or 'this checkout'}) did not start: "
                     f"{(data_dir / 'server.log').read_text()[-3000:]}")


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem = int(next(ln.split()[1] for ln in meminfo if ln.startswith("MemTotal"))) // 1024 // 1024
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem} GiB, Linux {platform.release()}"


def write_section(path: Path, heading: str, section: str) -> None:
    """Replace the section starting with ``heading`` in ``path``, keeping the other benchmarks' sections."""
    text = path.read_text() if path.exists() else "# execbox benchmarks\n\nWritten by the scripts in `benchmarks/`.\n"
    section = section.rstrip("\n") + "\n\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + ("" if end < 0 else text[end + 1:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
