"""The docker provider through the HTTP service (a real server in a subprocess): selected by the request's
`provider` field, listed by /api/v1/providers, its containers removed when the server stops; with dockerd
unreachable, the service still serves with the local provider."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

import docker
from execbox.providers.docker.container import PID_LABEL

KEY = "docker-test-key-" + "y" * 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(tmp: Path, **env: str) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    port = _free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
    full.update({"EXECBOX_DATA_DIR": str(tmp), "EXECBOX_PORT": str(port), "EXECBOX_API_KEY": KEY,
                 "EXECBOX_DEV_KEY": "false", "EXECBOX_DOCKER_POOL_SIZE": "1", **env})
    with open(tmp / "server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "execbox.cli", "serve"], env=full, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client:
            yield client, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _containers_of(pid: int) -> list[str]:
    api = docker.from_env().api
    return [c["Id"] for c in api.containers(all=True, filters={"label": f"{PID_LABEL}={pid}"})]


def test_provider_field_selects_docker_and_shutdown_removes_its_containers(tmp_path: Path) -> None:
    with server(tmp_path) as (client, proc):
        infos = {p["name"]: p for p in client.get("/api/v1/providers").json()["providers"]}
        assert infos["docker"]["status"] == "available" and infos["local"]["status"] == "available"
        r = client.post("/api/v1/execute", json={"language": "python", "code": "print(6 * 7)", "provider": "docker"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["provider"] == "docker" and body["output"] == "42\n", body
        assert _containers_of(proc.pid)  # the pool's containers, labelled with the server's pid
        pid = proc.pid
    assert _containers_of(pid) == []  # SIGTERM: the server closed its providers, every container removed


def test_default_provider_docker_from_the_environment(tmp_path: Path) -> None:
    with server(tmp_path, EXECBOX_DEFAULT_PROVIDER="docker") as (client, _):
        r = client.post("/api/v1/execute", json={"language": "javascript", "code": "console.log(1 + 1)"})
        assert r.status_code == 200 and r.json()["provider"] == "docker", r.text


def test_dockerd_unreachable_the_service_keeps_serving_with_local(tmp_path: Path) -> None:
    with server(tmp_path, DOCKER_HOST="unix:///nonexistent/docker.sock") as (client, _):
        infos = {p["name"]: p for p in client.get("/api/v1/providers").json()["providers"]}
        assert infos["docker"]["status"] == "unavailable", infos
        assert "not reachable" in (infos["docker"]["message"] or "")
        r = client.post("/api/v1/execute", json={"language": "python", "code": "print(1)", "provider": "docker"})
        assert r.status_code in (502, 503), r.text
        r = client.post("/api/v1/execute", json={"language": "python", "code": "print(1)"})
        assert r.status_code == 200 and r.json()["provider"] == "local", r.text
