"""The real `execbox` command's sandbox commands (run --keep/--reuse, list, exec, destroy) against a real server."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tests.server.conftest import KEY, Server, free_port

EXECBOX = [sys.executable, "-m", "execbox.cli"]


def execbox(server: Server | None, *args: str, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
    if server is not None:
        base.update(EXECBOX_URL=server.url, EXECBOX_API_KEY=KEY)
    return subprocess.run([*EXECBOX, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})})


def sandbox_id(p: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"sandbox (sb_[0-9a-f]+)", p.stderr)
    assert found, p.stderr
    return found.group(1)


@pytest.fixture
def label() -> str:
    return f"project={uuid.uuid4().hex[:10]}"


def test_keep_then_reuse_exec_list_and_destroy(server: Server, tmp_path: Path, label: str) -> None:
    first = tmp_path / "first.py"
    first.write_text("import sys\nopen('state.txt', 'w').write('41')\nprint('kept', sys.argv[1:])\n")
    p = execbox(server, "run", "--keep", "-l", label, str(first), "a")
    assert (p.returncode, p.stdout) == (0, "kept ['a']\n"), p.stderr
    sb = sandbox_id(p)

    second = tmp_path / "second.py"
    second.write_text("print(int(open('state.txt').read()) + 1)\nraise SystemExit(3)\n")
    p = execbox(server, "run", "--reuse", "-l", label, str(second))
    assert (p.returncode, p.stdout, sandbox_id(p)) == (3, "42\n", sb)  # the same sandbox, its state

    p = execbox(server, "list", "-l", label, "--json")
    listed = json.loads(p.stdout)
    assert p.returncode == 0 and [s["id"] for s in listed] == [sb]
    key, value = label.split("=")
    assert listed[0]["labels"] == {key: value} and listed[0]["language"] == "python"
    p = execbox(server, "list")
    assert p.returncode == 0 and sb in p.stdout

    p = execbox(server, "exec", sb, "cat state.txt; echo; echo oops >&2; exit 7")
    assert (p.returncode, p.stdout) == (7, "41\n") and "oops" in p.stderr
    p = execbox(server, "exec", sb, "--", "python3", "-c", "import sys; print(sys.argv[1:])", "-x")
    assert (p.returncode, p.stdout) == (0, "['-x']\n")
    p = execbox(server, "exec", sb, "--stdin", "hi", "-e", "V=1", "--json", "cat; echo $V")
    assert p.returncode == 0 and json.loads(p.stdout)["stdout"] == "hi1\n"
    assert execbox(server, "exec", sb, "-t", "1", "sleep 30").returncode == 124

    p = execbox(server, "destroy", sb)
    assert p.returncode == 0 and sb in p.stderr
    assert json.loads(execbox(server, "list", "-l", label, "--json").stdout) == []
    p = execbox(server, "exec", sb, "true")
    assert p.returncode == 125 and "no sandbox" in p.stderr and "Traceback" not in p.stderr


def test_reuse_creates_the_sandbox_when_there_is_none(server: Server, label: str) -> None:
    p = execbox(server, "run", "--reuse", "--label", label, "-c", "echo $((6 * 7))", "--lang", "bash", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["stdout"] == "42\n" and result["status"] == "ok" and result["sandbox_id"].startswith("sb_")
    assert execbox(server, "destroy", result["sandbox_id"]).returncode == 0


def test_a_compiled_language_is_built_in_the_sandbox(server: Server, tmp_path: Path, label: str) -> None:
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint main(){ puts("built"); return 0; }\n')
    p = execbox(server, "run", "--keep", "-l", label, str(tmp_path / "main.c"))
    assert (p.returncode, p.stdout) == (0, "built\n"), p.stderr
    sb = sandbox_id(p)
    try:
        assert execbox(server, "exec", sb, "./main").stdout == "built\n"  # the binary stays
        (tmp_path / "main.c").write_text("int main() { return }\n")
        p = execbox(server, "run", "--reuse", "-l", label, str(tmp_path / "main.c"))
        assert p.returncode == 123 and "error" in p.stderr and "compile_error" in p.stderr
    finally:
        execbox(server, "destroy", sb)


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5: pass\nprint('burnt')"
CPU_RLIMIT = "import resource; print(resource.getrlimit(resource.RLIMIT_CPU)[0])"


def test_timeout_is_the_wall_and_the_cpu_time(make_server, label: str) -> None:  # type: ignore[no-untyped-def]
    """`-t` of `run --keep` and of `exec` sets the CPU time with the wall time, as HTTP's `timeout` does: with a
    server's CPU default of 1 s, `run --keep -t 8` burns 1.5 s of CPU (it was killed at 1 s: -t set the wall
    time only), and `exec -t 3` lowers the CPU limit to 3 s (RLIMIT_CPU: the limit + 1 s; it stayed 2)."""
    s = make_server(env={"EXECBOX_DEFAULTS__CPU_TIME_S": "1"})
    p = execbox(s, "run", "--keep", "-l", label, "-t", "8", "-c", BURN, "-l", "python")
    assert (p.returncode, p.stdout) == (0, "burnt\n"), p.stderr
    sb = sandbox_id(p)
    try:
        p = execbox(s, "exec", sb, "-t", "3", "--", "python3", "-c", CPU_RLIMIT)
        assert (p.returncode, p.stdout) == (0, "4\n"), p.stderr
    finally:
        execbox(s, "destroy", sb)


def test_keep_and_reuse_use_the_servers_languages(make_server, tmp_path: Path, label: str) -> None:  # type: ignore[no-untyped-def]
    """The server compiles and runs as its own languages say: its C builds with a flag the client's does not
    know of, and a language only the server has runs by name (the client never expands a command)."""
    langs = tmp_path / "server-languages"
    langs.mkdir()
    c = (Path(__file__).parents[2] / "src/execbox/languages/builtin/c.toml").read_text()
    (langs / "c.toml").write_text(c.replace('"-pipe",', '"-pipe", "-DWHERE=\\"server\\"",'))
    (langs / "shout.toml").write_text('name = "shout"\nextensions = ["shout"]\nentry = "main.shout"\n'
                                      'requires = ["sh"]\nversion_command = ["sh", "-c", "echo 1.0"]\n'
                                      '[run]\ncommand = ["sh", "{entry}", "{args}"]\n')
    server = make_server(env={"EXECBOX_LANGUAGES_DIR": str(langs)}, data_dir=tmp_path)
    (tmp_path / "main.c").write_text('#include <stdio.h>\nint main(){ puts(WHERE); return 0; }\n')
    p = execbox(server, "run", "--keep", "-l", label, str(tmp_path / "main.c"))
    assert (p.returncode, p.stdout) == (0, "server\n"), p.stderr
    sb = sandbox_id(p)
    try:
        p = execbox(server, "run", "--reuse", "-l", label, "--lang", "shout", "-c", "echo loud $1; ls", "--", "x")
        assert (p.returncode, p.stdout) == (0, "loud x\nmain\nmain.c\nmain.shout\n"), p.stderr
        p = execbox(server, "run", "--reuse", "-l", label, "--json", "--lang", "shout", "-c", "exit 4")
        assert p.returncode == 4 and json.loads(p.stdout)["sandbox_id"] == sb
    finally:
        execbox(server, "destroy", sb)


def test_clear_failures(server: Server, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    p = execbox(None, "list", "--url", nowhere)
    assert p.returncode == 125 and "make serve" in p.stderr and nowhere in p.stderr
    p = execbox(None, "run", "--keep", "-c", "1", "--lang", "python", env={"EXECBOX_URL": nowhere})
    assert p.returncode == 125 and "make serve" in p.stderr
    p = execbox(server, "list", "--api-key", "wrong")
    assert p.returncode == 125 and "refused the API key" in p.stderr
    p = execbox(server, "run", "-l", "project=x", "-c", "1", "--lang", "python")
    assert p.returncode == 125 and "--keep or --reuse" in p.stderr
    p = execbox(server, "run", "--reuse", "-c", "1", "--lang", "python")
    assert p.returncode == 125 and "labels" in p.stderr
    p = execbox(server, "run", "--keep", "--reuse", "-l", "a=b", "-c", "1", "--lang", "python")
    assert p.returncode == 125 and "not both" in p.stderr
    p = execbox(server, "list", "-l", "novalue")
    assert p.returncode == 125 and "KEY=VAL" in p.stderr
    p = execbox(server, "run", "--keep", "-c", "1", "--lang", "cobol")
    assert p.returncode == 125 and "unknown language" in p.stderr
    for p in (execbox(server, "destroy", "sb_nope"), execbox(server, "exec", "sb_nope", "true")):
        assert p.returncode == 125 and "no sandbox" in p.stderr and "Traceback" not in p.stderr


def test_run_without_keep_or_reuse_stays_in_process(tmp_path: Path) -> None:
    """No server at EXECBOX_URL, and `execbox run` works as it always did."""
    p = execbox(None, "run", "-c", "print(6 * 7)", "-l", "python",
                env={"EXECBOX_URL": f"http://127.0.0.1:{free_port()}"})
    assert (p.returncode, p.stdout) == (0, "42\n"), p.stderr


def test_run_code_notebook_session(server: Server, label: str, tmp_path: Path) -> None:
    """The README's notebook session through the CLI: state kept between cells, a figure saved as PNG, errors
    and timeouts as exit codes, the cell from stdin or a file."""
    p = execbox(server, "run-code", "-l", label, "import numpy as np\nx = 41")
    assert (p.returncode, p.stdout) == (0, ""), p.stderr
    sb = sandbox_id(p)
    p = execbox(server, "run-code", sb, "x + 1")
    assert (p.returncode, p.stdout) == (0, "42\n"), p.stderr
    p = execbox(server, "run-code", "-l", label, "--save", str(tmp_path / "out"),
                "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9]); plt.show()")
    assert p.returncode == 0 and sandbox_id(p) == sb and p.stdout.startswith("<Figure"), p.stderr
    [png] = (tmp_path / "out").iterdir()
    assert png.suffix == ".png" and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and str(png) in p.stderr
    p = execbox(server, "run-code", sb, "print('hi'); 1 / 0")
    assert (p.returncode, p.stdout) == (1, "hi\n") and "ZeroDivisionError" in p.stderr
    p = execbox(server, "run-code", sb, "-t", "1", "import time; time.sleep(30)")
    assert p.returncode == 124 and "timeout" in p.stderr
    p = execbox(server, "run-code", sb, "-", stdin="import pandas as pd\npd.DataFrame({'n': [x, x + 1]})")
    assert p.returncode == 0 and p.stdout.split() == ["n", "0", "41", "1", "42"], p.stderr
    cell = tmp_path / "cell.py"
    cell.write_text("x * 2\n")
    p = execbox(server, "run-code", sb, "-f", str(cell), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["text"] == "82"
    p = execbox(server, "run-code", sb, "import os; os._exit(3)")
    assert p.returncode == 137 and "kernel_died" in p.stderr
    p = execbox(server, "run-code", sb, "'x' in globals()")
    assert (p.returncode, p.stdout) == (0, "False\n") and "new kernel" in p.stderr
    assert execbox(server, "destroy", sb).returncode == 0


def test_run_code_bad_requests_exit_125(server: Server) -> None:
    for args, says in [((), "give the sandbox's ID"), (("sb_missing", "1"), "no sandbox"),
                       (("sb_x", "1", "2"), "one argument"), (("-l", "novalue", "1"), "KEY=VAL")]:
        p = execbox(server, "run-code", *args)
        assert p.returncode == 125 and says in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_run_code_interactive_session_on_a_terminal(server: Server, label: str) -> None:
    """Without a cell on a terminal: In [n] prompts, continuation lines for a block, Ctrl-D ends it."""
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
    proc = subprocess.Popen([*EXECBOX, "run-code", "-l", label], stdin=secondary, stdout=secondary,
                            stderr=secondary, env={**env, "EXECBOX_URL": server.url, "EXECBOX_API_KEY": KEY})
    os.close(secondary)
    seen = b""

    def until(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while text.encode() not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([primary], [], [], 1)[0]:
                seen += os.read(primary, 4096)
        seen = seen[seen.index(text.encode()) + len(text):]

    try:
        until("In [1]: ")
        os.write(primary, b"y = 6\n")
        until("In [2]: ")
        os.write(primary, b"for i in range(2):\n")
        until("...: ")
        os.write(primary, b"    print(i * y)\n")
        until("...: ")
        os.write(primary, b"\n")
        until("0\r\n6\r\n")
        until("In [3]: ")
        os.write(primary, b"y * 7\n")
        until("42\r\n")
        until("In [4]: ")
        os.write(primary, b"\x04")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(primary)
    p = execbox(server, "run-code", "-l", label, "y")
    assert (p.returncode, p.stdout) == (0, "6\n")  # the session ended; the sandbox and its kernel live on
    assert execbox(server, "destroy", sandbox_id(p)).returncode == 0
