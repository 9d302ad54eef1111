"""The real `execbox` command, run as a subprocess against the real local provider."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXECBOX = [sys.executable, "-m", "execbox.cli"]


def execbox(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXECBOX, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_run_file_language_from_extension(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("import sys\nprint('hi', sys.argv[1:])\n")
    p = execbox("run", str(tmp_path / "hello.py"), "a", "b")
    assert (p.returncode, p.stdout) == (0, "hi ['a', 'b']\n")


def test_run_from_stdin_with_lang() -> None:
    p = execbox("run", "--lang", "go", "-", stdin='package main\nimport "fmt"\nfunc main(){ fmt.Println("go!") }\n')
    assert (p.returncode, p.stdout) == (0, "go!\n")


def test_run_code_stdin_env_and_dash_args() -> None:
    code = "import os, sys\nprint(input(), os.environ['K'], sys.argv[1:])\nsys.exit(7)"
    p = execbox("run", "-c", code, "-l", "python", "--stdin", "in", "-e", "K=v=1", "--", "-x", "y")
    assert p.stdout == "in v=1 ['-x', 'y']\n"
    assert p.returncode == 7
    assert "runtime_error" in p.stderr


def test_extra_files(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import util\nprint(util.X)\n")
    (tmp_path / "util.py").write_text("X = 42\n")
    p = execbox("run", str(tmp_path / "main.py"), "-f", str(tmp_path / "util.py"))
    assert (p.returncode, p.stdout) == (0, "42\n")


def test_run_java_of_any_file_name_and_class(tmp_path: Path) -> None:
    # Piston's Java test program: a public class HelloWorld in test.java
    (tmp_path / "test.java").write_text('public class HelloWorld {\n    public static void main(String[] args) {\n'
                                        '        System.out.println("OK " + args.length);\n    }\n}\n')
    p = execbox("run", str(tmp_path / "test.java"), "x")
    assert (p.returncode, p.stdout) == (0, "OK 1\n"), p.stderr
    p = execbox("run", "-c", 'class Prog { public static void main(String[] a) { System.out.println("np"); } }',
                "-l", "java")
    assert (p.returncode, p.stdout) == (0, "np\n"), p.stderr


@pytest.mark.parametrize(
    ("code", "lang", "extra", "expected"),
    [
        ("while True: pass", "python", ["-t", "1"], 124),
        ("print('x' * 10**8)", "python", [], 121),
        ("x = bytearray(300 * 1024 * 1024)", "python", ["-m", "64"], 122),
        ("int main() { return }", "c", [], 123),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "python", [], 128 + 11),
    ],
    ids=["timeout", "output", "memory", "compile", "signal"],
)
def test_reserved_exit_codes(code: str, lang: str, extra: list[str], expected: int) -> None:
    p = execbox("run", "-c", code, "-l", lang, *extra)
    assert p.returncode == expected, p.stderr


def test_bad_requests_exit_125_with_a_clear_message(tmp_path: Path) -> None:
    p = execbox("run", "-c", "1", "-l", "cobol")
    assert p.returncode == 125 and "unknown language 'cobol'" in p.stderr and "python" in p.stderr
    (tmp_path / "x.unknownext").write_text("1")
    p = execbox("run", str(tmp_path / "x.unknownext"))
    assert p.returncode == 125 and "--lang" in p.stderr
    p = execbox("run", "-c", "1", "-l", "python", "-e", "NOEQUALS")
    assert p.returncode == 125 and "KEY=VAL" in p.stderr
    p = execbox("run", str(tmp_path / "missing.py"))
    assert p.returncode == 125 and "cannot read" in p.stderr
    p = execbox("run", "-l", "python")
    assert p.returncode == 125
    assert "Traceback" not in p.stderr


def test_json_output_is_the_execution_result() -> None:
    p = execbox("run", "-c", "print(1)", "-l", "py", "--json")
    r = json.loads(p.stdout)
    assert r["status"] == "ok" and r["stdout"] == "1\n" and r["language"] == "python"
    assert r["provider"] == "local" and r["exit_code"] == 0 and r["wall_time_s"] > 0


def test_languages_json_lists_all_builtins_available() -> None:
    p = execbox("languages", "--json")
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert set(rows) == {"python", "javascript", "typescript", "bash", "c", "cpp", "csharp", "java", "go",
                         "rust", "ruby", "php", "sql"}
    assert all(r["available"] and r["version"] for r in rows.values()), rows


def test_doctor_reports_every_isolation_feature_ok_here() -> None:
    p = execbox("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(p.stdout)}
    assert p.returncode == 0
    for name in ("bubblewrap", "cgroups", "seccomp", "user namespaces", "sandbox smoke test", "languages"):
        assert checks[name]["state"] == "ok", checks[name]


CPU_RLIMIT = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0])"


def test_timeout_is_the_wall_and_the_cpu_time() -> None:
    """`--timeout` means what HTTP's `timeout` and execute_code's do: the CPU time too (the local provider's
    RLIMIT_CPU is the CPU limit + 1 s). It was the wall time only: `-t 60` still died at 10 s of CPU."""
    p = execbox("run", "-t", "3", "-c", CPU_RLIMIT, "-l", "python")
    assert (p.returncode, p.stdout) == (0, "4\n"), p.stderr


def test_no_command_module_imports_the_app() -> None:
    """The shared helpers live in cli/common.py, so no command module imports cli/app.py (which registers them
    all): no import circle between the CLI's modules (sandboxes imported app, app imported sandboxes)."""
    import ast

    import execbox.cli

    for path in Path(execbox.cli.__file__).parent.glob("*.py"):
        if path.name in ("app.py", "__init__.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {"execbox.cli.app", "execbox.cli"} & imported, path.name
