"""execbox's cloud handler run as a function service would run it, for the tests: in a child process in
a PID and IPC namespace of its own (``unshare --pid --ipc --fork --mount-proc``, as root), so that its
environment reset (kill(-1), the scratch directories emptied, IPC removed) reaches nothing of this machine:
only the namespace's processes can be signalled, and /tmp, /var/tmp, /dev/shm and /run/lock are tmpfs
mounts of the namespace's own.

    HttpHandler     python -m execbox.providers.cloud.handler on a loopback port (Cloud Run / Container Apps:
                    root, the programs as another uid, the handler pid 1 of its namespace)
    LambdaHandler   lambda_driver.py: the handler as Lambda runs it (not root, the programs as its own uid,
                    not pid 1: its parent is the namespace's init, of another uid)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.providers import uid_block

ROOT = Path(__file__).resolve().parents[2]
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# A checkout under one of them (a clone in /tmp) would be hidden by the namespace's tmpfs: it is bound at
# KEEP first and run from there. Never bound back at its own path: the reset empties those directories.
HIDDEN = any(ROOT.is_relative_to(d) for d in PRIVATE_DIRS)
KEEP = Path("/run/execbox-test-checkout")  # one empty directory on the host; each namespace binds its own
SEEN = KEEP if HIDDEN else ROOT  # the checkout, as the namespace sees it


def seen(path: str | Path) -> str:
    """``path`` (this checkout's file, or another) as the namespace sees it."""
    p = Path(path)
    return str(SEEN / p.relative_to(ROOT)) if HIDDEN and p.is_relative_to(ROOT) else str(p)
UIDS = uid_block("handler", 2)
RUN_UID, LAMBDA_UID = UIDS.start, UIDS.start + 1


def usable() -> str | None:
    """Why the handler cannot be run in a namespace here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (unshare --pid --mount-proc, tmpfs mounts)"
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return "needs util-linux's unshare and setpriv"
    return None


needs_namespace = pytest.mark.skipif(usable() is not None, reason=str(usable()))


def _namespace_argv(command: str) -> list[str]:
    mounts = [f"mount -t tmpfs -o mode=1777 tmpfs {d}" for d in PRIVATE_DIRS]
    if HIDDEN:
        mounts.insert(0, f"mkdir -p {KEEP} && mount --bind {ROOT} {KEEP}")
    return ["unshare", "--pid", "--ipc", "--fork", "--mount-proc", "--kill-child", "bash", "-c",
            f"{' && '.join(mounts)} && cd {SEEN} && {command}"]


def _env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "HOME")}
    return {**keep, "PYTHONPATH": seen(ROOT / "src") + os.pathsep + str(SEEN), "PYTHONDONTWRITEBYTECODE": "1",
            **extra}


def call(code: str, *, language: str = "python", stdin: str = "", execution_id: str | None = None,
         **limits: Any) -> dict[str, Any]:
    """A HandlerCall as execbox sends one (every limit set)."""
    lim = {"wall_time_s": 5, "cpu_time_s": 5, "compile_wall_time_s": 30, "memory_mb": 256, "pids": 32,
           "output_bytes": 64 * 1024, "file_size_mb": 8, "disk_mb": 64, "open_files": 64, "network": False,
           **limits}
    return {"version": 1, "execution_id": execution_id or uuid.uuid4().hex,
            "request": {"language": language, "code": code, "stdin": stdin, "limits": lim}}


class HttpHandler:
    """The HTTP handler in its namespace; ``post`` sends a call, ``health`` asks its state."""

    def __init__(self, token: str | None = "test-token", **env: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.token = token
        extra = {"PORT": str(self.port), "EXECBOX_HANDLER_HOST": "127.0.0.1", "EXECBOX_HANDLER_RESET": "1",
                 "EXECBOX_HANDLER_RUN_AS": f"{RUN_UID}:{RUN_UID}", "EXECBOX_HANDLER_EGRESS": "none", **env}
        if token:
            extra["EXECBOX_HANDLER_TOKEN"] = token
        self.proc = subprocess.Popen(
            _namespace_argv(f"exec {seen(sys.executable)} -m execbox.providers.cloud.handler"), env=_env(**extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.get("/health")
                break
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    self.close()
                    raise RuntimeError(f"the handler did not come up: {err}") from None
                time.sleep(0.1)

    def post(self, body: Any, token: str | None = None) -> httpx.Response:
        token = token or self.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post("/run", content=data, headers={**headers, "Content-Type": "application/json"})

    def run(self, body: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.post(body).json()
        return answer

    def close(self) -> None:
        self.client.close()
        self.proc.kill()  # --kill-child: the namespace's init goes with it, and every process in it
        self.proc.wait()


class LambdaHandler:
    """lambda_driver.py in its namespace, as the Lambda runtime runs the handler; ``invoke`` is one call."""

    def __init__(self, **env: str) -> None:
        extra = {"AWS_LAMBDA_FUNCTION_NAME": "execbox-test", "AWS_LAMBDA_RUNTIME_API": "127.0.0.1:9001",
                 "EXECBOX_HANDLER_EGRESS": "none", "HOME": "/tmp", **env}
        driver = ROOT / "tests" / "cloud" / "lambda_driver.py"
        as_user = f"setpriv --reuid={LAMBDA_UID} --regid={LAMBDA_UID} --clear-groups"
        # not exec'd: bash stays the namespace's pid 1 (root), the handler its child, as Lambda's init is
        self.proc = subprocess.Popen(
            _namespace_argv(f"{as_user} {seen(sys.executable)} {seen(driver)}; exit $?"), env=_env(**extra),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", text=True)

    def invoke(self, event: Any, remaining_ms: int = 60_000) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"event": event, "remaining_ms": remaining_ms}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"the Lambda driver ended: {err}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
