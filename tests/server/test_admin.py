"""The admin API over real HTTP against a real server: scopes, runtime changes, validation, secrets, restarts
and a provider's test."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from tests.providers import runtime_dir, uid_block
from tests.server.conftest import Server, free_port

from execbox.server import ServerSettings, create_app
from execbox.server.auth import KeyRing, create_key, hash_key
from execbox.server.provider_admin import ConfigError, ProviderAdmin
from execbox.store import SQLiteStore

ADMIN = "/api/v1/admin"
PY = {"language": "python", "code": "print(1)"}
SECRET = "s3cret-api-key-" + "q" * 20
SSH_SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nsshsecret" + "w" * 30


def stored_key(data_dir: Path, name: str, admin: bool = False) -> str:
    """A key in the server's store (made before the server starts, as `execbox keys create` does)."""
    store = SQLiteStore(data_dir / "execbox.db")
    try:
        return create_key(store, name, scopes=("admin",) if admin else ())[0]
    finally:
        store.close()


def second_local() -> dict[str, Any]:
    """A second local instance on the tests' own uids, without pools."""
    block = uid_block("admin-second-local")
    return {"kind": "local", "settings": {"warm_pool": 0, "sandbox_pool": 0, "first_uid": block.start,
                                          "uid_count": len(block), "runtime_dir": str(runtime_dir("admin"))}}


def admin_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every (method, path) the app serves under /api/v1/admin, path parameters filled in."""
    paths = create_app(ServerSettings(data_dir=tmp_path / "routes")).openapi()["paths"]
    return [(method.upper(), re.sub(r"\{[^}]+\}", "local", path))
            for path, methods in paths.items() if path.startswith(ADMIN) for method in methods]


def test_every_admin_route_needs_a_key_with_the_admin_scope(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain, admin = stored_key(tmp_path, "plain"), stored_key(tmp_path, "ops", admin=True)
    s: Server = make_server()
    routes = admin_routes(tmp_path)
    assert len(routes) >= 6 and ("POST", f"{ADMIN}/providers/local/test") in routes
    with s.client(key=plain) as c, s.client(key=None) as anon:
        for method, path in routes:
            r = c.request(method, path, json={})
            assert r.status_code == 403 and r.json()["detail"] == "this key has no admin scope", (method, path)
            assert anon.request(method, path, json={}).status_code == 401, (method, path)
        assert c.post("/api/v1/execute", json=PY).json()["stdout"] == "1\n"  # the key itself works
    with s.client(key=admin) as c:  # a stored key created with the scope, and the operator's own
        assert c.get(f"{ADMIN}/providers").status_code == 200
    with s.client() as c:
        assert c.get(f"{ADMIN}/providers").status_code == 200


def test_changes_apply_to_the_next_request_without_a_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()
    with s.client() as c:
        r = c.put(f"{ADMIN}/providers/second", json=second_local())
        assert r.status_code == 200 and r.json()["configured"] and r.json()["settings"]["warm_pool"] == 0
        ran = c.post("/api/v1/execute", json={**PY, "provider": "second"}).json()
        assert (ran["provider"], ran["stdout"]) == ("second", "1\n")
        assert "second" in [p["name"] for p in c.get("/api/v1/providers").json()["providers"]]

        assert c.put(f"{ADMIN}/providers/echo", json={"kind": "mock"}).status_code == 200
        chain = c.put(f"{ADMIN}/chain", json={"default": "echo", "chain": ["second"]}).json()
        assert (chain["default"], chain["chain"]) == ("echo", ["second"])
        ran = c.post("/api/v1/execute", json=PY).json()
        assert (ran["provider"], ran["stdout"]) == ("echo", "python3 main.py\n")  # the mock echoes its argv
        view = c.get(f"{ADMIN}/providers").json()
        by_name = {i["name"]: i for i in view["instances"]}
        assert by_name["echo"]["is_default"] and by_name["second"]["chain_position"] == 0
        assert by_name["local"]["configured"] is False and by_name["local"]["breaker"]["state"] == "closed"
        assert {"local", "mock", "remote", "ssh"} <= {k["name"] for k in view["kinds"]}
        remote = next(k for k in view["kinds"] if k["name"] == "remote")
        assert remote["secret_fields"] == ["api_key"] and "url" in remote["settings_schema"]["properties"]

        # removing what the default or the chain names is refused; an implicit instance cannot go
        assert c.delete(f"{ADMIN}/providers/echo").status_code == 409
        assert c.delete(f"{ADMIN}/providers/second").status_code == 409
        assert c.delete(f"{ADMIN}/providers/local").status_code == 409
        assert c.delete(f"{ADMIN}/providers/nothing").status_code == 404
        c.put(f"{ADMIN}/chain", json={"default": "second", "chain": []}).raise_for_status()
        assert c.post("/api/v1/execute", json=PY).json()["provider"] == "second"
        assert c.delete(f"{ADMIN}/providers/echo").status_code == 204
        r = c.post("/api/v1/execute", json={**PY, "provider": "echo"})
        assert r.status_code == 400 and "unknown provider 'echo'" in r.json()["detail"]
        reset = c.post(f"{ADMIN}/providers/second/reset").json()
        assert (reset["state"], reset["faults"]) == ("closed", 0)


def test_a_422_names_what_is_wrong(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()
    cases = [
        (f"{ADMIN}/providers/x", {"kind": "local", "settings": {"warm_pool": "many"}}, "warm_pool"),
        (f"{ADMIN}/providers/x", {"kind": "remote", "settings": {}}, "url: Field required"),
        (f"{ADMIN}/providers/x", {"kind": "local", "settings": {"nope": 1}}, "nope: Extra inputs"),
        (f"{ADMIN}/providers/x", {"kind": "teleport"}, "unknown provider kind 'teleport'"),
        (f"{ADMIN}/providers/Bad.Name", {"kind": "mock"}, "provider name 'Bad.Name'"),
        (f"{ADMIN}/providers/x", {"kind": "remote", "settings": {"url": "http://h", "api_key": "********"}},
         "api_key: '********' keeps the stored secret, but none is stored"),
        (f"{ADMIN}/chain", {"chain": ["local", "ghost"]}, "unknown provider 'ghost'"),
        (f"{ADMIN}/chain", {"default": "ghost", "chain": []}, "unknown provider 'ghost'"),
        (f"{ADMIN}/chain", {"chain": ["docker", "docker"]}, "names 'docker' twice"),
    ]
    with s.client() as c:
        for path, body, named in cases:
            r = c.put(path, json=body)
            assert r.status_code == 422 and named in r.json()["detail"], (body, r.text)
        r = c.put(f"{ADMIN}/chain", json={"chain": [], "routing": {"breaker_threshold": 0}})
        assert r.status_code == 422 and "breaker_threshold" in json.dumps(r.json()["detail"])
        assert "x" not in [i["name"] for i in c.get(f"{ADMIN}/providers").json()["instances"]]  # nothing stored


def test_secrets_never_leave_the_server_nor_sit_in_the_store_in_clear(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()
    closed = f"http://127.0.0.1:{free_port()}"
    ssh = {"host": "127.0.0.1", "known_hosts": "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
           "private_key": SSH_SECRET}
    answers: list[str] = []
    with s.client() as c:
        r = c.put(f"{ADMIN}/providers/far", json={"kind": "remote", "settings": {"url": closed, "api_key": SECRET}})
        assert r.json()["settings"]["api_key"] == "********"
        answers.append(r.text)
        answers.append(c.put(f"{ADMIN}/providers/gpu", json={"kind": "ssh", "settings": ssh}).text)
        # sent back masked, the stored secret is kept (checked below, through the store)
        r = c.put(f"{ADMIN}/providers/far", json={"kind": "remote", "settings": {
            "url": closed, "api_key": "********", "extra_time_s": 7}})
        assert r.status_code == 200 and r.json()["settings"] == {"url": closed, "api_key": "********",
                                                                  "extra_time_s": 7.0}
        answers.append(r.text)
        c.put(f"{ADMIN}/chain", json={"chain": ["far", "gpu"]}).raise_for_status()
        for _ in range(2):  # failures on the way (their messages, the breakers' last errors)
            answers.append(c.post("/api/v1/execute", json={**PY, "provider": "far"}).text)
            answers.append(c.post(f"{ADMIN}/providers/far/test").text)
            answers.append(c.post(f"{ADMIN}/providers/gpu/test").text)
        for path in (f"{ADMIN}/providers", "/api/v1/providers", "/metrics", "/health"):
            answers.append(c.get(path).text)
    s.stop()
    db = b"".join(p.read_bytes() for p in tmp_path.glob("execbox.db*"))
    for secret in (SECRET, SSH_SECRET.splitlines()[1]):
        assert all(secret not in a for a in answers)
        assert secret not in s.log()
        assert secret.encode() not in db
    assert b"gAAAA" in db  # sealed (a Fernet token), not dropped
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    store = SQLiteStore(tmp_path / "execbox.db")
    try:  # the store opens with the server's key; the masked PUT kept the secret
        admin = ProviderAdmin(ServerSettings(data_dir=tmp_path), store)
        far = admin.registry.config("far").settings
        assert far is not None and far.api_key.get_secret_value() == SECRET  # type: ignore[attr-defined]
        with pytest.raises(ConfigError, match=r"provider 'far' cannot be loaded \(a stored secret does not open"):
            ProviderAdmin(ServerSettings(data_dir=tmp_path, secret_key=SecretStr("another-key-" + "k" * 30)), store)
    finally:
        store.close()


def test_the_store_survives_a_restart_and_wins_over_the_environment(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"EXECBOX_PROVIDERS": json.dumps({"seeded": {"kind": "mock"}}), "EXECBOX_DEFAULT_PROVIDER": "seeded",
           "EXECBOX_SECRET_KEY": "the-operators-own-key-" + "z" * 20}
    s: Server = make_server(env=env)
    with s.client() as c:
        assert c.post("/api/v1/execute", json=PY).json()["provider"] == "seeded"  # seeded from the settings
        c.put(f"{ADMIN}/providers/far", json={"kind": "remote", "settings": {"url": "http://h", "api_key": SECRET}}
              ).raise_for_status()
        c.put(f"{ADMIN}/chain", json={"default": "local", "chain": ["seeded"], "routing": {"breaker_threshold": 2}}
              ).raise_for_status()
    s.stop()
    env2 = {**env, "EXECBOX_PROVIDERS": json.dumps({"other": {"kind": "mock"}}), "EXECBOX_DEFAULT_PROVIDER": "mock",
            "EXECBOX_FALLBACK_CHAIN": "mock"}
    s2: Server = make_server(env=env2, data_dir=tmp_path)
    with s2.client() as c:
        view = c.get(f"{ADMIN}/providers").json()
        names = {i["name"] for i in view["instances"]}
        assert (view["default"], view["chain"], view["routing"]["breaker_threshold"]) == ("local", ["seeded"], 2)
        assert {"seeded", "far"} <= names and "other" not in names
        far = next(i for i in view["instances"] if i["name"] == "far")
        assert far["settings"]["api_key"] == "********"
        assert c.post("/api/v1/execute", json=PY).json()["provider"] == "local"
    assert not (tmp_path / "secret.key").exists()  # EXECBOX_SECRET_KEY was the key
    ignored = [json.loads(line) for line in s2.log().splitlines() if "provider settings ignored" in line]
    assert ignored and ignored[-1]["ignored"] == ["default_provider", "fallback_chain", "providers"]


def test_a_providers_test_says_ok_or_what_failed_in_words(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()
    with s.client() as c:
        c.put(f"{ADMIN}/providers/second", json=second_local()).raise_for_status()
        broken = second_local()
        broken["settings"]["bwrap"] = "/nonexistent/bwrap"
        c.put(f"{ADMIN}/providers/nobwrap", json=broken).raise_for_status()
        c.put(f"{ADMIN}/providers/far", json={"kind": "remote", "settings": {
            "url": f"http://127.0.0.1:{free_port()}", "connect_timeout_s": 2}}).raise_for_status()
        good = c.post(f"{ADMIN}/providers/second/test")
        assert good.status_code == 200
        assert good.json() | {"wall_ms": 0} == {"ok": True, "provider": "second", "language": "python",
                                                "wall_ms": 0, "message": "python ran and printed 1"}
        for name in ("nobwrap", "far"):
            r = c.post(f"{ADMIN}/providers/{name}/test")
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["ok"] is False and answer["provider"] == name
            assert f"'{name}'" in answer["message"] and "Traceback" not in answer["message"], answer
        assert "bwrap" in c.post(f"{ADMIN}/providers/nobwrap/test").json()["message"]
        # the mock runs nothing: it is not taken for a working provider
        mock = c.post(f"{ADMIN}/providers/mock/test").json()
        assert mock["ok"] is False and "printed 'python3 main.py', not '1'" in mock["message"]
        assert c.post(f"{ADMIN}/providers/ghost/test").status_code == 404
    assert "Traceback" not in s.log()


def test_a_replaced_instance_keeps_serving_its_sandboxes_until_they_end(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()
    with s.client() as c:
        c.put(f"{ADMIN}/providers/second", json=second_local()).raise_for_status()
        created = c.post("/api/v1/sandboxes", json={"language": "bash", "provider": "second"})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        c.put(f"{ADMIN}/providers/second", json={"kind": "mock"}).raise_for_status()  # now another kind
        assert c.post("/api/v1/execute", json={**PY, "provider": "second"}).json()["stdout"] == "python3 main.py\n"
        ran = c.post(f"/api/v1/sandboxes/{sid}/exec", json={"command": "echo $((6 * 7))"})
        assert ran.status_code == 200, ran.text
        assert ran.json()["stdout"] == "42\n"  # a shell ran it: the old local instance, not the mock
        assert c.delete(f"/api/v1/sandboxes/{sid}").status_code in (200, 204)


def test_keys_of_a_store_made_before_scopes_keep_working_without_the_admin_scope(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "execbox.db")
    db.execute("CREATE TABLE api_keys (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, "
               "rate_limit_per_min REAL, caps TEXT, created_at REAL NOT NULL, revoked_at REAL)")
    db.execute("INSERT INTO api_keys VALUES ('old', ?, 'ebx_old', NULL, NULL, 0, NULL)", (hash_key("ebx_old-key"),))
    db.commit()
    db.close()
    store = SQLiteStore(tmp_path / "execbox.db")
    try:
        ring = KeyRing(store, KeyRing.static_names(["operator-key"]), None)
        old = ring.lookup("ebx_old-key")
        assert old is not None and old.name == "old" and old.scopes == frozenset()
        operator = ring.lookup("operator-key")
        assert operator is not None and "admin" in operator.scopes
    finally:
        store.close()
