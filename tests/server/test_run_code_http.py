"""POST /api/v1/sandboxes/{id}/run_code over real HTTP against a real server (local provider, a real kernel)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import httpx
import pytest
from tests.server.conftest import KEY, Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="persistent local sandboxes need root (uids, cgroups)")

API = "/api/v1/sandboxes"
PNG = b"\x89PNG\r\n\x1a\n"


def create(c: httpx.Client, language: str = "python") -> str:
    r = c.post(API, json={"language": language, "limits": {"wall_time_s": 30, "cpu_time_s": 60}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def cell(c: httpx.Client, sid: str, code: str, **kw: object) -> dict:
    r = c.post(f"{API}/{sid}/run_code", json={"code": code, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
def sb(client: httpx.Client) -> Iterator[str]:
    sid = create(client)
    yield sid
    client.delete(f"{API}/{sid}")


def test_a_notebook_session(client: httpx.Client, sb: str) -> None:
    assert cell(client, sb, "x = 41")["status"] == "ok"
    r = cell(client, sb, "x + 1")
    assert (r["status"], r["text"], r["outputs"], r["restarted"]) == ("ok", "42", [{"text/plain": "42"}], False)
    out = cell(client, sb, "print('hi')\nimport sys; print('oops', file=sys.stderr)")
    assert (out["stdout"], out["stderr"]) == ("hi\n", "oops\n")
    plot = cell(client, sb, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2]); plt.show()")
    pngs = [base64.b64decode(o["image/png"]) for o in plot["outputs"] if "image/png" in o]
    assert len(pngs) == 1 and pngs[0].startswith(PNG)
    err = cell(client, sb, "[][1]")
    assert err["status"] == "error" and err["error"]["name"] == "IndexError"
    assert any("[][1]" in line for line in err["error"]["traceback"])
    slow = cell(client, sb, "import time; time.sleep(60)", timeout=1)
    assert slow["status"] == "timeout" and slow["error"]["name"] == "KeyboardInterrupt"
    assert cell(client, sb, "x")["text"] == "41"  # the state lived through the interrupt


def test_the_route_is_in_the_openapi(client: httpx.Client) -> None:
    op = client.get("/openapi.json").json()["paths"][f"{API}/{{sandbox_id}}/run_code"]["post"]
    assert {"200", "404", "422"} <= set(op["responses"])


def test_another_key_gets_a_404(make_server) -> None:  # type: ignore[no-untyped-def]
    other = "other-key-" + "y" * 24
    server: Server = make_server(env={"EXECBOX_API_KEY": f"{KEY},{other}"})
    with server.client() as mine, server.client(key=other) as theirs:
        sid = create(mine)
        assert cell(mine, sid, "secret = 1")["status"] == "ok"
        r = theirs.post(f"{API}/{sid}/run_code", json={"code": "secret"})
        assert r.status_code == 404 and r.json()["detail"]
        assert cell(mine, sid, "secret")["text"] == "1"


def test_bad_input_is_a_clear_4xx(client: httpx.Client, sb: str) -> None:
    shell = create(client, "bash")
    try:
        cases = [
            (f"{API}/sb_unknown/run_code", {"code": "1"}, 404),
            (f"{API}/{sb}/run_code", {}, 422),
            (f"{API}/{sb}/run_code", {"code": 1}, 422),
            (f"{API}/{sb}/run_code", {"code": "1", "timeout": 0}, 422),
            (f"{API}/{sb}/run_code", {"code": "1", "timeout": "soon"}, 422),
            (f"{API}/{sb}/run_code", {"code": "a\u0000b"}, 422),
            (f"{API}/{sb}/run_code", {"code": "1", "extra": True}, 422),
            (f"{API}/{shell}/run_code", {"code": "1"}, 400),  # a bash sandbox has no python kernel
        ]
        for path, payload, status in cases:
            r = client.post(path, json=payload)
            assert r.status_code == status, (path, payload, r.status_code, r.text)
            assert r.json()["detail"], r.text
        r = client.post(f"{API}/{sb}/run_code", content=b'{"code": "\\ud800"}',
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
    finally:
        client.delete(f"{API}/{shell}")
    assert cell(client, sb, "1 + 1")["text"] == "2"  # nothing above hurt the sandbox
