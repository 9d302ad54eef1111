"""A loopback fake of Modal's gRPC API, for the real ``modal`` SDK: the subset its ``Sandbox.create``, ``exec``,
``filesystem`` and ``terminate`` call, in the message shapes of ``modal_proto``.

Both Modal services answer on one port: the control plane (``ModalClient``: auth token, app, image, sandbox
create/terminate) and the worker's task command router (``TaskCommandRouter``: exec start, output, wait and
stdin), whose URL the sandbox's create answer hands the SDK (``http://127.0.0.1``: the SDK allows plain HTTP
for a loopback server). A sandbox is a temp directory on this host; its execs run for real (``/bin/sh`` is the
host's), and Modal's file tool (``/__modal/.bin/modal-sandbox-fs-tools`` with a JSON command) is played by
the fake. Each sandbox has a filesystem of its own under ``/sandbox``: the fake puts its temp directory in
place of that prefix in the exec's arguments and the file tool's paths (the tests set the box's workdir
under it); other paths are the host's.

Every RPC the fake does not implement answers UNIMPLEMENTED and is recorded in ``unknown``, so a test sees
when the SDK calls something new. ``calls`` counts every RPC by name; ``fail`` makes a method answer an error
(before doing anything); ``fail_program`` holds errors for a program's execs only (not the file tool's), one
used by each call: "TaskExecStart" fails after starting it (it runs, its answer is lost), "TaskExecWait"
before answering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal._utils.grpc_utils import custom_detail_codec
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
SANDBOX_ROOT = "/sandbox"  # each fake sandbox's own directory, in the paths it is given
Handler = Callable[[Any, Stream[Any, Any]], Coroutine[Any, Any, None]]


def _jwt(**claims: object) -> str:
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@dataclass
class Proc:
    """One exec in a fake sandbox: its output so far and its end."""

    args: list[str]
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    returncode: int | None = None
    stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: asyncio.Event = field(default_factory=asyncio.Event)
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Future[None] | None = None  # what finishes it (held: a task nobody holds may be collected)


@dataclass
class FakeSandbox:
    sandbox_id: str
    task_id: str
    request: api_pb2.SandboxCreateV2Request
    root: str
    terminated: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)


class ModalFake:
    """The fake's state, and its server (``start`` answers the URL for MODAL_SERVER_URL)."""

    def __init__(self, token_id: str = "ak-fake", token_secret: str = "as-fake") -> None:
        self.token = (token_id, token_secret)
        self.calls: Counter[str] = Counter()
        self.unknown: list[str] = []
        self.fail: dict[str, GRPCError] = {}
        self.fail_program: dict[str, list[GRPCError]] = {}
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.exec_starts: list[sr_pb2.TaskExecStartRequest] = []
        self.kill_offset_s = 0.0  # when, after an exec's timeout_secs, the fake kills it (as Modal does at 0)
        self._router_jwt = _jwt(sub="router", exp=int(time.time()) + 3600)
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> str:
        # errors' details (Modal's RPCRetryPolicy) in Modal's own encoding, which the SDK decodes
        services = [_service(ModalClientBase, self, _CONTROL), _service(TaskCommandRouterBase, self, _ROUTER)]
        self._server = Server(services, status_details_codec=custom_detail_codec)
        await self._server.start("127.0.0.1", 0)
        port = self._server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for sb in self.sandboxes.values():
            _kill_all(sb)
        pending = [p.task for sb in self.sandboxes.values() for p in sb.procs.values() if p.task is not None]
        for proc in [p for sb in self.sandboxes.values() for p in sb.procs.values()]:
            proc.stdin_closed.set()  # a file tool still waiting for its stdin ends too
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def live(self) -> list[FakeSandbox]:
        return [s for s in self.sandboxes.values() if not s.terminated]

    def user_execs(self) -> list[sr_pb2.TaskExecStartRequest]:
        """The exec starts that arrived for programs (not Modal's file tool)."""
        return [r for r in self.exec_starts if r.command_args[:1] != [FS_TOOLS]]

    # -- checks every call makes -------------------------------------------------------------------------

    def _control_auth(self, stream: Stream[Any, Any]) -> None:
        md = stream.metadata or {}
        if (md.get("x-modal-token-id"), md.get("x-modal-token-secret")) != self.token:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret")

    def _router_auth(self, stream: Stream[Any, Any]) -> None:
        if (stream.metadata or {}).get("authorization") != f"Bearer {self._router_jwt}":
            raise GRPCError(Status.UNAUTHENTICATED, "bad router jwt")

    def _program_failure(self, method: str) -> GRPCError | None:
        errors = self.fail_program.get(method)
        return errors.pop(0) if errors else None

    def _sandbox(self, task_id: str) -> FakeSandbox:
        for sb in self.sandboxes.values():
            if sb.task_id == task_id and not sb.terminated:
                return sb
        raise GRPCError(Status.NOT_FOUND, f"task {task_id} not found")

    def _proc(self, task_id: str, exec_id: str) -> Proc:
        proc = self._sandbox(task_id).procs.get(exec_id)
        if proc is None:
            raise GRPCError(Status.NOT_FOUND, f"exec {exec_id} not found")
        return proc

    # -- control plane -----------------------------------------------------------------------------------

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=_jwt(exp=int(time.time()) + 3600)))

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=f"ap-{req.app_name}"))

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        settings = api_pb2.EnvironmentSettings(image_builder_version="2025.06")
        meta = api_pb2.EnvironmentMetadata(name=req.deployment_name or "main", settings=settings)
        await stream.send_message(api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-fake", metadata=meta))

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        built = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id="im-fake", result=built))

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxCreateV2Request = await stream.recv_message()
        if not (stream.metadata or {}).get("x-modal-auth-token"):
            raise GRPCError(Status.UNAUTHENTICATED, "no auth token")
        sid = f"sb-{uuid.uuid4().hex[:12]}"
        sb = FakeSandbox(sid, f"ta-{uuid.uuid4().hex[:12]}V", req, tempfile.mkdtemp(prefix="modal-fake-"))
        self.sandboxes[sid] = sb
        access = api_pb2.CommandRouterAccess(url=self.url, jwt=self._router_jwt)
        await stream.send_message(api_pb2.SandboxCreateV2Response(
            sandbox_id=sid, task_id=sb.task_id, command_router_access=access))

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        await stream.recv_message()
        await stream.send_message(api_pb2.SandboxGetCommandRouterAccessResponse(url=self.url, jwt=self._router_jwt))

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        if sb := self.sandboxes.get(req.sandbox_id):
            sb.terminated = True
            _kill_all(sb)
        await stream.send_message(api_pb2.SandboxTerminateResponse())

    # -- task command router -----------------------------------------------------------------------------

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStartRequest = await stream.recv_message()
        self.exec_starts.append(req)
        sb = self._sandbox(req.task_id)
        proc = sb.procs[req.exec_id] = Proc([a.replace(SANDBOX_ROOT, sb.root) for a in req.command_args])
        if proc.args[:1] == [FS_TOOLS]:
            proc.task = asyncio.ensure_future(_fs_tool(proc))
        else:
            timeout = req.timeout_secs + self.kill_offset_s if req.HasField("timeout_secs") else None
            await _spawn(proc, sb.root, timeout)
            if error := self._program_failure("TaskExecStart"):
                await sb.procs[req.exec_id].done.wait()  # it ran to its end; then its answer is lost
                raise error
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStdioReadRequest = await stream.recv_message()
        proc = self._proc(req.task_id, req.exec_id)
        out = proc.stdout if req.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT else proc.stderr
        await proc.done.wait()  # output goes in one message at the end: enough for runs to their end
        if len(out) > req.offset:
            await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=bytes(out[req.offset:])))

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        proc = self._proc(req.task_id, req.exec_id)
        if proc.args[:1] != [FS_TOOLS] and (error := self._program_failure("TaskExecWait")):
            raise error
        await proc.done.wait()
        code = proc.returncode or 0
        answer = sr_pb2.TaskExecWaitResponse(signal=-code) if code < 0 else sr_pb2.TaskExecWaitResponse(code=code)
        await stream.send_message(answer)

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        proc = self._proc(req.task_id, req.exec_id)
        answer = sr_pb2.TaskExecPollResponse()
        if proc.done.is_set():
            answer = sr_pb2.TaskExecPollResponse(code=proc.returncode or 0)
        await stream.send_message(answer)

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        proc: Proc | None = None
        async for msg in stream:
            if msg.HasField("start"):
                proc = self._proc(msg.start.task_id, msg.start.exec_id)
                del proc.stdin[msg.start.offset:]
            elif proc is not None and msg.HasField("end"):
                proc.stdin_closed.set()
            elif proc is not None:
                proc.stdin.extend(msg.data)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        req = await stream.recv_message()
        proc = self._proc(req.task_id, req.exec_id)
        await stream.send_message(sr_pb2.TaskExecStdinStatusResponse(
            num_bytes_written=len(proc.stdin), closed=proc.stdin_closed.is_set()))


_CONTROL = ("ClientHello", "AuthTokenGet", "AppGetOrCreate", "EnvironmentGetOrCreate", "ImageGetOrCreate",
            "SandboxCreateV2", "SandboxGetCommandRouterAccess", "SandboxTerminateV2")
_ROUTER = ("TaskExecStart", "TaskExecStdioRead", "TaskExecWait", "TaskExecPoll", "TaskExecStdinWriteStream",
           "TaskExecStdinStatus")


def _service(base: type, fake: ModalFake, implemented: tuple[str, ...]) -> Any:
    """An instance of the generated service ``base`` whose every method counts its call, checks the
    credentials (control plane) or the router's JWT, plays the test's failures and goes to ``fake``."""
    def method(name: str) -> Handler:
        async def handle(_self: Any, stream: Stream[Any, Any]) -> None:
            fake.calls[name] += 1
            if name not in implemented:
                fake.unknown.append(name)
                raise GRPCError(Status.UNIMPLEMENTED, f"the fake has no {name}")
            (fake._control_auth if base is ModalClientBase else fake._router_auth)(stream)
            if error := fake.fail.get(name):
                raise error
            await getattr(fake, name)(stream)
        return handle
    cls = type(f"Fake{base.__name__}", (base,), {n: method(n) for n in base.__abstractmethods__})
    return cls()


async def _spawn(proc: Proc, cwd: str, timeout_s: float | None) -> None:
    """Run the exec's argv on this host; the service kills it at its timeout as Modal does."""
    proc.process = await asyncio.create_subprocess_exec(
        *proc.args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)

    async def finish() -> None:
        assert proc.process is not None
        try:
            out, err = await asyncio.wait_for(proc.process.communicate(), timeout_s)
        except TimeoutError:
            _kill(proc)
            out, err = await proc.process.communicate()
        proc.stdout.extend(out)
        proc.stderr.extend(err)
        proc.returncode = proc.process.returncode
        proc.done.set()
    proc.task = asyncio.ensure_future(finish())


async def _fs_tool(proc: Proc) -> None:
    """Modal's file tool, on this host's paths (its JSON commands as the SDK's sandbox_fs_utils build them)."""
    (op, args), = json.loads(proc.args[1]).items()
    path = args["path"]

    def fail(kind: str, message: str) -> None:
        proc.stderr.extend(json.dumps({"error_kind": kind, "message": message}).encode())
        proc.returncode = 1
    try:
        if op == "WriteFile":
            await proc.stdin_closed.wait()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(proc.stdin)
            proc.returncode = 0
        elif op == "ReadFile":
            with open(path, "rb") as f:
                proc.stdout.extend(f.read())
            proc.returncode = 0
        elif op == "MakeDirectory":
            os.makedirs(path, exist_ok=True)
            proc.returncode = 0
        else:
            fail("Unsupported", f"the fake has no {op}")
    except FileNotFoundError:
        fail("NotFound", "No such file or directory")
    except IsADirectoryError:
        fail("IsDirectory", "Is a directory")
    proc.done.set()


def _kill(proc: Proc) -> None:
    if proc.process is not None and proc.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.process.pid, signal.SIGKILL)


def _kill_all(sb: FakeSandbox) -> None:
    for proc in sb.procs.values():
        _kill(proc)


__all__ = ["FS_TOOLS", "ModalFake", "empty_pb2"]
