"""``execbox agent``: the far end of the ssh provider (its protocol: protocol.py).

One agent process per SSH connection drives its host's LocalProvider: the code runs inside execbox's
isolation on that host, its limits enforced there. Many instances (by id) and many concurrent requests (by
request id) share it, so an execution costs a few round trips, not a process start.

When its stdin ends (the connection died, or the near side closed it), or nothing came from the near side
for ``idle_timeout_s`` (a network gone silent: heartbeats missed), it closes every instance, which kills
their process trees, and exits: a lost connection never leaves a program running here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execbox.errors import ExecboxError, IsolationError, NotFoundError, ProviderUnavailable, RequestError, SandboxError
from execbox.providers.base import ExecSpec, Instance, OutputChunk
from execbox.providers.ssh.protocol import (
    PROTOCOL_VERSION,
    READ_BYTES,
    Lines,
    Message,
    Parts,
    ProtocolViolation,
    b64,
    error_to_wire,
    exec_spec_from_wire,
    frames,
    instance_spec_from_wire,
    outcome_to_wire,
    path_of,
    unb64,
)

if TYPE_CHECKING:
    from execbox.providers.local import LocalProvider


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
                staged.setdefault(path_of(path), bytearray()).extend(unb64(data))
            if msg.get("last", True):
                files = {k: bytes(v) for k, v in self.staged.pop(str(msg["instance"]), {}).items()}
                await inst.write_files(files)
            return {}
        if op == "read_file":
            data = await inst.read_file(path_of(msg["path"]), int(msg["max_bytes"]))
            return {"data": data}
        if op == "list_files":
            entries = await inst.list_files(path_of(msg["path"], allow_root=True))
            return {"entries": [[e.name, e.kind, e.size] for e in entries]}
        if op == "remove_file":
            return {"removed": await inst.remove_file(path_of(msg["path"]))}
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
