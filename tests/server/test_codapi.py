"""The Codapi drop-in over real HTTP: POST /v1/exec ``{sandbox, command, files}`` ->
``{id, ok, duration, stdout, stderr}``, with errors in the same shape (``ok: false``, the reason in stderr)."""

from __future__ import annotations

import re
import shutil
from typing import Any

import httpx
import pytest
from tests.server.conftest import Server

RESULT_KEYS = {"id", "ok", "duration", "stdout", "stderr"}


def exec_(c: httpx.Client, sandbox: str, files: dict[str, str], command: str = "run", **extra: Any) -> dict:
    r = c.post("/v1/exec", json={"sandbox": sandbox, "command": command, "files": files, **extra})
    assert r.status_code == 200, r.text
    body: dict = r.json()
    assert set(body) == RESULT_KEYS, body
    assert isinstance(body["duration"], int) and body["duration"] >= 0
    assert isinstance(body["ok"], bool)
    return body


def refused(c: httpx.Client, body: Any) -> dict:
    r = c.post("/v1/exec", json=body)
    assert 400 <= r.status_code < 500, r.text
    out: dict = r.json()
    assert set(out) == RESULT_KEYS, out
    assert out["ok"] is False and out["stdout"] == "" and out["duration"] == 0 and out["stderr"]
    return out


# test files; WANT is replaced by the expected value (right: passes, wrong: fails)
PY_TEST = ("import unittest\n\nclass T(unittest.TestCase):\n    def test_add(self):\n"
           "        self.assertEqual(1 + 1, WANT)\n")
JS_TEST = ("const test = require('node:test');\nconst assert = require('node:assert');\n"
           "test('adds', () => { assert.strictEqual(1 + 1, WANT); });\n")
GO_SRC = "package main\n\nfunc add(a, b int) int { return a + b }\n\nfunc main() {}\n"
GO_TEST = ('package main\n\nimport "testing"\n\n'
           'func TestAdd(t *testing.T) { if add(1, 2) != WANT { t.Fatal("wrong sum") } }\n')


def test_run_with_the_empty_named_file_as_entry(client: httpx.Client) -> None:
    body = exec_(client, "python", {"": "import sys\nprint('hello', sys.argv[0])"})
    assert body["ok"] is True
    assert body["stdout"] == "hello main.py\n" and body["stderr"] == ""
    assert re.fullmatch(r"python_run_[0-9a-f]{8}", body["id"]), body["id"]
    assert body["duration"] < 10_000  # milliseconds
    # ids are unique per execution
    assert exec_(client, "python", {"": "print(1)"})["id"] != body["id"]


def test_command_defaults_to_run_and_aliases_name_sandboxes(client: httpx.Client) -> None:
    r = client.post("/v1/exec", json={"sandbox": "py", "files": {"": "print(2 + 2)"}})
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["stdout"] == "4\n"
    assert r.json()["id"].startswith("python_run_")


def test_multi_file(client: httpx.Client) -> None:
    body = exec_(client, "python", {"": "import lib\nprint(lib.greet('codapi'))",
                                    "lib.py": "def greet(n):\n    return f'hi {n}'",
                                    "data.txt": "ignored"})
    assert body["ok"] is True and body["stdout"] == "hi codapi\n"
    if shutil.which("node"):
        body = exec_(client, "javascript", {"": "const { sq } = require('./sq.js'); console.log(sq(7));",
                                            "sq.js": "exports.sq = (x) => x * x;"})
        assert body["ok"] is True and body["stdout"] == "49\n", body
    # without a "" file, the first file is the entry
    body = exec_(client, "python", {"first.py": "print('first')", "second.py": "print('second')"})
    assert body["ok"] is True and body["stdout"] == "first\n"


def test_program_failure_is_ok_false_with_stderr(client: httpx.Client) -> None:
    body = exec_(client, "python", {"": "print('partial')\nraise RuntimeError('kaput')"})
    assert body["ok"] is False
    assert body["stdout"] == "partial\n"
    assert "RuntimeError: kaput" in body["stderr"]
    assert body["id"].startswith("python_run_")


def test_compile_error_is_ok_false_with_the_compilers_message(client: httpx.Client) -> None:
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    body = exec_(client, "c", {"": "int main(void) { return missing_symbol; }"})
    assert body["ok"] is False and body["stdout"] == ""
    assert "missing_symbol" in body["stderr"]


def test_timeout_is_ok_false(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server(env={"EXECBOX_DEFAULTS__WALL_TIME_S": "0.5"})
    with s.client() as c:
        body = exec_(c, "python", {"": "import time\nprint('tick', flush=True)\ntime.sleep(30)"})
    assert body["ok"] is False and body["stdout"] == "tick\n"
    assert "time limit" in body["stderr"]
    assert 400 <= body["duration"] < 5000


@pytest.mark.parametrize(("sandbox", "files", "tool"), [
    ("python", {"test_math.py": PY_TEST}, "python3"),
    ("javascript", {"math.test.js": JS_TEST}, "node"),
])
def test_test_command_pass_and_fail(client: httpx.Client, sandbox: str, files: dict[str, str], tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed")
    passing = exec_(client, sandbox, {k: v.replace('WANT', '2') for k, v in files.items()}, command="test")
    assert passing["ok"] is True, passing
    assert re.fullmatch(rf"{sandbox}_test_[0-9a-f]{{8}}", passing["id"])
    failing = exec_(client, sandbox, {k: v.replace('WANT', '3') for k, v in files.items()}, command="test")
    assert failing["ok"] is False, failing
    report = failing["stdout"] + failing["stderr"]
    if sandbox == "python":
        assert "FAILED (failures=1)" in report and "test_add" in report
        assert "Ran 1 test" in passing["stderr"] and "OK" in passing["stderr"]
    else:
        assert "# fail 1" in report and "# pass 0" in report
        assert "# pass 1" in passing["stdout"] and "# fail 0" in passing["stdout"]


def test_go_test_command(client: httpx.Client) -> None:
    if not shutil.which("go"):
        pytest.skip("go is not installed")
    body = exec_(client, "go", {"add.go": GO_SRC, "add_test.go": GO_TEST.replace("WANT", "3")}, command="test")
    assert body["ok"] is True, body
    assert "--- PASS: TestAdd" in body["stdout"] + body["stderr"]
    assert body["id"].startswith("go_test_")


# --- errors keep Codapi's result shape

def test_unknown_sandbox(client: httpx.Client) -> None:
    out = refused(client, {"sandbox": "cobol", "command": "run", "files": {"": "DISPLAY 'X'."}})
    assert "cobol" in out["stderr"] and "python" in out["stderr"]  # names the supported ones


def test_unknown_command(client: httpx.Client) -> None:
    out = refused(client, {"sandbox": "python", "command": "lint", "files": {"": "print(1)"}})
    assert "command" in out["stderr"]


def test_language_without_a_test_command(client: httpx.Client) -> None:
    out = refused(client, {"sandbox": "bash", "command": "test", "files": {"": "echo hi"}})
    assert out["stderr"] == "bash has no test command"


@pytest.mark.parametrize(("body", "reason"), [
    ({"sandbox": "python", "command": "run", "files": {}}, "code"),
    ({"sandbox": "python", "command": "run"}, "code"),
    ({"command": "run", "files": {"": "print(1)"}}, "sandbox"),
    ({"sandbox": "python", "command": "run", "files": ["print(1)"]}, "files"),
    ({"sandbox": "python", "command": "run", "files": {"": 42}}, "files"),
    ({"sandbox": "python", "command": "run", "files": {"": "print(1)", "../x.py": "1"}}, "file name"),
    ({"sandbox": "python", "command": "run", "files": {"": "print(1)", "main.py": "print(2)"}}, "twice"),
    ({"sandbox": "python", "version": "99", "files": {"": "print(1)"}}, "99"),
])
def test_bad_requests_are_4xx_in_codapis_shape(client: httpx.Client, body: dict, reason: str) -> None:
    assert reason in refused(client, body)["stderr"]


def test_codapi_needs_a_key_and_answers_401_in_its_shape(server: Server) -> None:
    with server.client(key=None) as c:
        r = c.post("/v1/exec", json={"sandbox": "python", "command": "run", "files": {"": "print(1)"}})
    assert r.status_code == 401
    assert set(r.json()) == RESULT_KEYS and r.json()["ok"] is False and "API key" in r.json()["stderr"]
