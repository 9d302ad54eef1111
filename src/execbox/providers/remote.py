"""The ``remote`` kind: another execbox server runs what this one sends it (its providers, limits, fallback).

One-shot executions go whole (``RequestRunner.run_request``): the request, every limit set explicitly (that
server caps them by its own policy), to POST /api/v1/execute with ``Idempotency-Key: <execution_id>``, so a
request is never run twice there. The POST is never retried here, and the error says whether the code was
handed over: ``OutcomeUnknown`` once it was sent and no complete answer came (a read timeout, a connection
lost mid-answer, a 5xx that is not a refusal); before that, or when that server refused it, the error of
its kind (``ServerUnreachable``, ``CapacityError``, ``AuthenticationError``, ``RequestError``,
``ProviderUnavailable``), and the router fails over to the next provider.

Persistent instances are sandboxes there (POST /api/v1/sandboxes), each exec one of its routes; their
files, execs and streams are that server's sandbox API through the remote client (``execbox.client``).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from execbox.client import AsyncClient, AsyncSandboxes, RemoteAsyncSandbox
from execbox.errors import (
    AtCapacity,
    CapacityError,
    NotFoundError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
    SandboxError,
)
from execbox.languages import default_registry
from execbox.models import ExecutionRequest, ExecutionResult, Limits, Status
from execbox.providers.base import (
    ExecSpec,
    FileEntry,
    Instance,
    InstanceSpec,
    OutputChunk,
    ProcessOutcome,
    Provider,
    StopReason,
)
from execbox.providers.remote_settings import RemoteSettings
from execbox.transport import Transport, _make, _parse, _sse, default_url
from execbox.wire import ExecBody, ExecuteBody, OutputData, as_text, field_errors, parse_result

if TYPE_CHECKING:
    import httpx

API = "/api/v1"
# Idle connections are dropped well before an execbox server (uvicorn) closes them after 5 s: a POST sent on
# a connection the server is closing would fail like a lost answer, and it is never sent again.
KEEPALIVE_S = 2.0
# A sandbox's caps there are its memory, pids, disk and network; every other limit is each exec's own (sent
# with it), so the sandbox's are the most that server allows: it caps these by its maxima.
_OPEN = {"wall_time_s": 3600.0, "cpu_time_s": 3600.0, "compile_wall_time_s": 3600.0,
         "output_bytes": 256 * 1024 * 1024, "file_size_mb": 65536, "open_files": 65536}
_STOPPED = {Status.MEMORY_LIMIT: StopReason.MEMORY, Status.OUTPUT_LIMIT: StopReason.OUTPUT,
            Status.KILLED: StopReason.CANCELLED}


class RemoteProvider(Provider):
    """Another execbox server (``RemoteSettings``): whole requests, and sandboxes kept there."""

    name = "remote"
    supports_persistent = True

    def __init__(self, settings: RemoteSettings | None = None) -> None:
        self.settings = s = settings or RemoteSettings(url=default_url())
        self.client = _Client(s)  # RequestError for a bad URL
        self.url = self.client.url

    def _timeout(self, read_s: float) -> httpx.Timeout:
        import httpx

        return httpx.Timeout(read_s, connect=self.settings.connect_timeout_s)

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        """``request`` run by that server under ``limits`` (each sent, for it to cap); see the module."""
        wait_s = limits.compile_wall_time_s + limits.wall_time_s + self.settings.extra_time_s
        body = ExecuteBody.of(request.model_copy(update={"limits": limits, "provider": self.settings.provider}))
        try:
            resp = await self.client._request(
                "POST", f"{API}/execute", language=request.language, timeout=self._timeout(wait_s),
                json=body.model_dump(exclude_unset=True, exclude_none=True),
                headers={"Idempotency-Key": execution_id})
        except (ProviderUnavailable, CapacityError, RequestError) as e:  # refused, or never reached
            status = getattr(e, "http_status", 0)
            if status >= 500 and not getattr(e, "code_not_run", False):
                # a 5xx the server did not mark as a refusal (a proxy's: it may have forwarded the request)
                raise self._unknown(f"answered {status} without saying the code was not run ({e})") from e
            raise
        except SandboxError as e:
            if getattr(e, "code_not_run", False):  # the server's own failure before the hand-over
                raise
            import httpx

            cause = e.__cause__
            if isinstance(cause, httpx.PoolTimeout):  # no connection free to send it on: nothing was sent
                raise AtCapacity(f"provider {self.name!r}: every connection to {self.url} is busy", 1) from e
            if isinstance(cause, httpx.TimeoutException):
                raise self._unknown(f"no answer came within {wait_s:g} s") from e
            if isinstance(cause, httpx.HTTPError):
                raise self._unknown(f"the connection broke before the whole answer came ({cause!r})") from e
            raise self._unknown(f"it failed after taking it ({e})") from e  # a 5xx that is not a refusal
        # any other ExecboxError is another 4xx: refused, raised as it is
        try:
            return _parse(resp, "an execution result", parse_result)
        except SandboxError as e:  # it answered, so it ran: with an answer that cannot be read
            raise self._unknown(str(e)) from e

    def _unknown(self, why: str) -> OutcomeUnknown:
        return OutcomeUnknown(f"provider {self.name!r}: the execbox server at {self.url} was sent the request "
                              f"and {why}; the code may have run, so it is not run again")

    async def start(self, spec: InstanceSpec) -> Instance:
        if not spec.persistent:  # the engine sends whole requests to run_request instead
            raise SandboxError(f"provider {self.name!r} runs whole requests (run_request), not one-shot instances")
        caps = Limits(memory_mb=spec.memory_mb, pids=spec.pids, disk_mb=spec.disk_mb, network=spec.network, **_OPEN)
        sb = await self.client.AsyncSandbox.create(_language(spec.binaries), ttl_s=self.settings.sandbox_ttl_s,
                                                   limits=caps, provider=self.settings.provider)
        return RemoteInstance(self, sb)

    async def aclose(self) -> None:
        await self.client.aclose()


class RemoteInstance(Instance):
    """A sandbox on the other server; its id there is ``sandbox.id``."""

    def __init__(self, provider: RemoteProvider, sandbox: RemoteAsyncSandbox) -> None:
        self.provider, self.sandbox = provider, sandbox
        self._path = f"{API}/sandboxes/{urllib.parse.quote(sandbox.id, safe='')}"

    @contextlib.contextmanager
    def _there(self) -> Iterator[None]:
        """That server's sandbox gone (expired there, or that server restarted) is this instance failing."""
        try:
            yield
        except NotFoundError as e:
            raise SandboxError(f"provider {self.provider.name!r}: sandbox {self.sandbox.id} at "
                               f"{self.provider.url} is gone ({e})") from e

    async def _exists(self) -> None:
        with self._there():
            await self.sandbox._request("GET", self._path)

    async def write_files(self, files: Mapping[str, bytes]) -> None:
        with self._there():
            for path, data in files.items():
                await self.sandbox.files.write(path, data)

    async def read_file(self, path: str, max_bytes: int) -> bytes | None:
        try:
            return await self.sandbox.files.read(path, max_bytes)
        except NotFoundError:
            await self._exists()  # the sandbox is there: the file is not
            return None

    async def list_files(self, path: str) -> list[FileEntry]:
        try:
            infos = await self.sandbox.files.list(path)
        except NotFoundError as e:
            await self._exists()
            raise SandboxError(f"{path!r} is not a directory in the sandbox") from e
        return [FileEntry(i.name, i.kind, i.size_bytes) for i in infos]

    async def remove_file(self, path: str) -> bool:
        with self._there():
            return await self.sandbox.files.remove(path)

    def _exec(self, spec: ExecSpec) -> dict[str, Any]:
        """The exec's body: its argv, and every limit of its own (that server caps them by the sandbox's)."""
        limits = Limits(wall_time_s=spec.wall_time_s, cpu_time_s=spec.cpu_time_s, memory_mb=spec.memory_mb,
                        pids=spec.pids, output_bytes=spec.output_bytes, file_size_mb=spec.file_size_mb,
                        open_files=spec.open_files)
        try:
            body = ExecBody(command=list(spec.argv), stdin=as_text(spec.stdin, "stdin"), env=dict(spec.env),
                            cwd=spec.cwd, limits=limits)
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None
        return body.model_dump(exclude_unset=True, exclude_none=True)

    def _wait(self, spec: ExecSpec) -> httpx.Timeout:
        return self.provider._timeout(spec.wall_time_s + self.provider.settings.extra_time_s)

    async def exec(self, spec: ExecSpec) -> ProcessOutcome:
        body = self._exec(spec)
        with self._there():
            resp = await self.sandbox._request("POST", f"{self._path}/exec", json=body, timeout=self._wait(spec))
        return _outcome(_parse(resp, "an execution result", parse_result))

    async def stream(self, spec: ExecSpec) -> AsyncIterator[OutputChunk | ProcessOutcome]:
        body = self._exec(spec)
        with self._there():
            async with self.sandbox._client._stream("POST", f"{self._path}/exec/stream", json=body,
                                                    timeout=self._wait(spec)) as resp:
                async for event, data in _sse(resp.aiter_lines()):
                    if event in ("stdout", "stderr"):
                        text = _make(data, "an output event", lambda d: OutputData.model_validate(d).data)
                        yield OutputChunk(event, text.encode())
                    elif event == "exit":
                        yield _outcome(_make(data, "an execution result", parse_result))
                        return
                    elif event == "error":
                        why = data.get("detail") if isinstance(data, dict) else data
                        raise SandboxError(f"sandbox {self.sandbox.id} at {self.provider.url}: {why}")
        raise SandboxError(f"sandbox {self.sandbox.id} at {self.provider.url}: the stream ended before the exit")

    async def close(self) -> None:
        await self.sandbox.destroy()  # idempotent; one already gone there is gone, as wanted


def _outcome(r: ExecutionResult) -> ProcessOutcome:
    """The process outcome behind an exec's result there (its status back into why it was stopped)."""
    if r.status is Status.INTERNAL_ERROR:
        raise SandboxError(f"the far sandbox failed: {r.message}")
    stopped = _STOPPED.get(r.status)
    if r.status is Status.TIMEOUT:
        stopped = StopReason.CPU_TIME if (r.message or "").startswith("CPU") else StopReason.WALL_TIME
    return ProcessOutcome(exit_code=r.exit_code, signal=r.signal, stdout=r.stdout.encode(),
                          stderr=r.stderr.encode(), stdout_truncated=r.stdout_truncated,
                          stderr_truncated=r.stderr_truncated, wall_time_s=r.wall_time_s, cpu_time_s=r.cpu_time_s,
                          max_rss_mb=r.max_rss_mb, stopped_by=stopped)


def _language(binaries: tuple[str, ...]) -> str:
    """The language whose environment a sandbox there gets (a docker provider there picks its image by it):
    the one whose compile or run command is the spec's first binary."""
    if binaries:
        for lang in default_registry():
            if any(step is not None and step.command[0] == binaries[0] for step in (lang.compile, lang.run)):
                return lang.name
    return "python"


class _Client(AsyncClient):
    """The remote client with the settings' timeouts and a keep-alive shorter than the server's."""

    def __init__(self, s: RemoteSettings) -> None:
        # no key in the settings: none is sent (never this process's EXECBOX_API_KEY: its own keys)
        key = s.api_key.get_secret_value() if s.api_key is not None else ""
        # httpx retries nothing by default (its transport's retries=0, only ever for connecting): a POST is
        # never sent twice
        Transport.__init__(self, s.url, key, timeout=s.extra_time_s, connect_timeout=s.connect_timeout_s,
                           keepalive_s=KEEPALIVE_S)
        self.AsyncSandbox = AsyncSandboxes(self)
