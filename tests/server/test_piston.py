"""The Piston v2 drop-in over real HTTP, used the way a Piston client uses it: POST /api/v2/execute and
GET /api/v2/runtimes, Piston's request and response shapes (milliseconds, bytes), its names and aliases, and
its error shape (``{"message"}``)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from typing import Any

import httpx
import pytest
from tests.server.conftest import Server

STAGE_KEYS = {"stdout", "stderr", "output", "code", "signal"}


def execute(c: httpx.Client, language: str, *files: dict[str, Any], version: str = "*", **extra: Any) -> dict:
    r = c.post("/api/v2/execute", json={"language": language, "version": version, "files": list(files), **extra})
    assert r.status_code == 200, r.text
    body: dict = r.json()
    assert set(body["run"]) >= STAGE_KEYS, body
    return body


def bad_request(c: httpx.Client, body: Any, status: int = 400) -> str:
    r = c.post("/api/v2/execute", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"message"}, r.json()
    message: str = r.json()["message"]
    assert isinstance(message, str) and message
    return message


@pytest.fixture(scope="module")
def runtimes(server: Server) -> list[dict]:
    with server.client() as c:
        r = c.get("/api/v2/runtimes")
    assert r.status_code == 200, r.text
    return list(r.json())


def runtime(runtimes: list[dict], language: str) -> dict:
    return next(rt for rt in runtimes if rt["language"] == language)


# --- runtimes

def test_runtimes_lists_installed_languages_in_pistons_shape(runtimes: list[dict]) -> None:
    assert runtimes
    for rt in runtimes:
        assert {"language", "version", "aliases"} <= set(rt), rt
        assert isinstance(rt["aliases"], list) and all(isinstance(a, str) for a in rt["aliases"])
        assert re.match(r"^\d+(\.\d+)+", rt["version"]), rt  # a real version, not "" or "*"
    names = [rt["language"] for rt in runtimes]
    assert len(names) == len(set(names))
    py = runtime(runtimes, "python")
    assert {"py", "python3"} <= set(py["aliases"])
    assert py["version"].startswith("3.")
    if shutil.which("node"):
        js = runtime(runtimes, "javascript")
        assert js["runtime"] == "node" and "node-javascript" in js["aliases"]
    if shutil.which("mono") and shutil.which("mcs"):
        assert runtime(runtimes, "csharp")["runtime"] == "mono"


def test_piston_needs_a_key_and_answers_401_in_its_shape(server: Server) -> None:
    with server.client(key=None) as c:
        for r in (c.get("/api/v2/runtimes"),
                  c.post("/api/v2/execute", json={"language": "python", "version": "*",
                                                  "files": [{"content": "print(1)"}]})):
            assert r.status_code == 401, r.text
            assert set(r.json()) == {"message"} and "API key" in r.json()["message"]
    with server.client(key="not-a-key") as c:
        r = c.get("/api/v2/runtimes")
        assert r.status_code == 401 and set(r.json()) == {"message"}


# --- execute: the happy paths

def test_execute_python_stdin_args_and_the_response_shape(client: httpx.Client, runtimes: list[dict]) -> None:
    body = execute(client, "python", {"content": "import sys\nprint(input()[::-1])\nprint(sys.argv[1:])"},
                   stdin="olleh\n", args=["a", "b c"])
    assert body["language"] == "python"
    assert body["version"] == runtime(runtimes, "python")["version"]
    assert "compile" not in body  # interpreted: no compile stage at all, not even null
    run = body["run"]
    assert run["stdout"] == "hello\n['a', 'b c']\n"
    assert run["stderr"] == "" and run["output"] == run["stdout"]
    assert run["code"] == 0 and run["signal"] is None and run["status"] is None
    assert isinstance(run["wall_time"], int) and 0 <= run["wall_time"] < 10_000  # milliseconds
    assert isinstance(run["memory"], int) and run["memory"] > 1024 * 1024  # bytes


def test_stdout_stderr_output_and_runtime_error(client: httpx.Client) -> None:
    run = execute(client, "py3", {"name": "prog.py",
                                  "content": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)"})[
        "run"]
    assert run["stdout"] == "out\n" and run["stderr"] == "err\n"
    assert "out\n" in run["output"] and "err\n" in run["output"] and len(run["output"]) == 8
    assert run["code"] == 3 and run["signal"] is None and run["status"] == "RE"

    run = execute(client, "python", {"content": "raise ValueError('boom')"})["run"]
    assert run["code"] == 1 and run["status"] == "RE" and "ValueError: boom" in run["stderr"]


def test_files_with_and_without_names(client: httpx.Client) -> None:
    # the first file is the entry whatever its name; the others are importable by theirs
    run = execute(client, "python", {"name": "app.py", "content": "import helper\nhelper.hi()"},
                  {"name": "helper.py", "content": "def hi():\n    print('helped')"})["run"]
    assert run["stdout"] == "helped\n" and run["code"] == 0
    # unnamed files: the entry still runs, the others get Piston's names (file1.code, ...)
    run = execute(client, "python", {"content": "import os\nprint(sorted(f for f in os.listdir() if 'code' in f))"},
                  {"content": "data"}, {"content": "more"})["run"]
    assert run["stdout"] == "['file1.code', 'file2.code']\n"
    # a data file read by name
    run = execute(client, "python", {"content": "print(open('data.txt').read().upper())"},
                  {"name": "data.txt", "content": "abc"})["run"]
    assert run["stdout"] == "ABC\n"


def test_base64_and_hex_encodings(client: httpx.Client) -> None:
    code = "print('decoded', 6 * 7)\n"
    b64 = base64.b64encode(code.encode()).decode()
    assert execute(client, "python", {"content": b64, "encoding": "base64"})["run"]["stdout"] == "decoded 42\n"
    hx = code.encode().hex()
    assert execute(client, "python", {"content": hx, "encoding": "hex"})["run"]["stdout"] == "decoded 42\n"
    # binary data files survive byte for byte
    blob = bytes(range(256))
    run = execute(client, "python",
                  {"content": "import hashlib\nprint(hashlib.sha256(open('b.bin','rb').read()).hexdigest())"},
                  {"name": "b.bin", "content": base64.b64encode(blob).decode(), "encoding": "base64"})["run"]
    assert run["stdout"].strip() == hashlib.sha256(blob).hexdigest()
    assert execute(client, "python", {"content": code, "encoding": "utf8"})["run"]["stdout"] == "decoded 42\n"


def test_version_star_and_real_prefixes(client: httpx.Client, runtimes: list[dict]) -> None:
    full = runtime(runtimes, "python")["version"]
    major, minor = full.split(".")[:2]
    for version in ("*", major, f"{major}.{minor}", full):
        body = execute(client, "python", {"content": "print(1)"}, version=version)
        assert body["run"]["stdout"] == "1\n" and body["version"] == full, version
    # a prefix must end at a dot: "3.1" is not 3.11
    if len(minor) > 1:
        wrong = f"{major}.{minor[:-1]}"
        assert bad_request(client, {"language": "python", "version": wrong, "files": [{"content": "print(1)"}]}) \
            == f"python-{wrong} runtime is unknown"


@pytest.mark.parametrize(("alias", "language", "code", "expected"), [
    ("c++", "cpp", '#include <iostream>\nint main(){ std::cout << "cpp " << __cplusplus / 100 << std::endl; }',
     "cpp 2017\n"),
    ("node-javascript", "javascript", "console.log('node', process.argv.length)", "node 2\n"),
    ("sqlite3", "sql", "create table t(x); insert into t values (1),(2); select sum(x) from t;", "3\n"),
    ("mono", "csharp", "class P { static void Main() { System.Console.WriteLine(\"mono\"); } }", "mono\n"),
    ("csharp", "csharp", "class P { static void Main() { System.Console.WriteLine(\"cs\"); } }", "cs\n"),
])
def test_pistons_language_names_and_aliases(client: httpx.Client, runtimes: list[dict], alias: str, language: str,
                                            code: str, expected: str) -> None:
    if not any(rt["language"] == language for rt in runtimes):
        pytest.skip(f"{language} is not installed")
    body = execute(client, alias, {"content": code})
    assert body["language"] == language
    assert body["run"]["stdout"] == expected and body["run"]["code"] == 0, body
    compiled = language in ("cpp", "csharp")
    assert ("compile" in body) == compiled  # compile only for compiled languages
    if compiled:
        assert body["compile"]["code"] == 0 and set(body["compile"]) >= STAGE_KEYS


def test_compile_error_is_a_result_with_compile_code_nonzero(client: httpx.Client, runtimes: list[dict]) -> None:
    if not any(rt["language"] == "c" for rt in runtimes):
        pytest.skip("gcc is not installed")
    body = execute(client, "c", {"name": "main.c", "content": "int main(void) { return undeclared_thing; }"})
    comp = body["compile"]
    assert comp["code"] not in (0, None) and comp["signal"] is None
    assert "undeclared_thing" in comp["stderr"] and comp["output"] == comp["stdout"] + comp["stderr"]
    assert body["run"] == comp  # the program never ran: Piston repeats the compile stage as run


# --- limits: milliseconds and bytes

def test_run_timeout_in_ms_gives_sigkill_and_to(client: httpx.Client) -> None:
    run = execute(client, "python", {"content": "import time\nprint('start', flush=True)\ntime.sleep(30)"},
                  run_timeout=400)["run"]
    assert run["signal"] == "SIGKILL" and run["status"] == "TO" and run["code"] is None
    assert run["stdout"] == "start\n"  # what was printed before the kill is kept
    assert 300 <= run["wall_time"] < 5000
    # a generous timeout lets a short program finish
    run = execute(client, "python", {"content": "import time\ntime.sleep(0.2)\nprint('done')"},
                  run_timeout=5000, compile_timeout=10000, run_cpu_time=5000, compile_cpu_time=10000)["run"]
    assert run["stdout"] == "done\n" and run["code"] == 0 and run["status"] is None


def test_compile_timeout_in_ms(client: httpx.Client, runtimes: list[dict]) -> None:
    if not any(rt["language"] == "c" for rt in runtimes):
        pytest.skip("gcc is not installed")
    body = execute(client, "c", {"content": "int main(void) { return 0; }"}, compile_timeout=5)
    assert body["compile"]["status"] == "TO" and body["compile"]["signal"] == "SIGKILL"


def test_memory_limits_in_bytes_and_minus_one(client: httpx.Client) -> None:
    hog = "x = bytearray(300 * 1024 * 1024)\nprint('allocated')"
    run = execute(client, "python", {"content": hog}, run_memory_limit=64 * 1024 * 1024)["run"]
    assert run["stdout"] == "" and run["code"] != 0
    assert run["signal"] == "SIGKILL" or "MemoryError" in run["stderr"], run
    assert run["status"] in ("SG", "RE")
    # -1: no limit but the server's (512 MiB by default): the same program runs
    run = execute(client, "python", {"content": hog}, run_memory_limit=-1, compile_memory_limit=-1)["run"]
    assert run["stdout"] == "allocated\n" and run["code"] == 0, run


def test_output_is_kept_on_a_signal(client: httpx.Client) -> None:
    run = execute(client, "python", {"content": "import os, signal\nprint('before', flush=True)\n"
                                                "os.kill(os.getpid(), signal.SIGSEGV)"})["run"]
    assert run["signal"] == "SIGSEGV" and run["status"] == "SG" and run["code"] is None
    assert run["stdout"] == "before\n"


# --- Piston's errors: 400 {"message"}

def test_unknown_runtime_and_wrong_version(client: httpx.Client) -> None:
    files = [{"content": "print(1)"}]
    assert bad_request(client, {"language": "cobol", "version": "*", "files": files}) == "cobol-* runtime is unknown"
    assert bad_request(client, {"language": "python", "version": "2.7", "files": files}) == \
        "python-2.7 runtime is unknown"
    assert bad_request(client, {"language": "python", "version": "99", "files": files}) == \
        "python-99 runtime is unknown"


@pytest.mark.parametrize(("body", "field"), [
    ({"language": "python", "version": "*"}, "files"),
    ({"language": "python", "version": "*", "files": []}, "files"),
    ({"language": "python", "version": "*", "files": "print(1)"}, "files"),
    ({"language": "python", "version": "*", "files": [{"name": "a.py"}]}, "content"),
    ({"version": "*", "files": [{"content": "print(1)"}]}, "language"),
    ({"language": 3, "version": "*", "files": [{"content": "print(1)"}]}, "language"),
    ({"language": "python", "files": [{"content": "print(1)"}], "run_timeout": "soon"}, "run_timeout"),
    ({"language": "python", "files": [{"content": "print(1)"}], "run_timeout": -5}, "run_timeout"),
    ({"language": "python", "files": [{"content": "print(1)"}], "run_memory_limit": -2}, "run_memory_limit"),
    ({"language": "python", "files": [{"content": "print(1)"}], "run_memory_limit": 1.5e15}, "run_memory_limit"),
    ({"language": "python", "files": [{"content": "print(1)"}], "run_timeout": 1e12}, "run_timeout"),
    ({"language": "python", "files": [{"content": "print(1)"}], "args": "a b"}, "args"),
    ({"language": "python", "files": [{"content": "print(1)"}], "stdin": ["x"]}, "stdin"),
    ({"language": "python", "files": [{"content": "print(1)", "encoding": "rot13"}]}, "encoding"),
])
def test_bad_field_types_are_400_naming_the_field(client: httpx.Client, body: dict, field: str) -> None:
    assert field in bad_request(client, body)


def test_bad_encodings_unsafe_names_and_duplicates_are_400(client: httpx.Client) -> None:
    def files(*fs: dict) -> dict:
        return {"language": "python", "version": "*", "files": list(fs)}

    assert "hex" in bad_request(client, files({"content": "zz", "encoding": "hex"}))
    assert "base64" in bad_request(client, files({"content": "not base64!", "encoding": "base64"}))
    for name in ("../escape.py", "/etc/passwd", "a/../../b.py", "x\u0000.py"):
        message = bad_request(client, files({"content": "print(1)"}, {"name": name, "content": "x"}))
        assert "file name" in message, (name, message)
    assert "unique" in bad_request(client, files({"name": "main.py", "content": "print(1)"},
                                                 {"name": "main.py", "content": "print(2)"}))
    assert "NUL" in bad_request(client, {**files({"content": "print(1)"}), "args": ["a\u0000b"]})


def test_non_json_body_is_400_in_pistons_shape(client: httpx.Client) -> None:
    r = client.post("/api/v2/execute", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"message"}


@pytest.mark.parametrize("code", [
    "public class Solution {\n  public static void main(String[] a) { System.out.println(\"java \" + a.length); }\n}",
    "import java.util.*;\nclass Helper {}\nfinal class Prog {\n  static public void main(String[] a) {\n"
    "    System.out.println(\"java \" + a.length);\n  }\n}",
])
def test_unnamed_java_runs_whatever_its_class_is_called(client: httpx.Client, runtimes: list[dict],
                                                         code: str) -> None:
    # Piston runs Java with the single-file launcher, so clients send any class name in an unnamed file
    if not any(rt["language"] == "java" for rt in runtimes):
        pytest.skip("java is not installed")
    body = execute(client, "java", {"content": code}, args=["x"])
    assert body["compile"]["code"] == 0, body["compile"]
    assert body["run"]["stdout"] == "java 1\n" and body["run"]["code"] == 0, body["run"]


def test_pistons_own_java_test_program_runs(client: httpx.Client, runtimes: list[dict]) -> None:
    # Piston's packages/java test.java: a public class HelloWorld in a file named test.java
    if not any(rt["language"] == "java" for rt in runtimes):
        pytest.skip("java is not installed")
    code = ('public class HelloWorld {\n    public static void main(String[] args) {\n'
            '        System.out.println("OK");\n    }\n}\n')
    body = execute(client, "java", {"name": "test.java", "content": code})
    assert body["compile"]["code"] == 0, body["compile"]
    assert body["run"]["stdout"] == "OK\n" and body["run"]["code"] == 0, body["run"]
