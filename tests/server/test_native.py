"""The native API over real HTTP against a real server (local provider, real sandboxes)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.server.conftest import KEY, Server

PY = {"language": "python"}


def wait_completed(c: httpx.Client, execution_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = c.get(f"/api/v1/execute/status/{execution_id}")
        assert r.status_code == 200, r.text
        if r.json()["status"] == "completed":
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"{execution_id} not completed in {timeout_s}s")


# --- auth

def test_health_needs_no_key_and_reports_components(server: Server) -> None:
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["components"]) == {"store", "providers", "languages"}
    assert body["components"]["providers"]["default"] == "local"


def test_everything_else_needs_a_key(server: Server) -> None:
    with server.client(key=None) as c:
        for method, path in [("POST", "/api/v1/execute"), ("GET", "/api/v1/providers"), ("GET", "/metrics"),
                             ("GET", "/api/v1/execute/languages"), ("POST", "/api/v1/execute/async"),
                             ("GET", "/api/v1/execute/status/x"), ("POST", "/api/v2/execute"), ("POST", "/v1/exec")]:
            r = c.request(method, path, json={**PY, "code": "print(1)"})
            assert r.status_code == 401, (path, r.status_code, r.text)
    with server.client(key="wrong") as c:
        assert c.post("/api/v1/execute", json={**PY, "code": "print(1)"}).status_code == 401


def test_bearer_and_header_keys_both_work(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/v1/execute", json={**PY, "code": "print(1)"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200 and r.json()["output"] == "1\n"


# --- execute

def test_execute_returns_the_seed_fields_and_the_whole_result(client: httpx.Client) -> None:
    r = client.post("/api/v1/execute", json={**PY, "code": "import sys\nprint(input()[::-1])\nprint('e', "
                                             "file=sys.stderr)", "stdin": "hello"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["success"] is True and b["output"] == "olleh\n" and b["error"] == "e\n"
    assert b["status"] == "ok" and b["exit_code"] == 0 and b["provider"] == "local" and b["language"] == "python"
    assert 0 < b["execution_time"] == b["wall_time_s"] < 10
    assert b["cpu_time_s"] is not None and b["max_rss_mb"] > 0 and len(b["execution_id"]) == 32


def test_program_failure_is_a_result_not_an_http_error(client: httpx.Client) -> None:
    r = client.post("/api/v1/execute", json={**PY, "code": "raise SystemExit(3)"})
    assert r.status_code == 200
    b = r.json()
    assert b["success"] is False and b["status"] == "runtime_error" and b["exit_code"] == 3
    assert b["error"] == "exited with code 3"
    r = client.post("/api/v1/execute", json={"language": "c", "code": "int main( {"})
    assert r.status_code == 200 and r.json()["status"] == "compile_error" and r.json()["compile"]["stderr"]


def test_timeout_memory_env_args_files_arguments(client: httpx.Client) -> None:
    r = client.post("/api/v1/execute", json={**PY, "code": "while True: pass", "timeout": 1}).json()
    assert r["status"] == "timeout" and "1" in r["message"]
    r = client.post("/api/v1/execute", json={**PY, "code": "x = bytearray(200 * 2**20); print(len(x))",
                                            "memory_mb": 64}).json()
    assert r["status"] == "memory_limit", r
    r = client.post("/api/v1/execute", json={
        **PY, "code": "import os, sys, util\nprint(os.environ['A'], sys.argv[1:], util.X, open('b.bin','rb').read())",
        "environment": {"A": "a1"}, "args": ["x", "y"],
        "files": [{"name": "util.py", "content": "X = 5"},
                  {"name": "b.bin", "content": base64.b64encode(b"\x00\xff").decode(), "encoding": "base64"}],
    }).json()
    assert r["stdout"] == "a1 ['x', 'y'] 5 b'\\x00\\xff'\n", r
    r = client.post("/api/v1/execute", json={**PY, "code": "def main(a, b):\n    return {'sum': a + b}",
                                            "arguments": {"a": 1, "b": 2}}).json()
    assert r["return_value"] == {"sum": 3}


CPU_RLIMIT = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0])"  # the CPU limit + 1 s


def test_timeout_sets_the_cpu_time_unless_the_limits_set_it(client: httpx.Client) -> None:
    """`timeout` is the wall time and the CPU time with it; a `limits.cpu_time_s` given beside it is kept (it
    was overridden by `timeout`)."""
    r = client.post("/api/v1/execute", json={**PY, "code": CPU_RLIMIT, "timeout": 3}).json()
    assert r["stdout"] == "4\n", r
    r = client.post("/api/v1/execute", json={**PY, "code": CPU_RLIMIT, "timeout": 3,
                                            "limits": {"cpu_time_s": 1}}).json()
    assert r["stdout"] == "2\n", r


def test_the_body_says_env_as_the_library_does_and_environment_still_works(client: httpx.Client) -> None:
    code = "import os; print(os.environ['A'])"
    for name in ("env", "environment"):
        r = client.post("/api/v1/execute", json={**PY, "code": code, name: {"A": name}}).json()
        assert r["stdout"] == f"{name}\n", r


def test_test_command_runs_the_languages_test_runner(client: httpx.Client) -> None:
    files = [{"name": "test_x.py", "content": "import unittest\nclass T(unittest.TestCase):\n"
                                              "    def test_a(self): self.assertEqual(2, 3)\n"}]
    r = client.post("/api/v1/execute", json={**PY, "files": files, "command": "test"}).json()
    assert r["status"] == "runtime_error" and "FAILED" in r["stderr"]
    r = client.post("/api/v1/execute", json={"language": "bash", "code": "true", "command": "test"})
    assert r.status_code == 400 and "no test command" in r.json()["detail"]


def test_server_maxima_cap_requests(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_MAXIMA__WALL_TIME_S": "1", "EXECBOX_MAXIMA__CPU_TIME_S": "1"})
    with s.client() as c:
        t = time.monotonic()
        r = c.post("/api/v1/execute", json={**PY, "code": "import time; time.sleep(5)", "timeout": 30}).json()
        assert r["status"] == "timeout" and "1.0s" in r["message"] and time.monotonic() - t < 4


# --- bad input: a clear 4xx naming the field, never a 5xx

def test_bad_inputs_get_clear_4xx(server: Server) -> None:
    with server.client() as c:
        r = c.post("/api/v1/execute", json={"language": "cobol", "code": "x"})
        assert r.status_code == 400 and "python" in r.json()["supported"] and "cobol" in r.json()["detail"]
        r = c.post("/api/v1/execute", json={"language": "python", "code": 5})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "code"]
        r = c.post("/api/v1/execute", json={"code": "x"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "language"]
        r = c.post("/api/v1/execute", json={**PY, "code": "x", "surprise": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "surprise"]
        r = c.post("/api/v1/execute", json={**PY, "files": [{"name": "../../etc/x", "content": "1"}]})
        assert r.status_code == 422 and "files" in json.dumps(r.json())
        r = c.post("/api/v1/execute", json={**PY, "files": [{"name": "a\x00b", "content": "1"}]})
        assert r.status_code == 422
        r = c.post("/api/v1/execute", json={**PY, "files": [{"name": "a.bin", "content": "!!", "encoding": "base64"}]})
        assert r.status_code == 400 and "base64" in r.json()["detail"]
        r = c.post("/api/v1/execute", json={**PY, "code": "x", "timeout": -1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "timeout"]
        r = c.post("/api/v1/execute", json={**PY, "code": "x", "provider": "nope"})
        assert r.status_code == 400 and "nope" in r.json()["detail"]
        r = c.post("/api/v1/execute", json={**PY, "code": "x", "version": "2.7"})
        assert r.status_code == 400 and "2.7" in r.json()["detail"]
        r = c.post("/api/v1/execute", json={**PY})
        assert r.status_code == 400 and "code" in r.json()["detail"]
        r = c.post("/api/v1/execute", content=b"\xff\xfe{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "parsing the body" in r.json()["detail"]
        r = c.post("/api/v1/execute", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        r = c.post("/api/v1/execute", json={**PY, "code": "print(1)\n#" + "x" * 5_000_000})  # 5 MB of code: fine
        assert r.status_code == 200 and r.json()["output"] == "1\n"
        r = c.get("/api/v1/execute/status/nope")
        assert r.status_code == 404


def test_body_over_the_maximum_is_413_streamed_or_not(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_MAX_BODY_BYTES": "100000"})
    with s.client() as c:
        big = {**PY, "code": "#" * 200_000}
        r = c.post("/api/v1/execute", json=big)
        assert r.status_code == 413 and "100000" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it streams
            data = json.dumps(big).encode()
            for i in range(0, len(data), 16384):
                yield data[i:i + 16384]

        r = c.post("/api/v1/execute", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        r = c.post("/api/v2/execute", json={"language": "python", "files": [{"content": "#" * 200_000}]})
        assert r.status_code == 413 and "message" in r.json()
        assert c.post("/api/v1/execute", json={**PY, "code": "print(1)"}).json()["output"] == "1\n"


# --- async jobs, durability

def test_async_returns_at_once_then_completes(client: httpx.Client) -> None:
    t = time.monotonic()
    r = client.post("/api/v1/execute/async", json={**PY, "code": "import time; time.sleep(1); print('done')"})
    assert r.status_code == 202 and time.monotonic() - t < 1
    job = r.json()
    assert job["status"] == "queued"
    assert client.get(f"/api/v1/execute/status/{job['execution_id']}").json()["status"] in ("queued", "running")
    done = wait_completed(client, job["execution_id"])
    assert done["result"]["output"] == "done\n" and done["result"]["execution_id"] == job["execution_id"]
    r = client.post("/api/v1/execute/async", json={"language": "cobol", "code": "x"})
    assert r.status_code == 400  # checked before queueing


def test_another_keys_execution_is_404(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_API_KEY": f"{KEY},other-key-{'y' * 20}"})
    with s.client() as c, s.client(key=f"other-key-{'y' * 20}") as other:
        job = c.post("/api/v1/execute/async", json={**PY, "code": "print(1)", "session_id": "s"}).json()
        wait_completed(c, job["execution_id"])
        assert other.get(f"/api/v1/execute/status/{job['execution_id']}").status_code == 404
        assert other.get("/api/v1/sessions/s/executions").json()["executions"] == []
        assert len(c.get("/api/v1/sessions/s/executions").json()["executions"]) == 1


def wait_running(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while c.get(f"/api/v1/execute/status/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


def wait_handed_over(data_dir: Path, job_id: str) -> None:
    """Until the server's store records that the job's code was handed to the provider."""
    deadline = time.monotonic() + 30
    with contextlib.closing(sqlite3.connect(data_dir / "execbox.db")) as db:
        while not db.execute("SELECT handed_over_at FROM executions WHERE id = ?", (job_id,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the job's code was never handed over"
            time.sleep(0.02)


def test_queued_jobs_survive_a_server_crash_and_the_running_one_is_not_run_twice(  # type: ignore[no-untyped-def]
        make_server, tmp_path: Path) -> None:
    env = {"EXECBOX_MAX_CONCURRENCY": "1"}
    s = make_server(env=env)
    with s.client() as c:
        ids = [c.post("/api/v1/execute/async", json={**PY, "code": f"import time; time.sleep(0.5); print({i})"}
                      ).json()["execution_id"] for i in range(4)]
    wait_handed_over(tmp_path, ids[0])
    s.stop(signal.SIGKILL)  # no shutdown hook runs: the queue must be in the store
    s2 = make_server(env=env, data_dir=tmp_path)
    with s2.client() as c:
        results = [wait_completed(c, i)["result"] for i in ids]
    # the one whose code had been handed over may have run: reported so, never begun again
    assert results[0]["status"] == "internal_error" and "outcome unknown" in results[0]["error"]
    assert [r["output"] for r in results[1:]] == ["1\n", "2\n", "3\n"]


def test_a_job_that_keeps_killing_its_server_before_its_code_is_sent_is_abandoned(  # type: ignore[no-untyped-def]
        make_server, tmp_path: Path) -> None:
    s = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1"})
    with s.client() as c:
        job = c.post("/api/v1/execute/async", json={**PY, "code": "print('x')"}).json()
        wait_completed(c, job["execution_id"])
    s.stop(signal.SIGKILL)
    # the store as a server leaves it that died before handing the job over (once): running, not handed over
    with contextlib.closing(sqlite3.connect(tmp_path / "execbox.db")) as db, db:
        db.execute("UPDATE executions SET state = 'running', attempts = 1, handed_over_at = NULL, result = NULL, "
                   "request = ? WHERE id = ?", (json.dumps({"principal": "env:1", "body": {**PY, "code": "1"}}),
                                                job["execution_id"]))
    s2 = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_JOB_ATTEMPTS": "1"}, data_dir=tmp_path)
    with s2.client() as c:
        done = wait_completed(c, job["execution_id"])["result"]
    assert done["status"] == "internal_error" and done["execution_id"] == job["execution_id"]
    assert "stopped while running this job 1 times" in done["error"]


def test_an_orderly_stop_kills_the_running_job_and_requeues_the_waiting_one(  # type: ignore[no-untyped-def]
        make_server, tmp_path: Path) -> None:
    env = {"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_JOB_ATTEMPTS": "1"}
    s = make_server(env=env)
    with s.client() as c:
        running, waiting = (c.post("/api/v1/execute/async", json={
            **PY, "code": f"import time; time.sleep(2); print('ran {i}')"}).json()["execution_id"] for i in (1, 2))
        wait_handed_over(tmp_path, running)
    s.stop()  # SIGTERM: the running job is cancelled (killed, not run again), the waiting one queued again
    s2 = make_server(env=env, data_dir=tmp_path)
    with s2.client() as c:
        killed = wait_completed(c, running)["result"]
        assert killed["status"] == "killed" and "not run again" in killed["error"]
        assert wait_completed(c, waiting)["result"]["output"] == "ran 2\n"


def test_a_key_may_have_only_so_many_jobs_pending(make_server) -> None:  # type: ignore[no-untyped-def]
    other = f"other-key-{'z' * 20}"
    s = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_PENDING_JOBS_PER_KEY": "2",
                         "EXECBOX_API_KEY": f"{KEY},{other}"})
    slow = {**PY, "code": "import time; time.sleep(1)"}
    with s.client() as c, s.client(key=other) as o:
        ids = [c.post("/api/v1/execute/async", json=slow).json()["execution_id"] for _ in range(2)]
        r = c.post("/api/v1/execute/async", json=slow)
        assert r.status_code == 429 and "2 jobs pending" in r.json()["detail"] and r.headers["Retry-After"]
        assert o.post("/api/v1/execute/async", json=slow).status_code == 202  # another key is not held up
        for i in ids:
            wait_completed(c, i)
        assert c.post("/api/v1/execute/async", json=slow).status_code == 202


def test_results_expire_after_the_ttl(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_JOB_TTL_S": "1"})
    with s.client() as c:
        job = c.post("/api/v1/execute/async", json={**PY, "code": "print(1)"}).json()
        wait_completed(c, job["execution_id"])
        time.sleep(1.5)
        assert c.get(f"/api/v1/execute/status/{job['execution_id']}").status_code == 404


# --- batch, sessions

def test_batch_keeps_order_and_runs_concurrently(client: httpx.Client) -> None:
    bodies = [{**PY, "code": f"import time; time.sleep({0.6 - i * 0.1:.1f}); print({i})"} for i in range(6)]
    t = time.monotonic()
    r = client.post("/api/v1/execute/batch", json=bodies)
    assert r.status_code == 200, r.text
    assert [x["output"] for x in r.json()] == [f"{i}\n" for i in range(6)]
    assert time.monotonic() - t < 3.5  # 2.1 s of sleeps run side by side
    r = client.post("/api/v1/execute/batch", json=[{**PY, "code": "print(1)"}, {"language": "cobol", "code": "x"}])
    assert r.status_code == 400 and r.json()["detail"].startswith("request 1:")
    assert client.post("/api/v1/execute/batch", json=[]).status_code == 422


def test_batch_over_the_maximum_is_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_MAX_BATCH": "2"})
    with s.client() as c:
        r = c.post("/api/v1/execute/batch", json=[{**PY, "code": "print(1)"}] * 3)
        assert r.status_code == 400 and "at most 2" in r.json()["detail"]


def test_session_lists_its_executions_in_order(client: httpx.Client) -> None:
    for i in range(3):
        client.post("/api/v1/execute", json={**PY, "code": f"print({i})", "session_id": "nb-1"})
    r = client.get("/api/v1/sessions/nb-1/executions").json()
    assert [e["result"]["output"] for e in r["executions"]] == ["0\n", "1\n", "2\n"]
    assert client.get("/api/v1/sessions/bad%20id/executions").status_code == 422


# --- admission: rate limits and backpressure

def test_rate_limit_429_with_retry_after(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_RATE_LIMIT_PER_MIN": "6"})  # one request, then one every 10 s
    with s.client() as c:
        assert c.post("/api/v1/execute", json={**PY, "code": "print(1)"}).status_code == 200
        r = c.post("/api/v1/execute", json={**PY, "code": "print(1)"})
        assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 10


def test_backpressure_queues_then_503_never_a_crash(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_QUEUE": "1"})
    body = {**PY, "code": "import time; time.sleep(1); print('ok')"}
    with s.client() as c, concurrent.futures.ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: c.post("/api/v1/execute", json=body), range(5)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and set(codes) <= {200, 503}, codes
    refused = [r for r in responses if r.status_code == 503]
    assert refused and all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert all(r.json()["output"] == "ok\n" for r in responses if r.status_code == 200)


# --- keys, caps

def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EXECBOX_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "execbox.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_keys_create_list_revoke_and_caps(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    created = _cli(tmp_path, "create", "alice", "--max-timeout", "1", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert _cli(tmp_path, "create", "alice").returncode == 1  # names are unique
    listed = json.loads(_cli(tmp_path, "list", "--json").stdout)
    assert [k["name"] for k in listed] == ["alice"] and key not in json.dumps(listed)
    assert key not in (tmp_path / "execbox.db").read_bytes().decode(errors="replace")  # only its hash
    s = make_server(data_dir=tmp_path)
    with s.client(key=key) as c:
        r = c.post("/api/v1/execute", json={**PY, "code": "import time; time.sleep(5)", "timeout": 30}).json()
        assert r["status"] == "timeout" and "1.0s" in r["message"]  # the key's cap wins over the request
        assert _cli(tmp_path, "revoke", "alice").returncode == 0
        assert c.post("/api/v1/execute", json={**PY, "code": "print(1)"}).status_code == 401
    assert "alice" in s.log() and key not in s.log()


# --- info, metrics, logs

def test_languages_and_providers(client: httpx.Client) -> None:
    langs = {lang["name"]: lang for lang in client.get("/api/v1/execute/languages").json()["languages"]}
    assert len(langs) == 13 and langs["python"]["available"] and langs["python"]["commands"] == ["run", "test"]
    assert langs["c"]["compiled"] is True
    providers = client.get("/api/v1/providers").json()["providers"]
    local = next(p for p in providers if p["name"] == "local")
    assert {k: local[k] for k in ("name", "kind", "status", "is_default", "chain_position", "message")} == {
        "name": "local", "kind": "local", "status": "available", "is_default": True, "chain_position": 0,
        "message": None}
    assert local["breaker"]["state"] == "closed" and local["capabilities"]["persistent"] is True
    assert local["capabilities"]["isolation"] == "namespaces"
    assert not {"ssh", "remote"} & {p["name"] for p in providers}  # no instance until one is configured


def test_metrics_count_executions_by_language_provider_status(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server()
    with s.client() as c:
        c.post("/api/v1/execute", json={**PY, "code": "print(1)"})
        c.post("/api/v1/execute", json={**PY, "code": "raise SystemExit(1)"})
        c.post("/api/v1/execute", json={"language": "cobol", "code": "x"})
        c.post("/api/v1/execute", json={**PY, "code": "x", "provider": "mock"})
        text = c.get("/metrics").text
    assert 'sandbox_executions_total{language="python",provider="local",status="ok"} 1.0' in text
    assert 'sandbox_executions_total{language="python",provider="local",status="runtime_error"} 1.0' in text
    assert 'sandbox_execution_duration_seconds_count{language="python",provider="local",status="ok"} 1.0' in text
    assert 'sandbox_active_containers{provider="local"} 0.0' in text
    assert 'sandbox_errors_total{language="cobol",provider="local",status="bad_request"} 1.0' in text
    assert 'sandbox_errors_total{language="python",provider="mock",status="bad_request"} 1.0' in text
    lines = [json.loads(line) for line in s.log().splitlines() if line.startswith("{")]
    ran = [x for x in lines if x.get("msg") == "execution"]
    assert len(ran) == 2 and {"execution_id", "key", "language", "status", "duration_ms"} <= ran[0].keys()
    assert KEY not in s.log()


# --- found in review: each of these was a 5xx, a hang, a leak or a bypass

def test_the_mock_provider_cannot_be_chosen_by_a_client(client: httpx.Client) -> None:
    r = client.post("/api/v1/execute", json={**PY, "code": "print(1)", "provider": "mock"})
    assert r.status_code == 400 and "unknown provider 'mock'" in r.json()["detail"]
    assert "mock" not in [p["name"] for p in client.get("/api/v1/providers").json()["providers"]]


def test_a_deep_return_value_is_the_programs_error_not_a_500(client: httpx.Client) -> None:
    code = "def main():\n    v = []\n    for _ in range(300):\n        v = [v]\n    return v"
    r = client.post("/api/v1/execute", json={**PY, "code": code, "arguments": {}})
    assert r.status_code == 200 and r.json()["status"] == "runtime_error" and "deeper" in r.json()["message"]
    job = client.post("/api/v1/execute/async", json={**PY, "code": code, "arguments": {}}).json()
    assert wait_completed(client, job["execution_id"])["result"]["status"] == "runtime_error"


def test_file_errors_are_400_before_queueing_not_an_internal_error_later(client: httpx.Client) -> None:
    body = {**PY, "code": "print(1)", "files": [{"name": "main.py", "content": "print(2)"}]}
    for path in ("/api/v1/execute", "/api/v1/execute/async"):
        r = client.post(path, json=body)
        assert r.status_code == 400 and "given twice" in r.json()["detail"], (path, r.text)
    r = client.post("/api/v1/execute/batch", json=[{**PY, "code": "print(1)"},
                                                   {"language": "bash", "code": "x", "arguments": {}}])
    assert r.status_code == 400 and r.json()["detail"].startswith("request 1:")


def test_stored_keys_cannot_take_a_static_keys_name(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert _cli(tmp_path, "create", "env:1").returncode == 2  # static keys' names have a colon; stored ones never
    assert _cli(tmp_path, "create", "zero", "--rate-limit", "0").returncode == 2
    key = json.loads(_cli(tmp_path, "create", "env", "--json").stdout)["key"]
    s = make_server(data_dir=tmp_path)
    with s.client() as static, s.client(key=key) as stored:
        job = static.post("/api/v1/execute/async", json={**PY, "code": "print('secret')", "session_id": "s"}).json()
        wait_completed(static, job["execution_id"])
        assert stored.get(f"/api/v1/execute/status/{job['execution_id']}").status_code == 404
        assert stored.get("/api/v1/sessions/s/executions").json()["executions"] == []


def test_a_batch_larger_than_the_keys_burst_is_a_clear_400(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_RATE_LIMIT_PER_MIN": "60"})  # bursts of 6
    with s.client() as c:
        r = c.post("/api/v1/execute/batch", json=[{**PY, "code": "print(1)"}] * 7)
        assert r.status_code == 400 and "burst of 6" in r.json()["detail"] and "Retry-After" not in r.headers


def test_batch_items_wait_their_turn_instead_of_failing_the_batch(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_QUEUE_TIMEOUT_S": "1"})
    with s.client() as c:
        bodies = [{**PY, "code": f"import time; time.sleep(0.7); print({i})"} for i in range(3)]
        r = c.post("/api/v1/execute/batch", json=bodies)  # 2.1 s of work through one slot, 1 s queue timeout
        assert r.status_code == 200 and [x["output"] for x in r.json()] == ["0\n", "1\n", "2\n"]


def test_a_batch_shares_one_output_budget(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_BATCH_OUTPUT_BYTES": "20000"})
    with s.client() as c:
        r = c.post("/api/v1/execute/batch", json=[{**PY, "code": "print('x' * 50000)"}] * 2).json()
        assert [(x["status"], len(x["stdout"])) for x in r] == [("output_limit", 10000)] * 2


def test_a_quadratic_piston_input_does_not_stall_the_server(client: httpx.Client, server: Server) -> None:
    t = time.monotonic()
    r = client.post("/api/v2/execute", json={"language": "java", "files": [{"content": "\n" * 2_000_000}]})
    assert r.status_code == 200 and time.monotonic() - t < 20  # it compiles (and fails): no regex blow-up


def test_the_store_is_readable_by_its_owner_only(server: Server) -> None:
    for f in server.data_dir.glob("execbox.db*"):
        assert f.stat().st_mode & 0o077 == 0, f

