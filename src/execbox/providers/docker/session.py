"""One AGENT exec's session: the header and files sent ahead of the program's stdin, the attached stream
read into the one supervisor (providers/supervisor.py's ``Watch``: caps, limits, stop reason), and the
program's end, from the AGENT's trailer or from dockerd. One-shot instances (provider.py) and persistent
sandboxes (persistent.py) run every process through it, each with its own ``Scope`` (what a kill and the
CPU watch act on).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from execbox.errors import RequestError, SandboxError
from execbox.providers.base import ExecSpec, OutputChunk, ProcessOutcome, StopReason, pump_live
from execbox.providers.docker.container import SANDBOX_UID, Container, Containers, cpu_seconds, in_thread
from execbox.providers.host.stall import MemoryStall
from execbox.providers.supervisor import PIPE_GRACE_S, Scope, Watch, exit_of_code


def agent_header(nonce: str, size: int, cwd: str, spec: ExecSpec) -> bytes:
    """The AGENT's header (scripts/agent.sh): NUL-terminated fields: magic, nonce, bytes of tar, cwd, CPU
    seconds soft/hard, file size KiB, open files, the environment's count and entries, argv's count and
    entries."""
    cpu_soft = int(spec.cpu_time_s) + 1
    env = [f"{k}={v}" for k, v in spec.env.items()]
    fields = ["execbox1", nonce, str(size), cwd, str(cpu_soft), str(cpu_soft + 1), str(spec.file_size_mb * 1024),
              str(spec.open_files), str(len(env)), *env, str(len(spec.argv)), *spec.argv]
    if any("\0" in f for f in fields):
        raise RequestError("arguments and environment cannot contain NUL characters")
    return b"".join(f.encode() + b"\0" for f in fields)


def files_tar(files: Mapping[str, bytes]) -> bytes:
    """The files sent with a process, as the AGENT unpacks them into /work (owned by the sandbox uid)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
                    info.uid = info.gid = SANDBOX_UID
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            info.uid = info.gid = SANDBOX_UID
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def container_scope(containers: Containers, c: Container) -> Scope:
    """A one-shot instance's limits act on the whole container: everything of the sandbox uid in it is the
    execution's."""
    stall = None
    if c.oom_file is not None and c.cpu_file is not None:
        stall = MemoryStall(c.oom_file.parent, c.cpu_file.parent, 2 if c.cpu_file.name == "cpu.stat" else 1)
    return Scope(lambda: containers.kill_all(c), lambda: cpu_seconds(c), stall)


class Session:
    """One docker exec's attached stream: stdin in, multiplexed stdout/stderr out into a supervisor.Watch
    (caps, limits, stop reason); the program's end is the AGENT's trailer, or the stream's end."""

    def __init__(self, containers: Containers, c: Container, sock: socket.socket, spec: ExecSpec, stdin: bytes,
                 start: float, cpu0: float | None, exec_id: str, nonce: str, scope: Scope | None = None,
                 on_chunk: Callable[[OutputChunk], None] | None = None) -> None:
        self.containers, self.c, self.sock, self.spec, self.stdin = containers, c, sock, spec, stdin
        self.start, self.exec_id = start, exec_id
        self.scope = scope or container_scope(containers, c)
        # no baseline: no CPU watch (a remote dockerd); the kill runs on a thread (it may ask dockerd)
        watched = replace(self.scope, kill=self._kill, cpu_base_s=cpu0 or 0.0,
                          cpu_seconds=self.scope.cpu_seconds if cpu0 is not None else None)
        self.watch = Watch(watched, output_bytes=spec.output_bytes, wall_time_s=spec.wall_time_s,
                           cpu_time_s=spec.cpu_time_s, on_chunk=on_chunk)
        self.trailer = re.compile(b"\\x00execbox-exit:" + nonce.encode() + b":(\\d+)\\n\\Z")
        self.exit_status: int | None = None  # from the trailer
        self.exited = asyncio.Event()
        self.ended_at: float | None = None

    def _kill(self) -> None:
        threading.Thread(target=self._kill_now, daemon=True).start()

    def _kill_now(self) -> None:
        with contextlib.suppress(Exception):
            self.scope.kill()

    async def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        live = self.spec.live
        try:
            if self.stdin:
                await loop.sock_sendall(self.sock, self.stdin)
            if live is not None:  # an interactive run: the header went first, the client's input follows
                assert self.scope.signal is not None
                await pump_live(live, lambda data: loop.sock_sendall(self.sock, data),
                                lambda: self.sock.shutdown(socket.SHUT_WR), self.scope.signal)
        except OSError:
            pass  # the program exited without reading all of it
        finally:
            if live is None:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    async def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        buf = bytearray()
        while True:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                kind, size = buf[0], struct.unpack(">I", bytes(buf[4:8]))[0]
                if len(buf) < 8 + size:
                    break
                payload = bytes(buf[8:8 + size])
                del buf[:8 + size]
                if kind not in (1, 2):
                    continue
                if kind == 2 and self.exit_status is None and (m := self.trailer.search(payload)):
                    payload = payload[:m.start()]
                    self.exit_status = int(m.group(1))
                    self.ended_at = time.monotonic()
                    self.exited.set()
                self.watch.add("stdout" if kind == 1 else "stderr", payload)

    async def run(self) -> ProcessOutcome:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        sender = asyncio.create_task(self._send(loop))
        reader = asyncio.create_task(self._read(loop))
        exited = asyncio.create_task(self.exited.wait())

        async def ended() -> None:  # the trailer came, or the stream ended
            await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)

        try:
            try:
                if await self.watch.run(ended, self.start, after_kill_s=10):
                    if reader.done():
                        reader.result()  # (raises the stream's error, if any)
                    else:  # the program ended; its pipes close at once unless a descendant still holds them
                        try:
                            await asyncio.wait_for(asyncio.shield(reader), PIPE_GRACE_S)
                        except TimeoutError:
                            if self.scope.kill_lingering:
                                await in_thread("kill the sandbox's processes", self.scope.kill)
                                with contextlib.suppress(TimeoutError):
                                    await asyncio.wait_for(asyncio.shield(reader), 10)
                elif not reader.done():  # (the trailer came just as the wall time ran out)
                    await asyncio.wait_for(asyncio.shield(reader), 10)
            except TimeoutError as e:
                raise SandboxError("the container did not stop its processes after a kill") from e
            except OSError as e:
                raise SandboxError(f"docker exec stream failed: {e}") from e
        except asyncio.CancelledError:
            self.watch.stop(StopReason.CANCELLED)
            raise
        finally:
            tasks = (sender, reader, exited)
            for t in tasks:
                t.cancel()
            try:  # ended before the socket closes: none may still wait on its descriptor's number
                await asyncio.wait(tasks, timeout=1)
            finally:
                self.sock.close()
        wall = (self.ended_at or time.monotonic()) - self.start
        info: dict[str, Any] = {"ExitCode": self.exit_status}
        for _ in range(0 if self.exit_status is not None else 300):
            info = await in_thread("docker exec inspect", self.containers.api.exec_inspect, self.exec_id)
            if not info.get("Running"):
                break
            await asyncio.sleep(0.01)
        else:
            if self.exit_status is None:
                self.watch.stop(StopReason.WALL_TIME)
        code = info.get("ExitCode")
        exit_code, sig = (None, None) if code is None else exit_of_code(int(code))
        # the CPU time, OOM kills and peak memory are the caller's to read (it knows the group's baselines)
        return self.watch.outcome(exit_code, sig, wall_time_s=wall, cpu_time_s=None, max_rss_mb=None)
