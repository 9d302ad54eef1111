"""The fallback chain in a real server, from settings: a docker instance whose engine is not there (the docker SDK
fails to connect, as when dockerd is stopped) is the default, local is next in the chain."""

from __future__ import annotations

import json

PY = {"language": "python", "code": "print(6 * 7)"}
DEAD_DOCKER = {"kind": "docker", "host": "unix:///run/execbox-tests-no-dockerd.sock"}


def test_the_chain_falls_over_from_an_unreachable_engine_and_its_breaker_opens(make_server) -> None:  # type: ignore[no-untyped-def]
    s = make_server(env={"EXECBOX_PROVIDERS": json.dumps({"gone": DEAD_DOCKER}),
                         "EXECBOX_DEFAULT_PROVIDER": "gone", "EXECBOX_FALLBACK_CHAIN": "local",
                         "EXECBOX_ROUTING__BREAKER_THRESHOLD": "2", "EXECBOX_ROUTING__RETRIES": "0"})
    with s.client() as c:
        infos = {p["name"]: p for p in c.get("/api/v1/providers").json()["providers"]}
        assert infos["gone"]["kind"] == "docker" and infos["gone"]["status"] == "unavailable"
        assert "not reachable" in infos["gone"]["message"] and infos["gone"]["chain_position"] == 0
        assert infos["local"]["chain_position"] == 1
        health = c.get("/health").json()["components"]["providers"]
        assert health["status"] == "ok" and health["chain"] == ["gone", "local"]  # local can still run code

        for _ in range(2):
            r = c.post("/api/v1/execute", json=PY).json()
            assert r["output"] == "42\n" and r["provider"] == "local"
            gone, local = r["provider_attempts"]
            assert (gone["provider"], gone["phase"]) == ("gone", "start") and "not reachable" in gone["error"]
            assert local == {"provider": "local", "phase": "run", "error": None}

        r = c.post("/api/v1/execute", json=PY).json()  # two faults in a row: its circuit is open, it is skipped
        assert r["provider"] == "local" and r["provider_attempts"][0]["phase"] == "circuit"
        assert c.get("/health").json()["components"]["providers"]["breakers"] == {"gone": "open"}
        assert 'sandbox_provider_circuit_state{provider="gone"} 2.0' in c.get("/metrics").text
        breaker = {p["name"]: p for p in c.get("/api/v1/providers").json()["providers"]}["gone"]["breaker"]
        assert breaker["state"] == "open" and breaker["faults"] == 2 and breaker["retry_in_s"] > 0

        pinned = c.post("/api/v1/execute", json={**PY, "provider": "gone"})  # pinned: no fallback
        assert pinned.status_code == 503 and "circuit open" in pinned.json()["detail"]
        assert [a["phase"] for a in pinned.json()["provider_attempts"]] == ["circuit"]
        named = c.post("/api/v1/execute", json={**PY, "provider": "gone", "fallback": ["local"]}).json()
        assert named["provider"] == "local"


def test_a_chain_naming_an_unknown_provider_stops_the_server_in_words(make_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    with pytest.raises(RuntimeError, match="unknown provider 'nowhere'"):
        make_server(env={"EXECBOX_FALLBACK_CHAIN": "local,nowhere"})


def test_a_bad_provider_table_stops_the_server_naming_the_field(make_server) -> None:  # type: ignore[no-untyped-def]
    import pytest

    bad = {"gpu1": {"kind": "ssh", "host": "h"}}  # no known_hosts: a host key must be pinned
    with pytest.raises(RuntimeError, match="provider 'gpu1' \\(ssh\\): known_hosts: Field required"):
        make_server(env={"EXECBOX_PROVIDERS": json.dumps(bad)})


def test_servers_chain_through_settings_and_the_front_falls_over_when_the_far_one_dies(  # type: ignore[no-untyped-def]
        make_server, tmp_path) -> None:
    from tests.server.conftest import KEY

    (tmp_path / "far").mkdir()
    (tmp_path / "front").mkdir()
    far = make_server(data_dir=tmp_path / "far")
    front = make_server(env={"EXECBOX_PROVIDERS": json.dumps({"far": {"kind": "remote", "url": far.url,
                                                                      "api_key": KEY}}),
                             "EXECBOX_DEFAULT_PROVIDER": "far", "EXECBOX_FALLBACK_CHAIN": "local"},
                        data_dir=tmp_path / "front")
    with front.client() as c:
        r = c.post("/api/v1/execute", json=PY).json()
        assert r["output"] == "42\n" and r["provider"] == "far"
        assert [a["phase"] for a in r["provider_attempts"]] == ["run"]
        infos = c.get("/api/v1/providers").text
        assert KEY not in infos and '"kind":"remote"' in infos  # the far key is a secret: never answered
        far.stop()
        r = c.post("/api/v1/execute", json=PY).json()
        assert r["output"] == "42\n" and r["provider"] == "local"
        assert r["provider_attempts"][0]["provider"] == "far" and r["provider_attempts"][0]["phase"] == "start"
