"""Shared pytest hooks."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest

# Providers made with default settings (the library's default engine, per-language tests) start no warm
# pool: its pre-started sandboxes would outlive the test that made them and show up as leftovers of the
# worker in the escape suite's host checks. The pool is tested where it is configured explicitly
# (tests/escapes/test_pool.py, tests/test_local_pool.py), and the server's subprocesses keep the default.
os.environ.setdefault("EXECBOX_LOCAL_WARM_POOL", "0")
os.environ.setdefault("EXECBOX_LOCAL_SANDBOX_POOL", "0")  # the same for pre-started persistent sandboxes


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Per-language counts of the HumanEval-X conformance run (tests/test_conformance_humaneval.py).

    The tests record their language and outcome as user properties, which pytest-xdist carries back from
    the workers, so the summary is right with or without -n."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            props = dict(getattr(rep, "user_properties", ()))
            if "humaneval_language" in props:
                outcome = props["humaneval_outcome"]
                key = outcome if rep.passed else f"test failed ({outcome})"
                counts[props["humaneval_language"]][key] += 1
    if not counts:
        return
    terminalreporter.section("HumanEval-X conformance")
    for lang in sorted(counts):
        c = counts[lang]
        total = sum(c.values())
        parts = [f"{c.pop('pass', 0)} passed", f"{c.pop('known', 0)} known failures (allow-listed)"]
        parts += [f"{n} {what}" for what, n in sorted(c.items())]
        terminalreporter.write_line(f"{lang:>10}: {total} tasks: " + ", ".join(parts))
