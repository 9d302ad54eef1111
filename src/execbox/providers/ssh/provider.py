"""The ssh provider: executions and sandboxes on another Linux host, inside execbox's isolation there.

One SSH connection per provider (opened on first use, opened again once lost) runs one ``execbox agent``
on the host (agent.py; their protocol: protocol.py); every instance and request of the provider shares
it. The host's key is pinned (``known_hosts``): an unknown or changed key is refused, never accepted. Login
is by the settings' private key or password only (no ssh-agent, no ~/.ssh, no ssh config file).

Errors are mapped here, at the boundary, to execbox's: a host that cannot be reached is ServerUnreachable, a
refused login or host key ProviderUnavailable (both raised from ``start``: the engine then tries the next
provider), a host that cannot isolate IsolationError, and the connection lost while a program runs
OutcomeUnknown (it may have run: never run again). The agent kills everything it started when the
connection ends, so a lost connection never leaves a program running there.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import asyncssh

from execbox.errors import (
    IsolationError,
    OutcomeUnknown,
    ProviderUnavailable,
    SandboxError,
    ServerUnreachable,
)
from execbox.providers.base import (
    ExecSpec,
    FileEntry,
    Instance,
    InstanceSpec,
    OutputChunk,
    ProcessOutcome,
    Provider,
    stream_run,
)
from execbox.providers.ssh import protocol as wire
from execbox.providers.ssh.settings import SshSettings

STDERR_TAIL_BYTES = 4096  # of the agent's stderr, kept for the error when it dies


class Lost(Exception):
    """Internal: the connection (or the agent at its end) is gone."""


class _Call:
    def __init__(self, on_chunk: Callable[[OutputChunk], None] | None) -> None:
        self.future: asyncio.Future[wire.Message] = asyncio.get_running_loop().create_future()
        self.on_chunk = on_chunk


class Link:
    """One SSH connection and the agent at its end: requests by id, their replies routed back as they come."""

    def __init__(self, where: str, conn: asyncssh.SSHClientConnection,
                 process: asyncssh.SSHClientProcess[bytes], heartbeat_s: float) -> None:
        self.where, self.conn, self.process, self.heartbeat_s = where, conn, process, heartbeat_s
        self.calls: dict[int, _Call] = {}
        self.undo: dict[int, Callable[[wire.Message], None]] = {}  # given up on: what to do if it succeeded
        self.lost: str | None = None  # why, once it is gone
        self.stderr_tail = bytearray()
        self._ids = 0
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._read_stderr()),
                       asyncio.create_task(self._beat())]

    async def _beat(self) -> None:
        """Heartbeats: the agent takes their absence for a lost connection (and kills what it runs)."""
        with contextlib.suppress(asyncssh.Error, OSError):
            while self.lost is None:
                await asyncio.sleep(self.heartbeat_s)
                self.send_nowait({"op": "ping"})

    async def _read(self) -> None:
        lines, parts = wire.Lines(), wire.Parts()
        why = "the connection closed"
        try:
            while data := await self.process.stdout.read(wire.READ_BYTES):
                for msg in lines.feed(data):
                    if (whole := parts.take(msg)) is not None:
                        self._route(whole)
            with contextlib.suppress(asyncssh.Error, OSError):  # its exit status and last words, for the message
                await asyncio.wait_for(self.process.wait_closed(), 2)
                await asyncio.sleep(0.01)
            status = self.process.exit_status
            why = "the agent exited" + (f" with status {status}" if status is not None else "") + (
                f": {tail}" if (tail := self._tail()) else "")
        except (wire.ProtocolViolation, KeyError, TypeError, ValueError) as e:
            why = f"the agent broke the protocol ({type(e).__name__}: {e})"
        except (asyncssh.Error, OSError) as e:
            why = f"the connection failed ({type(e).__name__}: {e})"
        finally:
            self._fail(why)

    async def _read_stderr(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            while data := await self.process.stderr.read(wire.READ_BYTES):
                self.stderr_tail += data
                del self.stderr_tail[:-STDERR_TAIL_BYTES]

    def _tail(self) -> str:
        lines = self.stderr_tail.decode(errors="replace").strip().splitlines()
        return lines[-1][:500] if lines else ""

    def _route(self, msg: wire.Message) -> None:
        call = self.calls.get(msg.get("id"))  # type: ignore[arg-type]
        if call is None:  # a request given up on (cancelled, timed out): its late answer is dropped, or undone
            undo = self.undo.pop(msg.get("id"), None)  # type: ignore[arg-type]
            if undo is not None and "chunk" not in msg and msg.get("ok") and isinstance(msg.get("result"), dict):
                undo(msg["result"])
            return
        if "chunk" in msg:
            stream, data = msg["chunk"]
            if call.on_chunk is not None:
                call.on_chunk(OutputChunk(str(stream), wire.unb64(data)))
            return
        self.calls.pop(msg["id"])
        if not call.future.done():
            call.future.set_result(msg)

    def _fail(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        calls, self.calls = self.calls, {}
        for call in calls.values():
            if not call.future.done():
                call.future.set_exception(Lost(why))
        self.conn.close()

    async def call(self, op: str, fields: Mapping[str, Any], *, timeout_s: float | None = None,
                   on_chunk: Callable[[OutputChunk], None] | None = None,
                   undo: Callable[[wire.Message], None] | None = None) -> wire.Message:
        """The result of ``op``; the far side's execbox error as one (``where`` in front); Lost when the
        connection is gone; TimeoutError after ``timeout_s`` (the far side is told to give up on it).
        ``undo`` gets the result of a call given up on that succeeded all the same (a sandbox started)."""
        if self.lost is not None:
            raise Lost(self.lost)
        self._ids += 1
        rid = self._ids
        call = self.calls[rid] = _Call(on_chunk)
        try:
            try:
                for frame in wire.frames({"id": rid, "op": op, **fields}):
                    self.process.stdin.write(frame)
                await self.process.stdin.drain()
            except (asyncssh.Error, OSError) as e:
                self._fail(f"the connection failed ({type(e).__name__}: {e})")
                raise Lost(self.lost) from e
            reply = await asyncio.wait_for(asyncio.shield(call.future), timeout_s)
        except BaseException:  # cancelled, or no answer in time: the far side stops it
            if self.calls.pop(rid, None) is not None:
                self._cancel(rid)
                if undo is not None:
                    self.undo[rid] = undo
            elif undo is not None and call.future.done() and not call.future.cancelled():
                # its answer had come, but the caller was cancelled before it could take it: undone here
                late = call.future.result() if call.future.exception() is None else {}
                if late.get("ok") and isinstance(late.get("result"), dict):
                    undo(late["result"])
            raise
        if not reply.get("ok"):
            raise wire.error_from_wire(reply.get("error"), self.where)
        result = reply.get("result")
        if not isinstance(result, dict):
            raise SandboxError(f"{self.where}: the agent sent a malformed answer")
        return result

    def _cancel(self, rid: int) -> None:
        self.send_nowait({"op": "cancel", "target": rid})

    def send_nowait(self, msg: wire.Message) -> None:
        """Send ``msg`` without waiting for it or for an answer (any answer is dropped)."""
        if self.lost is None:
            if "id" not in msg and msg.get("op") not in ("cancel", "ping"):
                self._ids += 1
                msg = {"id": self._ids, **msg}
            with contextlib.suppress(asyncssh.Error, OSError):
                for frame in wire.frames(msg):
                    self.process.stdin.write(frame)

    async def aclose(self) -> None:
        """Close the connection (the agent then closes everything it started) and wait for it to go."""
        self._fail("the provider was closed")
        with contextlib.suppress(asyncssh.Error, OSError):
            await asyncio.wait_for(self.conn.wait_closed(), 10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class SshProvider(Provider):
    """execbox's sandboxes on another host, through one SSH connection to the ``execbox agent`` there."""

    name = "ssh"
    supports_persistent = True

    def __init__(self, settings: SshSettings | None = None) -> None:
        if settings is None:
            raise ProviderUnavailable("the ssh provider needs settings: host, known_hosts, a private key or password")
        self.settings = s = settings
        self.where = f"ssh://{s.user}@{s.host}:{s.port}"
        try:
            self._known_hosts = asyncssh.import_known_hosts(s.known_hosts)
        except (asyncssh.Error, ValueError) as e:
            raise ProviderUnavailable(f"{self.where}: known_hosts cannot be read ({e})") from e
        self._keys: list[asyncssh.SSHKey] | None = None
        if s.private_key is not None:
            try:
                self._keys = [asyncssh.import_private_key(s.private_key.get_secret_value())]
            except (asyncssh.Error, ValueError) as e:  # never the key's text in the message
                raise ProviderUnavailable(f"{self.where}: private_key cannot be read "
                                          f"({type(e).__name__}; an unencrypted OpenSSH or PEM key is needed)") from e
        self._link: Link | None = None
        self._opening: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (as far as its heartbeats tell)."""
        return self._link is not None and self._link.lost is None

    def command(self) -> str:
        """The agent's command line on the host."""
        s = self.settings
        args = ["agent"]
        for flag, value in (("--first-uid", s.first_uid), ("--uid-count", s.uid_count),
                            ("--runtime-dir", s.runtime_dir),
                            ("--idle-timeout", s.heartbeat_s * wire.HEARTBEATS_MISSED)):
            if value is not None:
                args += [flag, str(value)]
        return f"{s.execbox_command} {shlex.join(args)}"

    async def _connected(self) -> Link:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (one asyncio.run per call): the old one's link is dead
            if self._link is not None:
                with contextlib.suppress(Exception):
                    self._link.conn.abort()
            self._link, self._opening, self._loop = None, asyncio.Lock(), loop
        assert self._opening is not None
        async with self._opening:
            if self._link is not None and self._link.lost is None:
                return self._link
            if self._link is not None:
                await self._link.aclose()
            self._link = await self._open()
            return self._link

    async def _open(self) -> Link:
        s = self.settings
        if s.isolation == "none":
            raise IsolationError(f"{self.where}: isolation 'none' (unisolated runs over ssh) is not supported yet")
        try:
            conn = await asyncio.wait_for(asyncssh.connect(
                s.host, s.port, username=s.user, known_hosts=self._known_hosts, client_keys=self._keys,
                password=None if s.password is None else s.password.get_secret_value(), agent_path=None,
                config=None, connect_timeout=s.connect_timeout_s, login_timeout=s.connect_timeout_s,
                keepalive_interval=s.heartbeat_s, keepalive_count_max=wire.HEARTBEATS_MISSED),
                s.connect_timeout_s * 2)
        except asyncssh.HostKeyNotVerifiable as e:
            raise ProviderUnavailable(
                f"{self.where}: the host's key is not the one pinned in known_hosts (unknown or changed): refusing "
                f"to connect. If the host was reinstalled, check its new key out of band ({e.reason})") from e
        except asyncssh.PermissionDenied as e:
            raise ProviderUnavailable(f"{self.where}: authentication failed ({e.reason})") from e
        except (OSError, TimeoutError) as e:
            raise ServerUnreachable(f"{self.where}: cannot connect ({type(e).__name__}: {e or 'timed out'})") from e
        except asyncssh.Error as e:
            raise ProviderUnavailable(f"{self.where}: the SSH connection failed ({type(e).__name__}: {e})") from e
        except Exception as e:  # asyncssh raises ValueError & co for settings it cannot use
            raise ProviderUnavailable(f"{self.where}: cannot connect ({type(e).__name__}: {e})") from e
        try:
            process = await conn.create_process(self.command(), encoding=None)
            link = Link(self.where, conn, process, s.heartbeat_s)
        except (asyncssh.Error, OSError) as e:
            conn.close()
            raise ProviderUnavailable(f"{self.where}: cannot start the execbox agent ({e})") from e
        try:
            await link.call("hello", {"version": wire.PROTOCOL_VERSION, "isolation": s.isolation},
                            timeout_s=s.agent_timeout_s)
        except Lost as e:
            await link.aclose()
            raise ProviderUnavailable(f"{self.where}: the execbox agent ({self.command()!r}) did not start: {e}. "
                                      "Install execbox there (pip install execbox) or set execbox_command") from e
        except TimeoutError as e:
            await link.aclose()
            raise ProviderUnavailable(f"{self.where}: the execbox agent did not answer in {s.agent_timeout_s:g} s"
                                      ) from e
        except BaseException:
            await link.aclose()
            raise
        return link

    async def start(self, spec: InstanceSpec) -> SshInstance:
        link = await self._connected()
        try:
            reply = await link.call("start", {"spec": wire.instance_spec_to_wire(spec)},
                                    timeout_s=self.settings.agent_timeout_s, undo=lambda started: link.send_nowait(
                                        {"op": "close", "instance": started.get("instance")}))
            return SshInstance(self, link, str(reply["instance"]))
        except Lost as e:  # the agent closes what it may have started when the connection ends
            raise ProviderUnavailable(f"{self.where}: the connection was lost while starting a sandbox ({e})") from e
        except TimeoutError as e:
            raise ProviderUnavailable(f"{self.where}: no sandbox started in {self.settings.agent_timeout_s:g} s"
                                      ) from e
        except KeyError as e:
            raise SandboxError(f"{self.where}: the agent sent a malformed answer") from e

    async def aclose(self) -> None:
        if self._link is not None:
            await self._link.aclose()
            self._link = None


class SshInstance(Instance):
    """A sandbox on the host, by its id in the agent of one connection (gone with that connection)."""

    def __init__(self, provider: SshProvider, link: Link, instance_id: str) -> None:
        self.provider, self.link, self.id = provider, link, instance_id
        self.where = provider.where
        self._closed = False

    def _gone(self, e: Lost, doing: str) -> SandboxError:
        return SandboxError(f"{self.where}: the connection was lost {doing} ({e}); the sandbox there is gone")

    async def _call(self, op: str, doing: str, **fields: Any) -> wire.Message:
        if self._closed:
            raise SandboxError(f"{self.where}: the sandbox is closed")
        try:
            return await self.link.call(op, {"instance": self.id, **fields})
        except Lost as e:
            raise self._gone(e, doing) from e

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        batch: list[list[str]] = []
        size = 0
        for path, data in files.items():
            pieces = [data[i:i + wire.PIECE_BYTES] for i in range(0, len(data), wire.PIECE_BYTES)]
            for piece in pieces or [b""]:
                if batch and size + len(piece) > wire.PIECE_BYTES:
                    await self._call("write_files", "writing files", files=batch, last=False)
                    batch, size = [], 0
                batch.append([path, wire.b64(piece)])
                size += len(piece)
        await self._call("write_files", "writing files", files=batch, last=True)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        data = (await self._call("read_file", "reading a file", path=path, max_bytes=max_bytes)).get("data")
        return None if data is None else wire.unb64(data)

    async def list_files(self, path: str) -> list[FileEntry]:
        reply = await self._call("list_files", "listing files", path=path)
        return wire.entries_from_wire(reply["entries"])

    async def remove_file(self, path: str) -> bool:
        return bool((await self._call("remove_file", "removing a file", path=path))["removed"])

    async def _run(self, spec: ExecSpec, on_chunk: Callable[[OutputChunk], None] | None) -> ProcessOutcome:
        if spec.live is not None:
            raise SandboxError("the ssh provider cannot run interactively")
        if self._closed:
            raise SandboxError(f"{self.where}: the sandbox is closed")
        if self.link.lost is not None:  # nothing is sent: the code is not handed over
            raise self._gone(Lost(self.link.lost), "before the run")
        timeout = spec.wall_time_s + self.provider.settings.exec_grace_s
        try:
            reply = await self.link.call("exec", {"instance": self.id, "spec": wire.exec_spec_to_wire(spec),
                                                  "stream": on_chunk is not None},
                                         timeout_s=timeout, on_chunk=on_chunk)
        except Lost as e:
            raise OutcomeUnknown(f"{self.where}: the connection was lost during the run ({e}); the code may have "
                                 "run, so it is not run again (its processes there are killed)") from e
        except TimeoutError as e:
            raise OutcomeUnknown(f"{self.where}: no outcome {timeout:g} s after the run began; it is not run again"
                                 ) from e
        try:
            return wire.outcome_from_wire(reply)
        except (KeyError, TypeError, ValueError) as e:
            raise SandboxError(f"{self.where}: the agent sent a malformed outcome") from e

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        return await self._run(spec, None)

    def stream(self, spec: ExecSpec) -> AsyncIterator[OutputChunk | ProcessOutcome]:
        return stream_run(lambda on_chunk: self._run(spec, on_chunk))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.link.lost is not None:
            return  # the agent closed it when the connection ended
        try:
            await self.link.call("close", {"instance": self.id}, timeout_s=self.provider.settings.agent_timeout_s)
        except Lost:
            pass  # the agent closes it, with everything else, when the connection ends
        except TimeoutError as e:
            raise SandboxError(f"{self.where}: the sandbox did not close in time") from e
