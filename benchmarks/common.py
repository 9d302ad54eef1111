"""What the benchmark scripts share: percentiles, the machine's description, and writing one section of
docs/benchmarks.md while keeping the others."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"


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
