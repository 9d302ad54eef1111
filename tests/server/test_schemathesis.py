"""Property-based tests of the live server against its own OpenAPI schema (schemathesis 4, its CLI in a
subprocess): no 5xx, only documented status codes and content types, responses matching their schemas.

Not ``positive_data_acceptance``: schema-valid requests for a random language are rightly 400.
The seed is fixed for reproducible CI runs; set ``SCHEMATHESIS_SEED`` to explore others.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.server.conftest import KEY, Server

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 25  # per operation and phase
RUN_TIMEOUT_S = 240  # a hang guard for the whole run (under the 300 s test timeout): ~30-100 s on 2 cores,
#                     the run_code operation starts kernels (seconds each)

# Small limits, so that generated programs cannot hold the machine, and no rate limit to speak of.
SMALL = {
    "EXECBOX_DEFAULTS__WALL_TIME_S": "2", "EXECBOX_DEFAULTS__CPU_TIME_S": "2",
    "EXECBOX_MAXIMA__WALL_TIME_S": "2", "EXECBOX_MAXIMA__CPU_TIME_S": "2", "EXECBOX_MAXIMA__COMPILE_WALL_TIME_S": "10",
    "EXECBOX_MAXIMA__MEMORY_MB": "256", "EXECBOX_MAX_BATCH": "4", "EXECBOX_RATE_LIMIT_PER_MIN": "1000000",
    "EXECBOX_MAX_CONCURRENCY": "4",
}

def schemathesis(server: Server, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).with_name("schemathesis")
    argv = [str(st) if st.exists() else "schemathesis", "run", f"{server.url}/openapi.json",
            "--header", f"X-API-Key: {KEY}", "--checks", CHECKS,
            "--max-examples", str(MAX_EXAMPLES), "--seed", os.environ.get("SCHEMATHESIS_SEED", "20240601"),
            # one worker: hypothesis parses lambdas' source with ast in each worker thread, and CPython 3.11's
            # ast is not thread-safe ("SystemError: AST constructor recursion depth mismatch", a tool crash)
            "--workers", "1", "--request-timeout", "20", "--generation-database", "none",
            "--no-color", "--output-truncate", "false", *extra]
    try:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              env={**os.environ, "NO_COLOR": "1"})
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout or ""
        pytest.fail(f"schemathesis ran over {RUN_TIMEOUT_S} s:\n{out[-5000:]}")


def assert_clean(run: subprocess.CompletedProcess[str], server: Server) -> None:
    assert run.returncode == 0, (f"schemathesis exited {run.returncode}:\n{run.stdout}\n{run.stderr}\n"
                                 f"--- server log (tail):\n{server.log()[-3000:]}")


def test_the_api_conforms_to_its_openapi_schema(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(env=SMALL)
    run = schemathesis(server, tmp_path)
    assert_clean(run, server)
    assert "31 selected / 31 total" in run.stdout, run.stdout  # 25th: POST /api/v1/sandboxes/{id}/run; 26-31: admin
