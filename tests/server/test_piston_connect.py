"""Piston's interactive runs, /api/v2/connect, over a real WebSocket to a real server: a program asking for
input is driven live (each answer is sent after its prompt arrived), signals reach it, compile stages are
reported, and every way a client can misbehave ends with Piston's close code, never a hang or a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.server.conftest import KEY, Server
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

ASK = """
name = input("name? ")
print(f"hello {name}", flush=True)
age = input("age? ")
print(f"{name} is {age}")
"""


@contextmanager
def ws(server: Server, key: str | None = KEY) -> Iterator[ClientConnection]:
    url = server.url.replace("http://", "ws://") + "/api/v2/connect"
    with connect(url, additional_headers={"X-API-Key": key} if key else {}, open_timeout=10) as c:
        yield c


def recv(c: ClientConnection) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(c.recv(timeout=30))
    return msg


def until(c: ClientConnection, pred: Any) -> list[dict[str, Any]]:
    """Messages up to and including the first that matches ``pred``."""
    seen = []
    while True:
        seen.append(recv(c))
        if pred(seen[-1]):
            return seen


def output_until(c: ClientConnection, text: str) -> str:
    """The output up to the moment it contains ``text`` (output may come in any number of pieces)."""
    out = ""
    while text not in out:
        msg = recv(c)
        assert msg["type"] in ("runtime", "stage", "data"), msg
        out += msg.get("data", "")
    return out


def closed(c: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as e:
        while True:
            c.recv(timeout=30)
    assert e.value.rcvd is not None
    return e.value.rcvd.code, e.value.rcvd.reason


def init(language: str, content: str, **extra: Any) -> str:
    return json.dumps({"type": "init", "language": language, "version": "*", "files": [{"content": content}],
                       **extra})


def test_a_program_asking_for_input_is_driven_live(server: Server) -> None:
    with ws(server) as c:
        c.send(init("python", ASK))
        assert recv(c)["type"] == "runtime"
        assert recv(c) == {"type": "stage", "stage": "run"}
        assert output_until(c, "name? ") == "name? "  # the prompt came before any answer was sent
        c.send(json.dumps({"type": "data", "stream": "stdin", "data": "ada\n"}))
        assert output_until(c, "age? ") == "hello ada\nage? "
        c.send(json.dumps({"type": "data", "stream": "stdin", "data": "36\n"}))
        rest = until(c, lambda m: m["type"] == "exit")
        assert "".join(m.get("data", "") for m in rest) == "ada is 36\n"
        assert rest[-1]["stage"] == "run" and rest[-1]["code"] == 0 and rest[-1]["signal"] is None
        assert closed(c) == (4999, "Job Completed")


def test_init_stdin_comes_first_and_a_signal_reaches_the_program(server: Server) -> None:
    code = "import signal, sys\nprint(input(), flush=True)\nsignal.pause()\n"
    with ws(server) as c:
        c.send(init("python", code, stdin="first\n", run_timeout=20000))
        assert output_until(c, "first\n") == "first\n"
        c.send(json.dumps({"type": "signal", "signal": "SIGTERM"}))
        end = until(c, lambda m: m["type"] == "exit")[-1]
        assert end["signal"] == "SIGTERM" and end["code"] is None
        assert closed(c) == (4999, "Job Completed")


def test_a_compiled_language_reports_both_stages(server: Server) -> None:
    code = '#include <stdio.h>\nint main(void){int n; scanf("%d",&n); printf("%d\\n", n*2); return 0;}\n'
    with ws(server) as c:
        c.send(init("c", code))
        assert recv(c)["type"] == "runtime"
        compile_msgs = until(c, lambda m: m["type"] == "exit")
        assert compile_msgs[0] == {"type": "stage", "stage": "compile"} and compile_msgs[-1]["code"] == 0
        assert recv(c) == {"type": "stage", "stage": "run"}
        c.send(json.dumps({"type": "data", "stream": "stdin", "data": "21\n"}))
        rest = until(c, lambda m: m["type"] == "exit")
        assert "".join(m.get("data", "") for m in rest) == "42\n" and rest[-1]["code"] == 0


def test_a_program_waiting_for_input_times_out_at_its_run_timeout(server: Server) -> None:
    with ws(server) as c:
        c.send(init("python", "input()", run_timeout=500))
        end = until(c, lambda m: m["type"] == "exit")[-1]
        assert end["status"] == "TO" and end["signal"] == "SIGKILL"
        assert closed(c) == (4999, "Job Completed")


@pytest.mark.parametrize(("messages", "code", "reason"), [
    ([], 4001, "Initialization Timeout"),
    ([{"type": "data", "stream": "stdin", "data": "x"}], 4003, "Not yet Initialized"),
    (["init", {"type": "init"}], 4000, "Already Initialized"),
    (["init", {"type": "data", "stream": "stdout", "data": "x"}], 4004, "Can only write to stdin"),
    (["init", {"type": "signal", "signal": "SIGNOPE"}], 4005, "Invalid signal"),
])
def test_protocol_errors_close_with_pistons_codes(server: Server, messages: list[Any], code: int,
                                                  reason: str) -> None:
    with ws(server) as c:
        for m in messages:
            c.send(init("python", "input()", run_timeout=20000) if m == "init" else json.dumps(m))
        assert closed(c) == (code, reason)


@pytest.mark.parametrize("first", [
    init("cobol", "x"), "not json", json.dumps([1]), json.dumps({"type": "init", "language": "python"}),
])
def test_bad_init_is_an_error_message_then_4002(server: Server, first: str) -> None:
    with ws(server) as c:
        c.send(first)
        msg = recv(c)
        assert msg["type"] == "error" and msg["message"]
        assert closed(c) == (4002, "Notified Error")


def test_the_handshake_needs_a_key(server: Server) -> None:
    for key in (None, "wrong-key-" + "x" * 20):
        with pytest.raises(InvalidStatus) as e, ws(server, key):
            pass
        assert e.value.response.status_code == 403


def test_a_client_going_away_kills_the_run(server: Server) -> None:
    marker = "execbox-ws-orphan-check"
    with ws(server) as c:
        c.send(init("python", f"import time\nprint('{marker}', flush=True)\ntime.sleep(60)", run_timeout=60000))
        output_until(c, marker)
    with server.client() as h:  # the server serves on, and the run's sandbox is gone (no sandbox is left live)
        assert h.get("/health").status_code == 200
    import subprocess
    import time
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", f"print\\('{marker}'"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the run outlived its client"
        time.sleep(0.1)
