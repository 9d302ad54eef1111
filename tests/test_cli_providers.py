"""`execbox providers`, `execbox test` and `execbox config show|set`, run as subprocesses against a data_dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SECRET = "cli-secret-" + "y" * 24


def execbox(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
    return subprocess.run([sys.executable, "-m", "execbox.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**base, "EXECBOX_DATA_DIR": str(data_dir), **env})


def test_config_set_and_show_write_the_store_and_mask_secrets(tmp_path: Path) -> None:
    p = execbox(tmp_path, "config", "set", "providers.far", json.dumps(
        {"kind": "remote", "url": "http://127.0.0.1:9", "api_key": SECRET}))
    assert p.returncode == 0, p.stderr
    assert execbox(tmp_path, "config", "set", "providers.echo", '{"kind": "mock"}').returncode == 0
    assert execbox(tmp_path, "config", "set", "fallback_chain", "echo, far").returncode == 0
    assert execbox(tmp_path, "config", "set", "default_provider", "echo").returncode == 0
    assert execbox(tmp_path, "config", "set", "routing", '{"retries": 0}').returncode == 0
    shown = execbox(tmp_path, "config", "show", "--json")
    assert json.loads(shown.stdout) == {
        "default_provider": "echo", "fallback_chain": ["echo", "far"],
        "routing": {"breaker_threshold": 5, "breaker_cooldown_s": 30.0, "retries": 0, "retry_backoff_s": 0.1},
        "providers": {"echo": {"kind": "mock"},
                      "far": {"kind": "remote", "url": "http://127.0.0.1:9", "api_key": "********"}}}
    table = execbox(tmp_path, "config", "show")
    assert table.returncode == 0 and "far" in table.stdout and "********" in table.stdout
    listed = execbox(tmp_path, "providers", "--json")
    rows = {r["name"]: r for r in json.loads(listed.stdout)["instances"]}
    kinds = {k["name"]: k for k in json.loads(listed.stdout)["kinds"]}
    assert {"local", "docker", "ssh", "remote", "mock"} <= kinds.keys() and kinds["ssh"]["available"]
    assert kinds["ssh"]["install"] == "pip install 'execbox[ssh]'"
    assert rows["echo"]["is_default"] and rows["echo"]["status"] == "available"
    assert rows["far"]["chain_position"] == 1 and rows["far"]["settings"]["api_key"] == "********"
    assert execbox(tmp_path, "providers").returncode == 0
    for p in (shown, table, listed):
        assert SECRET not in p.stdout + p.stderr
    assert all(SECRET.encode() not in f.read_bytes() for f in tmp_path.glob("execbox.db*"))
    # the store is the source: the environment's settings no longer count
    again = execbox(tmp_path, "config", "show", "--json", EXECBOX_DEFAULT_PROVIDER="local")
    assert json.loads(again.stdout)["default_provider"] == "echo"


def test_bad_values_are_refused_in_words(tmp_path: Path) -> None:
    cases = [
        (("providers.x", '{"kind": "local", "warm_pool": "many"}'), "warm_pool"),
        (("providers.x", '{"url": "http://h"}'), "give the instance's kind"),
        (("providers.x", "not json"), "not JSON"),
        (("fallback_chain", "local,ghost"), "unknown provider 'ghost'"),
        (("default_provider", "ghost"), "unknown provider 'ghost'"),
        (("routing", '{"breaker_threshold": 0}'), "routing.breaker_threshold"),
        (("colour", "blue"), "unknown key 'colour'"),
    ]
    for args, named in cases:
        p = execbox(tmp_path, "config", "set", *args)
        assert p.returncode == 2 and named in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert json.loads(execbox(tmp_path, "config", "show", "--json").stdout)["providers"] == {}


def test_test_runs_a_program_on_the_provider_and_exits_non_zero_when_it_fails(tmp_path: Path) -> None:
    ok = execbox(tmp_path, "test", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout) | {"wall_ms": 0} == {"ok": True, "provider": "local", "language": "python",
                                                      "wall_ms": 0, "message": "python ran and printed 1"}
    execbox(tmp_path, "config", "set", "providers.nobwrap", '{"kind": "local", "bwrap": "/nonexistent/bwrap"}')
    bad = execbox(tmp_path, "test", "-p", "nobwrap")
    assert bad.returncode == 1 and "failed nobwrap" in bad.stdout and "bwrap" in bad.stdout.split(":", 1)[1]
    assert "Traceback" not in bad.stdout + bad.stderr
    unknown = execbox(tmp_path, "test", "-p", "ghost")
    assert unknown.returncode == 2 and "no provider 'ghost'" in unknown.stderr


def test_a_store_whose_secrets_do_not_open_stops_the_server_in_words_and_is_repaired_with_config_set(
        tmp_path: Path) -> None:
    first, other = {"EXECBOX_SECRET_KEY": "first-key-" + "a" * 30}, {"EXECBOX_SECRET_KEY": "other-key-" + "b" * 30}
    far = {"kind": "remote", "url": "http://127.0.0.1:9", "api_key": SECRET}
    assert execbox(tmp_path, "config", "set", "providers.far", json.dumps(far), **first).returncode == 0
    served = execbox(tmp_path, "serve", "--port", "1", **other)  # refused before it binds the port
    assert served.returncode == 125 and "Traceback" not in served.stderr
    assert "cannot start: the stored provider 'far' cannot be loaded" in served.stderr
    assert "execbox config set providers.far" in served.stderr
    shown = execbox(tmp_path, "config", "show", "--json", **other)  # the CLI leaves it out, and says so
    assert shown.returncode == 0 and "far" not in json.loads(shown.stdout)["providers"]
    assert "does not open with this server key" in shown.stderr
    assert execbox(tmp_path, "config", "set", "providers.far", json.dumps(far), **other).returncode == 0
    repaired = execbox(tmp_path, "config", "show", "--json", **other)
    assert json.loads(repaired.stdout)["providers"]["far"]["api_key"] == "********" and not repaired.stderr


def test_keys_create_admin_gives_the_admin_scope_and_only_then(tmp_path: Path) -> None:
    made = execbox(tmp_path, "keys", "create", "ops", "--admin", "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["scopes"] == ["admin"]
    assert json.loads(execbox(tmp_path, "keys", "create", "app", "--json").stdout)["scopes"] == []
    listed = {k["name"]: k["scopes"] for k in json.loads(execbox(tmp_path, "keys", "list", "--json").stdout)}
    assert listed == {"ops": ["admin"], "app": []}
    assert "admin" in execbox(tmp_path, "keys", "list").stdout
