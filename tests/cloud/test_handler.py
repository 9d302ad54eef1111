"""execbox's handler for the function services, run for real: the HTTP face as Cloud Run and Container Apps
run it and the Lambda entry point as the Lambda runtime calls it, each in a PID namespace of its own
(handler_env.py), programs run by the ProcessProvider; and the ProcessProvider itself under the Engine."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.cloud.handler_env import LAMBDA_UID, RUN_UID, HttpHandler, LambdaHandler, call, needs_namespace

from execbox.engine import Engine
from execbox.models import ExecutionRequest, Limits, Status
from execbox.providers.cloud.function import HandlerCall, answered
from execbox.providers.cloud.handler import Handler
from execbox.providers.cloud.handler.http import create_app
from execbox.providers.cloud.process import ProcessProvider
from execbox.providers.registry import ProviderRegistry

# The daemon: a grandchild in a session of its own, its output closed, still running when its run ends.
DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            time.sleep(0.05)
    os._exit(0)
os.wait()
time.sleep(0.2)
print("left", os.getpid())
"""
# The next run: every process of its uid but its own and ps'.
LOOK_FOR_OTHERS = """
import os
me = os.getpid()
others = []
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) != me and os.stat(f"/proc/{p}").st_uid == os.getuid():
        with open(f"/proc/{p}/cmdline", "rb") as f:
            others.append((int(p), f.read().replace(b"\\0", b" ").decode()))
print(others)
"""


@pytest.fixture(scope="module")
def http() -> Iterator[HttpHandler]:
    h = HttpHandler()
    yield h
    h.close()


@pytest.fixture(scope="module")
def aws() -> Iterator[LambdaHandler]:
    h = LambdaHandler()
    yield h
    h.close()


def result(answer: dict[str, object]) -> dict[str, object]:
    assert "result" in answer, answer
    r = answer["result"]
    assert isinstance(r, dict)
    return r


@needs_namespace
class TestHttp:
    def test_health(self, http: HttpHandler) -> None:
        state = http.client.get("/health").json()
        assert state["ok"] and state["reset"] and state["egress"] == "none"

    def test_hello_world(self, http: HttpHandler) -> None:
        r = result(http.run(call("import os\nprint('hello', os.getuid())")))
        assert r["status"] == "ok" and r["stdout"] == f"hello {RUN_UID}\n"
        # what execbox's side makes of the answer
        assert answered(http.run(call("print(2)")), "cloud-run", "test").stdout == "2\n"

    def test_no_new_privileges(self, http: HttpHandler) -> None:
        r = result(http.run(call("print(*[l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')])")))
        assert r["stdout"] == "NoNewPrivs:\t1\n\n"

    def test_stdin(self, http: HttpHandler) -> None:
        r = result(http.run(call("import sys\nprint(sys.stdin.read().upper())", stdin="quiet words")))
        assert r["stdout"] == "QUIET WORDS\n"

    def test_failing_program(self, http: HttpHandler) -> None:
        r = result(http.run(call("import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)")))
        assert r["status"] == "runtime_error" and r["exit_code"] == 3 and r["stderr"] == "bye\n"

    def test_timeout(self, http: HttpHandler) -> None:
        start = time.monotonic()
        r = result(http.run(call("import time\nprint('start', flush=True)\ntime.sleep(30)", wall_time_s=1)))
        assert r["status"] == "timeout" and r["stdout"] == "start\n"
        assert time.monotonic() - start < 10

    def test_cpu_time(self, http: HttpHandler) -> None:
        r = result(http.run(call("while True: pass", cpu_time_s=1, wall_time_s=10)))
        assert r["status"] == "timeout" and "CPU" in str(r["message"])

    def test_output_cap(self, http: HttpHandler) -> None:
        start = time.monotonic()
        r = result(http.run(call("while True: print('x' * 1000)", output_bytes=10_000, wall_time_s=20)))
        assert r["status"] == "output_limit" and r["stdout_truncated"] and len(str(r["stdout"])) == 10_000
        assert time.monotonic() - start < 10  # killed at the cap, not at the wall time

    def test_memory_rlimit(self, http: HttpHandler) -> None:
        r = result(http.run(call("x = bytearray(400 * 1024 * 1024)\nprint('got it')", memory_mb=128)))
        assert r["status"] == "runtime_error" and "MemoryError" in str(r["stderr"])

    def test_daemon_is_gone_before_the_next_run(self, http: HttpHandler) -> None:
        first = result(http.run(call(DAEMON)))
        assert first["status"] == "ok" and str(first["stdout"]).startswith("left")
        nxt = result(http.run(call(LOOK_FOR_OTHERS)))
        others = eval(str(nxt["stdout"]))
        assert [cmd for _, cmd in others if "ps" not in cmd] == [], others

    def test_repeated_execution_id_is_refused(self, http: HttpHandler) -> None:
        c = call("print('once')")
        assert result(http.run(c))["stdout"] == "once\n"
        again = http.post(c)
        assert again.status_code == 400
        error = again.json()["error"]
        assert error["code_run"] is True and "not run again" in error["detail"]

    def test_bad_payload_is_refused_before_running(self, http: HttpHandler) -> None:
        for body in (b"{not json", {"version": 1, "request": {"language": "python"}},
                     {**call("print(1)"), "version": 2}, call("print(1)", language="cobol")):
            got = http.post(body)
            assert got.status_code == 400, got.text
            assert got.json()["error"]["kind"] == "request" and got.json()["error"]["code_run"] is False

    def test_a_language_it_lacks_is_refused_before_running(self) -> None:
        """A language whose toolchain is not in the image: refused (unavailable, code_run false: another
        provider may run it), never handed over and failed. Made here with a language file of the handler's
        own (in /run: the namespace's /tmp is its own)."""
        langs = Path(tempfile.mkdtemp(dir="/run", prefix="execbox-handler-test-"))
        (langs / "nolang.toml").write_text(
            'name = "nolang"\nextensions = ["nl"]\nentry = "main.nl"\nrequires = ["no-such-compiler"]\n'
            'version_command = ["no-such-compiler", "--version"]\n[run]\ncommand = ["no-such-compiler", "{entry}"]\n')
        h = HttpHandler(EXECBOX_LANGUAGES_DIR=str(langs))
        try:
            got = h.post(call("x", language="nolang"))
            assert got.status_code == 503, got.text
            assert got.json()["error"]["kind"] == "unavailable" and got.json()["error"]["code_run"] is False
            assert "no-such-compiler" in got.json()["error"]["detail"]
        finally:
            h.close()
            shutil.rmtree(langs)

    def test_network_it_cannot_give_is_refused(self, http: HttpHandler) -> None:
        got = http.post(call("print(1)", network=True))
        assert got.status_code == 400 and got.json()["error"]["code_run"] is False

    def test_token(self, http: HttpHandler) -> None:
        wrong = http.post(call("print(1)"), token="not-the-token")
        assert wrong.status_code == 401 and wrong.json()["error"]["code_run"] is False
        none = http.client.post("/run", content=json.dumps(call("print(1)")))
        assert none.status_code == 401

    def test_busy_while_a_run_is_going_on(self, http: HttpHandler) -> None:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(http.run, call("import time\ntime.sleep(2)\nprint('slow')"))
            time.sleep(0.7)
            busy = http.post(call("print('second')"))
            assert slow.result()["result"]["stdout"] == "slow\n"
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["kind"] == "capacity" and busy.json()["error"]["code_run"] is False

    def test_payload_and_answer_sizes(self) -> None:
        small = HttpHandler(EXECBOX_HANDLER_MAX_PAYLOAD_BYTES="2000", EXECBOX_HANDLER_MAX_ANSWER_BYTES="6000")
        try:
            got = small.post(call("print(1)" + " " * 5000))
            assert got.status_code == 413 and got.json()["error"]["code_run"] is False
            # 20 kB of output kept by the run's cap, trimmed to fit the service's answer
            r = result(small.run(call("print('y' * 20000)")))
            assert r["status"] == "ok" and r["stdout_truncated"] and 0 < len(str(r["stdout"])) < 6000
            assert "trimmed" in str(r["message"])
        finally:
            small.close()


    def test_a_return_value_too_large_for_the_answer(self) -> None:
        """main()'s return value may be 16 MiB, more than the service's answer takes: the answer must still
        fit (it was sent whole, and Lambda would refuse it: the caller left not knowing the outcome)."""
        small = HttpHandler(EXECBOX_HANDLER_MAX_ANSWER_BYTES="20000")
        try:
            body = {**call("def main():\n    return 'z' * 100000\n"), "execution_id": "big-return"}
            body["request"]["arguments"] = {}
            got = small.post(body)
            assert len(got.content) <= 20000, len(got.content)
            r = result(got.json())
            assert r["status"] == "runtime_error" and r.get("return_value") is None
            assert "return value" in str(r["message"])
        finally:
            small.close()


@needs_namespace
class TestLambda:
    def test_hello_world_and_its_uid(self, aws: LambdaHandler) -> None:
        r = result(aws.invoke(call("import os\nprint('hi', os.getuid())")))
        assert r["status"] == "ok" and r["stdout"] == f"hi {LAMBDA_UID}\n"

    def test_remaining_time_caps_the_wall_time(self, aws: LambdaHandler) -> None:
        # 4.5 s left (a little less once it is read), a 2 s margin: the run gets 2.4 s whatever it asked
        start = time.monotonic()
        r = result(aws.invoke(call("import time\ntime.sleep(20)", wall_time_s=20, cpu_time_s=20), remaining_ms=4500))
        assert r["status"] == "timeout" and time.monotonic() - start < 4.5
        assert "of 2.4s" in str(r["message"])

    def test_too_little_time_is_refused(self, aws: LambdaHandler) -> None:
        error = aws.invoke(call("print(1)"), remaining_ms=2500)["error"]
        assert error["kind"] == "capacity" and error["code_run"] is False

    def test_daemon_is_gone_before_the_next_run(self, aws: LambdaHandler) -> None:
        assert result(aws.invoke(call(DAEMON)))["status"] == "ok"
        nxt = result(aws.invoke(call(LOOK_FOR_OTHERS)))
        others = eval(str(nxt["stdout"]))
        # the handler itself (the programs' uid is its own) and nothing else
        assert [cmd for _, cmd in others if "lambda_driver" not in cmd] == [], others

    def test_repeated_id_and_bad_payload(self, aws: LambdaHandler) -> None:
        c = call("print(1)")
        assert result(aws.invoke(c))["status"] == "ok"
        assert aws.invoke(c)["error"]["code_run"] is True
        for event in ([1, 2], {"execution_id": "x"}, {**c, "execution_id": "bad id!"}):
            error = aws.invoke(event)["error"]
            assert error["kind"] == "request" and error["code_run"] is False


# --- without a namespace: what runs no program, and the ProcessProvider on its own


def test_outside_a_function_service_it_refuses_to_run() -> None:
    h = Handler(env={})  # no service variables, no EXECBOX_HANDLER_RESET: no reset, no run
    assert h.reset is None and h.unusable is not None and "EXECBOX_HANDLER_RESET" in h.unusable
    answer = httpx_run(h, call("print(1)"))
    assert answer["error"]["kind"] == "unavailable" and answer["error"]["code_run"] is False


def httpx_run(h: Handler, body: object) -> dict[str, object]:
    """POST /run through httpx's ASGI transport (the app in this process)."""
    async def go() -> dict[str, object]:
        transport = httpx.ASGITransport(app=create_app(h))
        async with httpx.AsyncClient(transport=transport, base_url="http://handler") as c:
            sent = {"content": body} if isinstance(body, bytes) else {"json": body}
            got: dict[str, object] = (await c.post("/run", **sent)).json()
            return got
    return asyncio.run(go())


def test_deeply_nested_json_is_refused_as_not_run() -> None:
    """A body nested deeper than the JSON decoder's recursion (a few bytes each level, well under the
    payload size) is a refused request, code_run false: nothing ran (it was a 500 "internal", code_run true)."""
    h = Handler(env={"EXECBOX_HANDLER_RESET": "0", "EXECBOX_HANDLER_EGRESS": "none"})
    deep = b'{"version": 1, "execution_id": "deep", "request": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = httpx_run(h, deep)
    assert answer["error"]["kind"] == "request" and answer["error"]["code_run"] is False, answer


def test_the_call_execbox_sends_is_understood() -> None:
    """HandlerCall.of (execbox's side) makes what the handler parses: here it refuses for want of a reset
    only, after the call was understood (a call it could not parse is refused as a request)."""
    sent = HandlerCall.of(ExecutionRequest(language="python", code="print(1)"), Limits(), "exec-1").to_json()
    got = asyncio.run(Handler(env={}).run(sent))
    assert got["error"]["kind"] == "unavailable" and got["error"]["code_run"] is False


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    reg = ProviderRegistry(default="process", instances={"process": ProcessProvider(tmp_path / "runs")})
    return Engine(providers=reg)


async def test_process_provider_runs_and_cleans(engine: Engine, tmp_path: Path) -> None:
    r = await engine.execute(ExecutionRequest(language="python", code="import os\nprint(os.getcwd())",
                                              files=[{"name": "data.txt", "content": "d"}]))
    assert r.status is Status.OK and r.stdout.strip().endswith("/work")
    assert os.listdir(tmp_path / "runs") == []  # the instance's directory is gone


async def test_process_provider_env_is_not_the_handlers(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "handler-secret")
    r = await engine.execute(ExecutionRequest(language="python", code="import os\nprint(sorted(os.environ))",
                                              env={"MINE": "1"}))
    names = eval(r.stdout)
    assert "AWS_SECRET_ACCESS_KEY" not in names and "MINE" in names


async def test_process_provider_kills_the_session_at_the_end(engine: Engine) -> None:
    # a child in the program's session (its own group) holding stdout: killed once the program ends
    code = "import os, time\nif os.fork() == 0:\n    os.setpgid(0, 0)\n    time.sleep(60)\nprint('done')"
    start = time.monotonic()
    r = await engine.execute(ExecutionRequest(language="python", code=code))
    assert r.status is Status.OK and r.stdout == "done\n" and time.monotonic() - start < 5


async def test_process_provider_file_size_and_open_files(engine: Engine) -> None:
    big = await engine.execute(ExecutionRequest(language="python", code="open('f', 'wb').write(b'x' * (3 << 20))",
                                                limits=Limits(file_size_mb=1)))
    assert big.status is Status.RUNTIME_ERROR and "File too large" in big.stderr  # python ignores SIGXFSZ
    fds = await engine.execute(ExecutionRequest(
        language="python", code="fs = [open('/dev/null') for _ in range(100)]", limits=Limits(open_files=32)))
    assert fds.status is Status.RUNTIME_ERROR and "Too many open files" in fds.stderr
