"""The ssh provider's protocol, both ends of it, and its far end: ``execbox agent``.

One agent process per SSH connection speaks JSON lines over the session's stdin and stdout (bytes as
base64) and drives its host's LocalProvider: the code runs inside execbox's isolation on that host, its
limits enforced there. Many instances (by id) and many concurrent requests (by request id) share it, so an
execution costs a few round trips, not a process start.

    near -> far  {"id": N, "op": OP, ...fields}               ops: hello start write_files read_file exec
                                                                   list_files remove_file close cancel
    far -> near  {"id": N, "ok": true, "result": {...}}
                 {"id": N, "ok": false, "error": {"type": NAME, "message": TEXT}}   an execbox error
                 {"id": N, "chunk": [STREAM, B64]}             a streamed exec's output, before its result

``hello`` comes first: the protocol version, and whether this host can isolate (bubblewrap, root,
cgroups); it is refused with the reason otherwise. ``cancel`` (of request ``target``) has no reply: the
cancelled request's process is killed. ``ping`` (no reply) comes every heartbeat.

When the agent's stdin ends (the connection died, or the near side closed it), or nothing came from the near
side for ``idle_timeout_s`` (a network gone silent), it closes every instance, which kills their process
trees, and exits: a lost connection never leaves a program running here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execbox.errors import (
    CapacityError,
    ExecboxError,
    InvalidFileError,
    IsolationError,
    NotFoundError,
    ProviderUnavailable,
    RequestError,
    SandboxError,
)
from execbox.models import check_file_name
from execbox.providers.base import ExecSpec, FileEntry, Instance, InstanceSpec, OutputChunk, ProcessOutcome, StopReason

if TYPE_CHECKING:
    from execbox.providers.local import LocalProvider

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024 * 1024  # one line; bytes go in pieces of PIECE_BYTES (``frames``)
PIECE_BYTES = 4 * 1024 * 1024
READ_BYTES = 256 * 1024
HEARTBEATS_MISSED = 4  # in a row: the connection is taken for lost

Message = dict[str, Any]
_ERRORS: dict[str, type[ExecboxError]] = {c.__name__: c for c in (
    SandboxError, ProviderUnavailable, IsolationError, RequestError, InvalidFileError, NotFoundError, CapacityError)}


class ProtocolViolation(Exception):
    """A message that does not follow this protocol (a line too long, bad JSON, missing fields)."""


# ---------------------------------------------------------------- message shapes, shared by both ends
def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if isinstance(text, bytes):  # put back from its parts already (``Parts``)
        return text
    if not isinstance(text, str):
        raise ProtocolViolation("expected base64 text")
    return base64.b64decode(text, validate=True)


def encode(msg: Message) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def frames(msg: Message) -> list[bytes]:
    """``msg`` as lines to send: its bytes values (at the top, or one dict down: ``spec.stdin``) as base64;
    one over PIECE_BYTES goes ahead in ``{"id", "part": [PATH, B64]}`` lines, named in the message's
    ``parted`` (the receiver's ``Parts`` puts it back), so no line is ever too long for the other side."""
    out: list[bytes] = []
    parted: list[str] = []

    def convert(d: Message, prefix: str) -> Message:
        d = dict(d)
        for key, value in d.items():
            if isinstance(value, bytes | bytearray):
                if len(value) <= PIECE_BYTES:
                    d[key] = b64(value)
                    continue
                for i in range(0, len(value), PIECE_BYTES):
                    out.append(encode({"id": msg.get("id"), "part": [prefix + key, b64(value[i:i + PIECE_BYTES])]}))
                d[key] = ""
                parted.append(prefix + key)
            elif isinstance(value, dict) and not prefix:
                d[key] = convert(value, f"{key}.")
        return d

    body = convert(msg, "")
    if parted:
        body["parted"] = parted
    out.append(encode(body))
    return out


class Parts:
    """Puts messages sent by ``frames`` back together: ``take`` gives each whole message, None for a part."""

    def __init__(self) -> None:
        self._parts: dict[Any, dict[str, bytearray]] = {}

    def take(self, msg: Message) -> Message | None:
        if "part" in msg:
            path, piece = msg["part"]
            self._parts.setdefault(msg.get("id"), {}).setdefault(str(path), bytearray()).extend(unb64(piece))
            return None
        got = self._parts.pop(msg.get("id"), {})
        for path in msg.pop("parted", None) or []:
            *head, last = str(path).split(".", 1)  # a top-level key (ours) has no dot; a nested one may
            target = msg
            for key in head:
                target = target[key]
            target[last] = bytes(got.get(path, b""))
        return msg


class Lines:
    """Splits a byte stream into messages (own framing: no reader's line limit applies)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            try:
                msg = json.loads(line)
            except ValueError as e:
                raise ProtocolViolation(f"not JSON: {line[:80]!r}") from e
            if not isinstance(msg, dict):
                raise ProtocolViolation("a message is not an object")
            out.append(msg)
        if len(self._buf) > MAX_LINE_BYTES:
            raise ProtocolViolation(f"a message longer than {MAX_LINE_BYTES} bytes")
        return out


def instance_spec_to_wire(spec: InstanceSpec) -> Message:
    return {"disk_mb": spec.disk_mb, "network": spec.network, "persistent": spec.persistent,
            "memory_mb": spec.memory_mb, "pids": spec.pids, "binaries": list(spec.binaries)}


def instance_spec_from_wire(d: Message) -> InstanceSpec:
    return InstanceSpec(disk_mb=int(d["disk_mb"]), network=bool(d["network"]), persistent=bool(d["persistent"]),
                        memory_mb=int(d["memory_mb"]), pids=int(d["pids"]),
                        binaries=tuple(str(b) for b in d["binaries"]))


def exec_spec_to_wire(spec: ExecSpec) -> Message:
    return {"argv": list(spec.argv), "wall_time_s": spec.wall_time_s, "cpu_time_s": spec.cpu_time_s,
            "memory_mb": spec.memory_mb, "pids": spec.pids, "output_bytes": spec.output_bytes,
            "file_size_mb": spec.file_size_mb, "open_files": spec.open_files, "stdin": spec.stdin,
            "env": dict(spec.env), "cwd": spec.cwd}


def exec_spec_from_wire(d: Message) -> ExecSpec:
    return ExecSpec(argv=tuple(str(a) for a in d["argv"]), wall_time_s=float(d["wall_time_s"]),
                    cpu_time_s=float(d["cpu_time_s"]), memory_mb=int(d["memory_mb"]), pids=int(d["pids"]),
                    output_bytes=int(d["output_bytes"]), file_size_mb=int(d["file_size_mb"]),
                    open_files=int(d["open_files"]), stdin=unb64(d["stdin"]),
                    env={str(k): str(v) for k, v in dict(d["env"]).items()}, cwd=_cwd(d["cwd"]))


def outcome_to_wire(o: ProcessOutcome) -> Message:
    return {"exit_code": o.exit_code, "signal": o.signal, "stdout": o.stdout, "stderr": o.stderr,
            "stdout_truncated": o.stdout_truncated, "stderr_truncated": o.stderr_truncated,
            "wall_time_s": o.wall_time_s, "cpu_time_s": o.cpu_time_s, "max_rss_mb": o.max_rss_mb,
            "stopped_by": None if o.stopped_by is None else o.stopped_by.value}


def outcome_from_wire(d: Message) -> ProcessOutcome:
    def opt(kind: Callable[[Any], Any], v: Any) -> Any:
        return None if v is None else kind(v)

    return ProcessOutcome(exit_code=opt(int, d["exit_code"]), signal=opt(int, d["signal"]),
                          stdout=unb64(d["stdout"]), stderr=unb64(d["stderr"]),
                          stdout_truncated=bool(d["stdout_truncated"]), stderr_truncated=bool(d["stderr_truncated"]),
                          wall_time_s=float(d["wall_time_s"]), cpu_time_s=opt(float, d["cpu_time_s"]),
                          max_rss_mb=opt(float, d["max_rss_mb"]), stopped_by=opt(StopReason, d["stopped_by"]))


def entries_from_wire(items: list[Any]) -> list[FileEntry]:
    return [FileEntry(str(name), str(kind), int(size)) for name, kind, size in items]


def error_to_wire(e: BaseException) -> Message:
    if isinstance(e, ExecboxError):
        kind = next((c.__name__ for c in type(e).__mro__ if c.__name__ in _ERRORS), "SandboxError")
        out: Message = {"type": kind, "message": str(e)}
        if isinstance(e, CapacityError):
            out["retry_after_s"] = e.retry_after_s
        return out
    return {"type": "SandboxError", "message": f"the agent failed: {type(e).__name__}: {e}"}


def error_from_wire(d: Any, where: str) -> ExecboxError:
    """The far side's error as an execbox error of the same category, its message prefixed with ``where``."""
    if not isinstance(d, dict):
        return SandboxError(f"{where}: the agent sent a malformed error")
    cls = _ERRORS.get(str(d.get("type")), SandboxError)
    message = f"{where}: {d.get('message')}"
    if cls is CapacityError:
        retry = d.get("retry_after_s")
        return CapacityError(message, float(retry) if isinstance(retry, int | float) else None)
    return cls(message)


def _cwd(cwd: object) -> str:
    return "." if cwd in ("", ".") else check_file_name(str(cwd))


def _path(path: object, allow_root: bool = False) -> str:
    if allow_root and path in ("", "."):
        return "."
    return check_file_name(str(path))


# ---------------------------------------------------------------- the far side
@dataclass(frozen=True)
class AgentOptions:
    """What the near side's settings pass on the command line: the local provider's uids and runtime dir."""

    first_uid: int | None = None
    uid_count: int | None = None
    runtime_dir: str | None = None
    idle_timeout_s: float | None = None  # without a byte from the near side: the connection is lost


def host_problem() -> str | None:
    """Why this host cannot run execbox's sandboxes (None: it can)."""
    from execbox.providers.host import cgroups

    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (apt-get install bubblewrap, or scripts/bootstrap)"
    if os.geteuid() != 0:
        return (f"the agent runs as uid {os.geteuid()}, not root: execbox's sandboxes there need root "
                "(a uid per run, cgroups); log in as root")
    probe = cgroups.probe()
    if not probe.usable:
        return f"cgroups are unusable ({probe.problem})"
    return None


class Agent:
    """Serves one connection: requests by id, instances by id, each request a task of its own."""

    def __init__(self, options: AgentOptions, send: Callable[[Message], Awaitable[None]]) -> None:
        self.options, self.send = options, send
        self.provider: LocalProvider | None = None
        self.instances: dict[str, Instance] = {}
        self.staged: dict[str, dict[str, bytearray]] = {}  # files arriving in pieces, by instance
        self.tasks: dict[Any, asyncio.Task[None]] = {}
        self._ids = 0

    def dispatch(self, msg: Message) -> None:
        rid = msg.get("id")
        if msg.get("op") == "ping":
            return
        if msg.get("op") == "cancel":
            if (task := self.tasks.get(msg.get("target"))) is not None:
                task.cancel()
            return
        task = asyncio.create_task(self._answer(rid, msg))
        self.tasks[rid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(rid, None))

    async def _answer(self, rid: Any, msg: Message) -> None:
        error: BaseException
        try:
            result = await self._op(rid, msg)
        except asyncio.CancelledError:
            return  # the near side gave up on it: it wants no answer
        except ExecboxError as e:
            error = e
        except (KeyError, TypeError, ValueError, ProtocolViolation) as e:
            error = RequestError(f"malformed {msg.get('op')!r} request: {type(e).__name__}: {e}")
        except Exception as e:
            error = e
        else:
            await self.send({"id": rid, "ok": True, "result": result})
            return
        await self.send({"id": rid, "ok": False, "error": error_to_wire(error)})

    def _instance(self, msg: Message) -> Instance:
        inst = self.instances.get(str(msg["instance"]))
        if inst is None:
            raise NotFoundError(f"no instance {msg['instance']!r} on this connection")
        return inst

    async def _op(self, rid: Any, msg: Message) -> Message:
        op = msg.get("op")
        if op == "hello":
            return await self._hello(msg)
        if self.provider is None:
            raise RequestError("hello comes first")
        if op == "start":
            inst = await self.provider.start(instance_spec_from_wire(msg["spec"]))
            self._ids += 1
            iid = f"i{self._ids}"
            self.instances[iid] = inst
            return {"instance": iid}
        if op == "close":
            iid = str(msg["instance"])
            self.staged.pop(iid, None)
            if (closing := self.instances.pop(iid, None)) is not None:
                await closing.close()
            return {}
        inst = self._instance(msg)
        if op == "write_files":
            staged = self.staged.setdefault(str(msg["instance"]), {})
            for path, data in msg["files"]:
                staged.setdefault(_path(path), bytearray()).extend(unb64(data))
            if msg.get("last", True):
                files = {k: bytes(v) for k, v in self.staged.pop(str(msg["instance"]), {}).items()}
                await inst.write_files(files)
            return {}
        if op == "read_file":
            data = await inst.read_file(_path(msg["path"]), int(msg["max_bytes"]))
            return {"data": data}
        if op == "list_files":
            entries = await inst.list_files(_path(msg["path"], allow_root=True))
            return {"entries": [[e.name, e.kind, e.size] for e in entries]}
        if op == "remove_file":
            return {"removed": await inst.remove_file(_path(msg["path"]))}
        if op == "exec":
            return await self._exec(rid, inst, exec_spec_from_wire(msg["spec"]), bool(msg.get("stream")))
        raise RequestError(f"unknown op {op!r}")

    async def _hello(self, msg: Message) -> Message:
        import execbox

        if msg.get("version") != PROTOCOL_VERSION:
            raise ProviderUnavailable(f"the near side speaks protocol {msg.get('version')!r}, this agent (execbox "
                                      f"{execbox.__version__}) {PROTOCOL_VERSION}: install the same execbox on both")
        if msg.get("isolation") == "none":
            raise IsolationError("isolation 'none' (unisolated runs over ssh) is not supported yet")
        if self.provider is None:
            if problem := host_problem():
                raise IsolationError(f"this host cannot isolate: {problem}")
            from execbox.providers.local import LocalProvider, LocalSettings

            o, base = self.options, LocalSettings.from_env()
            settings = base.model_copy(update={k: v for k, v in (
                ("first_uid", o.first_uid), ("uid_count", o.uid_count),
                ("runtime_dir", Path(o.runtime_dir) if o.runtime_dir else None)) if v is not None})
            try:
                provider = await asyncio.to_thread(LocalProvider, settings)
            except ExecboxError:
                raise
            except Exception as e:
                raise ProviderUnavailable(f"the local provider cannot be set up: {e}") from e
            if not provider.supports_persistent:
                await provider.aclose()
                raise IsolationError("this host cannot keep persistent sandboxes (root, cgroups, openat2)")
            self.provider = provider
        return {"version": PROTOCOL_VERSION, "execbox": execbox.__version__, "host": socket.gethostname(),
                "pid": os.getpid()}

    async def _exec(self, rid: Any, inst: Instance, spec: ExecSpec, stream: bool) -> Message:
        if not stream:
            return outcome_to_wire(await inst.exec(spec))
        events = inst.stream(spec)
        try:
            async for item in events:
                if isinstance(item, OutputChunk):
                    await self.send({"id": rid, "chunk": [item.stream, b64(item.data)]})
                else:
                    return outcome_to_wire(item)
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # an early end kills the process
        raise SandboxError("the exec ended without an outcome")

    async def shutdown(self) -> None:
        """Cancel every request, close every instance (killing what runs in it), release the provider."""
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        instances, self.instances = list(self.instances.values()), {}
        await asyncio.gather(*(inst.close() for inst in instances), return_exceptions=True)
        if self.provider is not None:
            await self.provider.aclose()


async def _serve(options: AgentOptions, in_fd: int, out_fd: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_fd, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    lock = asyncio.Lock()

    async def send(msg: Message) -> None:
        async with lock:
            with contextlib.suppress(ConnectionError, OSError):  # the near side is gone: stdin's end follows
                for frame in frames(msg):
                    writer.write(frame)
                await writer.drain()

    agent = Agent(options, send)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lines, parts = Lines(), Parts()

    async def read() -> None:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_BYTES), options.idle_timeout_s)
            except TimeoutError:
                print(f"execbox agent: nothing from the near side in {options.idle_timeout_s:g} s: the connection is "
                      "taken for lost", file=sys.stderr)
                return
            if not data:
                return
            for msg in lines.feed(data):
                if (whole := parts.take(msg)) is not None:
                    agent.dispatch(whole)

    reading = asyncio.create_task(read())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done() and (e := reading.exception()) is not None:
            print(f"execbox agent: {e}", file=sys.stderr)
    finally:
        reading.cancel()
        stopping.cancel()
        await agent.shutdown()
        transport.close()


def serve(options: AgentOptions) -> int:
    """Run the agent on this process's stdin and stdout until stdin ends; the exit code."""
    # The protocol gets its own descriptors; fds 0 and 1 become /dev/null and stderr, so nothing else
    # (a library's print, a child that inherits them) can read its requests or corrupt its replies.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    for fd in (in_fd, out_fd):
        os.set_inheritable(fd, False)
    try:
        asyncio.run(_serve(options, in_fd, out_fd))
    except KeyboardInterrupt:
        return 130
    return 0
