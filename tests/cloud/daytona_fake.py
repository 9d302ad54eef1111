"""A loopback fake of the part of Daytona's REST API the ``daytona`` SDK uses here.

Control plane (``{base}/api``): ``POST /sandbox`` (create; answers the Sandbox DTO, its ``toolboxProxyUrl``
pointing back here), ``GET /sandbox/{id}``, ``DELETE /sandbox/{id}``. The toolbox (``{base}/toolbox/{id}``,
which the SDK reaches through the DTO's ``toolboxProxyUrl``): ``GET /work-dir``, ``POST /process/execute``
(run for real by ``/bin/sh -c`` in the sandbox's temp dir, under the request's timeout: 408
PROCESS_EXECUTION_TIMEOUT as the daemon answers), ``POST /files/bulk-upload`` (multipart) and
``POST /files/bulk-download`` (a multipart answer, an "error" part for a missing file). Anything else is a 404,
the SDK's Socket.IO event connection included (it falls back to polling).

Knobs a test sets: ``refuse_create`` (status, body, headers) for the next creates, ``drop_exec`` (the exec is
received, counted, and the connection closed with no answer), ``start_state`` ("starting": sandboxes that never
start).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

API_KEY = "test-daytona-key"


@dataclass
class FakeSandbox:
    id: str
    root: str
    created: dict[str, Any]
    state: str = "started"


@dataclass
class DaytonaFake:
    key: str = API_KEY
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    creates: list[dict[str, Any]] = field(default_factory=list)
    execs: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # "METHOD /path" of every request, the sandbox id as {id}
    refuse_create: tuple[int, dict[str, Any], dict[str, str]] | None = None
    drop_exec: bool = False
    start_state: str = "started"  # "starting": sandboxes that never come up
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> DaytonaFake:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 2**20)
        app.add_routes([
            web.post("/api/sandbox", self.create),
            web.get("/api/sandbox/{id}", self.get),
            web.delete("/api/sandbox/{id}", self.delete),
            web.get("/toolbox/{id}/work-dir", self.work_dir),
            web.post("/toolbox/{id}/process/execute", self.execute),
            web.post("/toolbox/{id}/files/bulk-upload", self.upload),
            web.post("/toolbox/{id}/files/bulk-download", self.download),
        ])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for box in self.sandboxes.values():
            shutil.rmtree(box.root, ignore_errors=True)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        for box_id in self.sandboxes:
            path = path.replace(box_id, "{id}")
        self.requests.append(f"{request.method} {path}")
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return _error(401, "Invalid credentials", "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    def _box(self, request: web.Request) -> FakeSandbox:
        box = self.sandboxes.get(request.match_info["id"])
        if box is None or box.state == "destroyed":
            raise web.HTTPNotFound(text=json.dumps({"statusCode": 404, "message": "Sandbox not found"}),
                                   content_type="application/json")
        return box

    def _dto(self, box: FakeSandbox) -> dict[str, Any]:
        c = box.created
        return {
            "id": box.id, "organizationId": "org-1", "name": box.id, "snapshot": c.get("snapshot"),
            "user": c.get("user") or "daytona", "env": c.get("env") or {}, "labels": c.get("labels") or {},
            "public": False, "networkBlockAll": bool(c.get("networkBlockAll")), "kvm": False,
            "target": c.get("target") or "us", "cpu": c.get("cpu") or 1, "gpu": 0,
            "memory": c.get("memory") or 1, "disk": c.get("disk") or 3, "state": box.state,
            "autoStopInterval": c.get("autoStopInterval"), "autoDeleteInterval": c.get("autoDeleteInterval"),
            "toolboxProxyUrl": f"{self.url}/toolbox",
        }

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.creates.append(body)
        if self.refuse_create is not None:
            status, payload, headers = self.refuse_create
            return web.json_response(payload, status=status, headers=headers)
        box = FakeSandbox(uuid.uuid4().hex[:12], tempfile.mkdtemp(prefix="daytona-fake-"), body, self.start_state)
        self.sandboxes[box.id] = box
        return web.json_response(self._dto(box))

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self._dto(self._box(request)))

    async def delete(self, request: web.Request) -> web.Response:
        box = self._box(request)
        box.state = "destroyed"
        self.deleted.append(box.id)
        shutil.rmtree(box.root, ignore_errors=True)
        return web.json_response(self._dto(box))

    async def work_dir(self, request: web.Request) -> web.Response:
        return web.json_response({"dir": self._box(request).root})

    async def execute(self, request: web.Request) -> web.Response:
        box = self._box(request)
        body = await request.json()
        self.execs.append(body)
        if self.drop_exec:  # received, then the connection is lost before any answer
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", body["command"], cwd=body.get("cwd") or box.root, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), body.get("timeout") or 10)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return web.json_response({"statusCode": 408, "message": "command execution timeout",
                                      "code": "PROCESS_EXECUTION_TIMEOUT", "source": "DAYTONA_DAEMON"}, status=408)
        return web.json_response({"exitCode": proc.returncode, "result": out.decode(errors="replace")})

    async def upload(self, request: web.Request) -> web.Response:
        self._box(request)
        paths: dict[str, str] = {}
        datas: dict[str, bytes] = {}
        reader = await request.multipart()
        async for part in reader:
            assert isinstance(part, BodyPartReader)
            name = part.name or ""
            index, _, kind = name.partition(".")
            if kind == "path":
                paths[index] = (await part.read()).decode()
            elif kind == "file":
                datas[index] = bytes(await part.read())
        for index, path in paths.items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(datas[index])
        return web.json_response({})

    async def download(self, request: web.Request) -> web.Response:
        self._box(request)
        boundary = uuid.uuid4().hex
        chunks: list[bytes] = []
        for path in (await request.json())["paths"]:
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    name, kind, data = "file", "application/octet-stream", f.read()
            else:
                name, kind = "error", "application/json"
                data = json.dumps({"message": f"file not found: {path}", "statusCode": 404,
                                   "code": "FILE_NOT_FOUND", "source": "DAYTONA_DAEMON"}).encode()
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path}"\r\n'
                          f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        return web.Response(body=b"".join(chunks),
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _error(status: int, message: str, error: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message, "error": error}, status=status)
