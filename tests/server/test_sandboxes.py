"""Persistent sandboxes over real HTTP against a real server (local provider, real sandboxes)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.server.conftest import KEY, Server

API = "/api/v1/sandboxes"


def create(c: httpx.Client, **body: object) -> dict:
    r = c.post(API, json={"language": "bash", **body})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def sb(client: httpx.Client) -> Iterator[str]:
    info = create(client, labels={"test": "fixture"})
    yield info["id"]
    client.delete(f"{API}/{info['id']}")


def run(c: httpx.Client, sid: str, command: str | list[str], **kw: object) -> dict:
    r = c.post(f"{API}/{sid}/exec", json={"command": command, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def sse(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            assert event is not None
            yield event, json.loads(line[len("data: "):])
            event = None


def host_has_process(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                pass
    return False


# --- lifecycle and state

def test_create_describes_the_sandbox(client: httpx.Client) -> None:
    info = create(client, language="python", labels={"project": "demo"}, ttl_s=120, limits={"memory_mb": 128})
    try:
        assert info["id"].startswith("sb_") and info["language"] == "python" and info["provider"] == "local"
        assert info["labels"] == {"project": "demo"} and info["ttl_s"] == 120
        assert info["limits"]["memory_mb"] == 128
        assert abs(info["created_at"] - time.time()) < 60
        assert info["idle_expires_at"] > info["created_at"] and info["expires_at"] >= info["idle_expires_at"]
        got = client.get(f"{API}/{info['id']}")
        assert got.status_code == 200 and got.json()["id"] == info["id"]
    finally:
        assert client.delete(f"{API}/{info['id']}").status_code == 204
    assert client.get(f"{API}/{info['id']}").status_code == 404
    assert client.delete(f"{API}/{info['id']}").status_code == 404


def test_state_is_kept_between_execs(client: httpx.Client, sb: str) -> None:
    r = run(client, sb, "echo 'x = 41' > state.py && echo done")
    assert r["success"] and r["output"] == "done\n" and r["exit_code"] == 0 and r["status"] == "ok"
    r = run(client, sb, ["python3", "-c", "from state import x; print(x + 1)"])
    assert r["output"] == "42\n", r
    r = run(client, sb, "sleep 300 >/dev/null 2>&1 & echo $! > bg.pid")
    assert r["success"], r
    r = run(client, sb, "kill -0 $(cat bg.pid) && echo alive")
    assert r["output"] == "alive\n", r
    # the same response shape as POST /api/v1/execute
    assert {"success", "output", "error", "execution_time", "status", "stdout", "stderr"} <= set(r)


def test_exec_takes_stdin_env_and_a_timeout(client: httpx.Client, sb: str) -> None:
    r = run(client, sb, "read line; echo \"$line $GREETING\"", stdin="hi\n", env={"GREETING": "there"})
    assert r["output"] == "hi there\n"
    r = run(client, sb, "sleep 30", timeout=1)
    assert r["status"] == "timeout" and not r["success"], r
    assert run(client, sb, "echo still here")["output"] == "still here\n"  # the sandbox outlived it
    r = run(client, sb, "exit 3")
    assert r["exit_code"] == 3 and not r["success"]


def test_exec_timeout_sets_the_cpu_time_unless_the_limits_set_it(client: httpx.Client, sb: str) -> None:
    rlimit = ["sh", "-c", "ulimit -t"]  # the CPU limit + 1 s
    assert run(client, sb, rlimit, timeout=3)["stdout"] == "4\n"
    assert run(client, sb, rlimit, timeout=3, limits={"cpu_time_s": 1})["stdout"] == "2\n"  # was overridden: 4
    assert run(client, sb, rlimit)["stdout"] == "11\n"  # the sandbox's own, 10 s


def test_stream_delivers_the_first_event_before_the_command_ends(client: httpx.Client, sb: str) -> None:
    start = time.monotonic()
    events: list[tuple[str, dict, float]] = []
    with client.stream("POST", f"{API}/{sb}/exec/stream", json={"command": "echo a; sleep 2; echo b >&2"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for name, data in sse(r.iter_lines()):
            events.append((name, data, time.monotonic() - start))
    assert events[0][:2] == ("stdout", {"data": "a\n"})
    assert ("stderr", {"data": "b\n"}) in [e[:2] for e in events]
    name, result, at = events[-1]
    assert name == "exit" and result["exit_code"] == 0 and result["stdout"] == "a\n" and at >= 2
    assert events[0][2] < at - 1.5, events  # the first event came before the sleep ended, not with the exit


def test_closing_the_stream_kills_the_command(client: httpx.Client) -> None:
    sid = create(client, limits={"wall_time_s": 120})["id"]
    marker = f"{time.time_ns() % 10**9}.25"
    try:
        body = {"command": f"echo started; sleep {marker}; echo never"}
        with client.stream("POST", f"{API}/{sid}/exec/stream", json=body) as r:
            events = sse(r.iter_lines())  # kept: dropping it would close the response at once
            assert next(events)[0] == "stdout"
            deadline = time.monotonic() + 10
            while not host_has_process(f"sleep\0{marker}"):
                assert time.monotonic() < deadline, "the command did not start"
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while host_has_process(f"sleep\0{marker}"):
            assert time.monotonic() < deadline, "the command outlived its stream"
            time.sleep(0.2)
        assert run(client, sid, "echo alive")["output"] == "alive\n"  # the sandbox did not die with it
    finally:
        client.delete(f"{API}/{sid}")


def test_stream_of_a_gone_sandbox_is_a_404(client: httpx.Client) -> None:
    r = client.post(f"{API}/sb_nope/exec/stream", json={"command": "echo a"})
    assert r.status_code == 404


# --- files

def test_files_round_trip_byte_for_byte(client: httpx.Client, sb: str) -> None:
    data = bytes(range(256)) * 1000 + b"\x00\xff"
    r = client.put(f"{API}/{sb}/files/data/blob.bin", content=data)
    assert r.status_code == 200, r.text
    assert r.json() == {"path": "data/blob.bin", "size_bytes": len(data)}
    r = client.get(f"{API}/{sb}/files/data/blob.bin")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.content == data
    r = run(client, sb, "sha256sum data/blob.bin | cut -c1-64")  # the sandbox sees the same bytes
    import hashlib
    assert r["output"].strip() == hashlib.sha256(data).hexdigest()
    run(client, sb, "printf made > data/made.txt")
    assert client.get(f"{API}/{sb}/files/data/made.txt").content == b"made"

    listing = client.get(f"{API}/{sb}/files", params={"dir": "data"})
    assert listing.status_code == 200, listing.text
    entries = {e["name"]: e for e in listing.json()["entries"]}
    assert entries["blob.bin"] == {"name": "blob.bin", "path": "data/blob.bin", "kind": "file",
                                   "size_bytes": len(data)}
    root = client.get(f"{API}/{sb}/files").json()["entries"]
    assert {"name": "data", "path": "data", "kind": "dir", "size_bytes": root[0]["size_bytes"]} in root

    assert client.delete(f"{API}/{sb}/files/data/blob.bin").status_code == 204
    assert client.get(f"{API}/{sb}/files/data/blob.bin").status_code == 404
    assert client.delete(f"{API}/{sb}/files/data/blob.bin").status_code == 404
    assert client.get(f"{API}/{sb}/files", params={"dir": "nodir"}).status_code == 404


def test_a_50_mb_file_round_trips_within_a_raised_body_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(env={"EXECBOX_MAX_BODY_BYTES": str(64 * 1024 * 1024)})
    data = os.urandom(50 * 1024 * 1024)
    with server.client(timeout=120) as c:
        sid = create(c)["id"]
        r = c.put(f"{API}/{sid}/files/big.bin", content=data)
        assert r.status_code == 200, r.text
        back = c.get(f"{API}/{sid}/files/big.bin")
        assert back.status_code == 200 and len(back.content) == len(data) and back.content == data
        # over the sandbox's disk: 413, nothing written
        small = create(c, limits={"disk_mb": 16})["id"]
        r = c.put(f"{API}/{small}/files/big.bin", content=data)
        assert r.status_code == 413, r.text


def test_a_body_over_the_server_limit_is_a_413(client: httpx.Client, sb: str) -> None:
    r = client.put(f"{API}/{sb}/files/big.bin", content=b"x" * (11 * 1024 * 1024))
    assert r.status_code == 413


# --- labels, ownership, counts, TTL

def test_list_filters_by_labels(client: httpx.Client) -> None:
    a = create(client, labels={"project": "a", "stage": "dev"})["id"]
    b = create(client, labels={"project": "b"})["id"]
    try:
        def ids(*labels: str) -> set[str]:
            r = client.get(API, params=[("label", lab) for lab in labels])
            assert r.status_code == 200, r.text
            return {s["id"] for s in r.json()["sandboxes"]}

        assert {a, b} <= ids()
        assert ids("project:a") == {a}
        assert ids("project:a", "stage:dev") == {a}
        assert ids("project:a", "stage:prod") == set()
        assert ids("project:b") == {b}
        assert ids("project:c") == set()
        assert ids("project=a", "stage:dev") == {a}  # key=value, as the CLI and the client write it
        assert ids("project=b") == {b}
        r = client.get(API, params={"label": "nocolon"})
        assert r.status_code == 400 and "key:value" in r.json()["detail"]
        assert client.get(API, params={"label": ":v"}).status_code == 400
    finally:
        client.delete(f"{API}/{a}")
        client.delete(f"{API}/{b}")


def test_another_key_sees_no_sandbox_of_yours(make_server) -> None:  # type: ignore[no-untyped-def]
    other = "other-key-" + "y" * 24
    server: Server = make_server(env={"EXECBOX_API_KEY": f"{KEY},{other}"})
    with server.client() as mine, server.client(key=other) as theirs:
        sid = create(mine, labels={"who": "me"})["id"]
        run(mine, sid, "echo secret > s.txt")
        assert theirs.get(f"{API}/{sid}").status_code == 404
        assert theirs.post(f"{API}/{sid}/exec", json={"command": "cat s.txt"}).status_code == 404
        assert theirs.post(f"{API}/{sid}/exec/stream", json={"command": "cat s.txt"}).status_code == 404
        assert theirs.get(f"{API}/{sid}/files/s.txt").status_code == 404
        assert theirs.put(f"{API}/{sid}/files/t.txt", content=b"x").status_code == 404
        assert theirs.get(f"{API}/{sid}/files").status_code == 404
        assert theirs.delete(f"{API}/{sid}/files/s.txt").status_code == 404
        assert theirs.delete(f"{API}/{sid}").status_code == 404
        assert theirs.get(API).json()["sandboxes"] == []
        assert theirs.get(API, params={"label": "who:me"}).json()["sandboxes"] == []
        assert mine.get(f"{API}/{sid}/files/s.txt").content == b"secret\n"  # untouched


def test_count_limit_per_key(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server(env={"EXECBOX_MAX_SANDBOXES_PER_KEY": "2"})
    with server.client() as c:
        first, _ = create(c)["id"], create(c)["id"]
        r = c.post(API, json={"language": "bash"})
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1 and "destroy one" in r.json()["detail"]
        assert c.delete(f"{API}/{first}").status_code == 204
        create(c)


def test_a_keys_caps_bound_its_sandboxes(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from execbox.models import Limits
    from execbox.server.auth import create_key
    from execbox.store import SQLiteStore

    store = SQLiteStore(tmp_path / "execbox.db")
    key, _ = create_key(store, "capped", caps=Limits(memory_mb=64, wall_time_s=2))
    store.close()
    server: Server = make_server(data_dir=tmp_path)
    with server.client(key=key) as c:
        info = create(c, limits={"memory_mb": 1024, "wall_time_s": 100})
        assert info["limits"]["memory_mb"] == 64 and info["limits"]["wall_time_s"] == 2
        r = run(c, info["id"], "sleep 10", timeout=60)  # an exec cannot widen the sandbox's limits
        assert r["status"] == "timeout" and r["wall_time_s"] < 5, r


def test_an_idle_sandbox_is_reaped_after_its_ttl(client: httpx.Client) -> None:
    sid = create(client, ttl_s=1)["id"]
    deadline = time.monotonic() + 15
    while client.get(f"{API}/{sid}").status_code == 200:
        assert time.monotonic() < deadline, "not reaped"
        time.sleep(0.3)
    assert client.get(f"{API}/{sid}").status_code == 404
    assert client.post(f"{API}/{sid}/exec", json={"command": "true"}).status_code == 404
    assert sid not in {s["id"] for s in client.get(API).json()["sandboxes"]}


def test_server_shutdown_destroys_live_sandboxes(make_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = make_server()
    marker = f"{time.time_ns() % 10**9}.5"
    with server.client() as c:
        sid = create(c)["id"]
        run(c, sid, f"sleep {marker} >/dev/null 2>&1 &")
    assert host_has_process(f"sleep\0{marker}")
    server.stop()
    deadline = time.monotonic() + 10
    while host_has_process(f"sleep\0{marker}"):
        assert time.monotonic() < deadline, "a sandbox's process outlived the server"
        time.sleep(0.2)


# --- bad input: a clear 4xx, never a 5xx

def test_bad_input_is_a_clear_4xx(client: httpx.Client, sb: str) -> None:
    cases = [
        ("GET", f"{API}/sb_unknown", None, 404),
        ("POST", f"{API}/sb_unknown/exec", {"command": "true"}, 404),
        ("GET", f"{API}/{sb}/files/..%2F..%2Fetc%2Fpasswd", None, 400),
        ("PUT", f"{API}/{sb}/files/..%2Fescape.txt", None, 400),
        ("GET", f"{API}/{sb}/files/%2Fetc%2Fpasswd", None, 400),
        ("GET", f"{API}/{sb}/files", {"dir": "../.."}, 400),
        ("GET", f"{API}/{sb}/files/missing.txt", None, 404),
        ("POST", f"{API}/{sb}/exec", {"command": ""}, 422),
        ("POST", f"{API}/{sb}/exec", {"command": "   "}, 422),
        ("POST", f"{API}/{sb}/exec", {"command": []}, 422),
        ("POST", f"{API}/{sb}/exec", {"command": "a\u0000b"}, 422),
        ("POST", f"{API}/{sb}/exec", {"command": "true", "cwd": "../.."}, 400),
        ("POST", f"{API}/{sb}/exec", {"command": "true", "env": {"A=B": "c"}}, 422),
        ("POST", f"{API}/{sb}/exec/stream", {"command": "true", "cwd": "/etc"}, 400),
        ("POST", API, {"language": "klingon"}, 400),
        ("POST", API, {"language": "bash", "labels": {"bad key!": "v"}}, 422),
        ("POST", API, {"language": "bash", "ttl_s": -1}, 422),
        ("POST", API, {"language": "bash", "provider": "nowhere"}, 400),
    ]
    for method, path, payload, status in cases:
        if method == "GET" and payload:
            r = client.get(path, params=payload)  # type: ignore[arg-type]
        elif method == "PUT":
            r = client.put(path, content=b"x")
        else:
            r = client.request(method, path, json=payload)
        assert r.status_code == status, (method, path, payload, r.status_code, r.text)
        assert r.json()["detail"], r.text
    assert client.get(f"{API}/{sb}").status_code == 200  # nothing above hurt the sandbox


# --- programs: POST /{id}/run

def test_run_builds_and_runs_a_program_in_the_sandbox(client: httpx.Client) -> None:
    info = create(client, language="c", limits={"wall_time_s": 3})
    sid = info["id"]
    try:
        src = ('#include <stdio.h>\n'
               'int main(int c, char **v){ char s[8]; scanf("%7s", s); printf("%s %s\\n", s, v[1]); }')
        r = client.post(f"{API}/{sid}/run", json={"code": src, "stdin": "in", "args": ["a"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["status"], body["stdout"], body["success"], body["output"]) == ("ok", "in a\n", True, "in a\n")
        assert body["compile"]["status"] == "ok" and body["language"] == "c"
        assert run(client, sid, "./main b < /dev/null; ls")["stdout"] == " b\nmain\nmain.c\n"  # the build stays
        r = client.post(f"{API}/{sid}/run", json={"code": "int main() { return }"})
        assert r.status_code == 200 and r.json()["status"] == "compile_error", r.text
        r = client.post(f"{API}/{sid}/run", json={"code": "#include <unistd.h>\nint main() { sleep(30); }",
                                                    "timeout": 60})
        assert r.status_code == 200 and r.json()["status"] == "timeout" and r.json()["wall_time_s"] < 10, r.text
        r = client.post(f"{API}/{sid}/run", json={"language": "bash", "code": "echo $X; cat main.c | wc -l",
                                                    "environment": {"X": "x"}})
        assert r.status_code == 200 and r.json()["stdout"] == "x\n1\n", r.text
    finally:
        client.delete(f"{API}/{sid}")


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"code": "x", "language": "cobol"}, 400, "unknown language"),
    ({"code": "x", "files": [{"name": "../evil", "content": "x"}]}, 422, "files"),
    ({"code": "x", "files": [{"name": "main.sh", "content": "y"}]}, 400, "given twice"),
    ({"code": "x", "provider": "local"}, 422, "provider"),
    ({"code": "x", "session_id": "s"}, 422, "session_id"),
    ({"code": "x", "command": "test"}, 400, "no test command"),
    ({"code": "x", "timeout": -1}, 422, "timeout"),
    ({}, 400, "code"),
])
def test_run_refuses_bad_input_with_a_clear_4xx(client: httpx.Client, sb: str, body: dict, status: int,
                                               words: str) -> None:
    r = client.post(f"{API}/{sb}/run", json=body)
    assert r.status_code == status, r.text
    assert words in r.text and "Traceback" not in r.text
    assert client.post(f"{API}/sb_nope/run", json={"code": "x"}).status_code == 404
