"""The ssh provider's protocol: JSON lines over an SSH session's stdin and stdout, bytes as base64, spoken by
the provider (provider.py) and by ``execbox agent`` at the far end (agent.py). This module is its message
shapes, for both ends.

    near -> far  {"id": N, "op": OP, ...fields}               ops: hello start write_files read_file exec
                                                                   list_files remove_file close cancel ping
    far -> near  {"id": N, "ok": true, "result": {...}}
                 {"id": N, "ok": false, "error": {"type": NAME, "message": TEXT}}   an execbox error
                 {"id": N, "chunk": [STREAM, B64]}             a streamed exec's output, before its result
    either way   {"id": N, "part": [PATH, B64]}                a piece of a large bytes value of message N,
                                                               sent ahead of it (``frames``, ``Parts``)

``hello`` comes first: the protocol version, and whether the host can isolate (bubblewrap, root, cgroups);
it is refused with the reason otherwise. ``cancel`` (of request ``target``) and ``ping`` (every heartbeat)
have no reply. Files are written in pieces (``write_files`` with ``last`` false, then true).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from execbox.errors import (
    CapacityError,
    ExecboxError,
    InvalidFileError,
    IsolationError,
    NotFoundError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
    SandboxError,
)
from execbox.models import check_file_name
from execbox.providers.base import ExecSpec, FileEntry, InstanceSpec, ProcessOutcome, StopReason

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 64 * 1024 * 1024  # one line; bytes go in pieces of PIECE_BYTES (``frames``)
PIECE_BYTES = 4 * 1024 * 1024
READ_BYTES = 256 * 1024
HEARTBEATS_MISSED = 4  # in a row: the connection is taken for lost

Message = dict[str, Any]
_ERRORS: dict[str, type[ExecboxError]] = {c.__name__: c for c in (
    SandboxError, ProviderUnavailable, IsolationError, RequestError, InvalidFileError, NotFoundError, CapacityError,
    OutcomeUnknown)}


class ProtocolViolation(Exception):
    """A message that does not follow this protocol (a line too long, bad JSON, missing fields)."""


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
                    env={str(k): str(v) for k, v in dict(d["env"]).items()}, cwd=cwd_of(d["cwd"]))


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


def cwd_of(cwd: object) -> str:
    return "." if cwd in ("", ".") else check_file_name(str(cwd))


def path_of(path: object, allow_root: bool = False) -> str:
    if allow_root and path in ("", "."):
        return "."
    return check_file_name(str(path))
