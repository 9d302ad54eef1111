"""A client of an execbox server: the library's sandbox API and one-shot runs, over HTTP.

    client = execbox.connect("http://127.0.0.1:8002", api_key=KEY)    # blocking; execbox.aconnect: async
    Sandbox = client.Sandbox          # create / get_or_create / get / find / list, as execbox.Sandbox's
    with Sandbox.create("python", labels={"project": "demo"}) as sb:
        sb.exec("echo hi").stdout     # ExecutionResult, ExecEvent, FileInfo: the library's own models
    client.run("print(1)", language="python")                     # POST /api/v1/execute, as execbox.run

    async with execbox.aconnect(url, key) as client:
        async with await client.AsyncSandbox.create("python") as sb: ...

Code written against ``execbox.Sandbox`` / ``AsyncSandbox`` runs unchanged against ``client.Sandbox`` /
``aclient.AsyncSandbox``: the same names, signatures, results and exceptions (both implement
``execbox.protocol``; the blocking faces are ``execbox.blocking``'s). HTTP errors (``execbox.transport``)
become execbox's exceptions: 401/403 AuthenticationError, 404 NotFoundError, 400/413/422 RequestError
(UnknownLanguageError for an unknown language), 429 (and 503 with Retry-After: the server's queue is full)
CapacityError, other 503 ProviderUnavailable, other 5xx SandboxError, no server answering ServerUnreachable,
a broken connection or no answer within ``timeout`` SandboxError. What differs from in-process sandboxes:
they live on the server (they outlive the client until their TTL, and a key sees only its own), ``alive`` is
what this object knows (a sandbox the server reaped raises NotFoundError at its next use), and stdin given as
bytes must be UTF-8.

The url defaults to ``EXECBOX_URL`` or http://127.0.0.1:8002; the key to the first of ``EXECBOX_API_KEY``,
else the dev key a local server wrote (``$EXECBOX_DATA_DIR/dev-api-key``, default
``~/.local/share/execbox/dev-api-key``). httpx is imported at the first client, not with execbox.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Unpack

from pydantic import BaseModel, ValidationError

from execbox.api import program_request
from execbox.blocking import BlockingSandbox, Files, call, twin
from execbox.errors import (
    ExecutionFailed,
    NotFoundError,
    RequestError,
    SandboxError,
)
from execbox.interpreter import CellResult
from execbox.models import (
    ExecEvent,
    ExecutionResult,
    File,
    FileInfo,
    Limits,
    check_file_name,
    check_labels,
)
from execbox.protocol import (
    AsyncFilesProtocol,
    AsyncSandboxesProtocol,
    AsyncSandboxProtocol,
    Command,
    ProgramOptions,
    implements,
)
from execbox.protocol import argv_of as _argv
from execbox.transport import DEFAULT_TIMEOUT_S, Transport, _make, _parse, _sse, default_api_key, default_url
from execbox.wire import (
    CreateBody,
    ExecBody,
    ExecuteBody,
    Listing,
    OutputData,
    RunCodeBody,
    SandboxInfo,
    SandboxList,
    field_errors,
    parse_result,
)

if TYPE_CHECKING:
    import httpx

API = "/api/v1"




def _output(stream: str, data: Any) -> ExecEvent:
    return ExecEvent(type=stream, data=OutputData.model_validate(data).data)


# ---------------------------------------------------------------------------------------------- async core

class AsyncClient(Transport):
    """An execbox server, for one API key: ``AsyncSandbox`` (its sandboxes) and ``run`` (one-shot runs).
    No request is made until the first call; close it with ``aclose()`` or ``async with``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(url, api_key, timeout=timeout)
        self.AsyncSandbox = AsyncSandboxes(self)

    async def run(
        self,
        code: str | None = None,
        language: str = "python",
        *,
        stdin: str | bytes | None = "",
        files: Mapping[str, str | bytes] | Sequence[File] | None = None,
        entry: str | None = None,
        args: Sequence[str] | None = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        version: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        provider: str | None = None,
        fallback: Sequence[str] | None = None,
        command: Literal["run", "test"] = "run",
        check: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` (and/or ``files``) on the server (POST /api/v1/execute), as ``execbox.arun`` does in
        this process: the same arguments, result and exceptions."""
        # the library's checks first: the same RequestErrors before anything is sent
        request = program_request(code, language, stdin=stdin, files=files, entry=entry, args=args, env=env,
                                  limits=limits, version=version, arguments=arguments, provider=provider,
                                  fallback=fallback, command=command)
        resp = await self._request("POST", f"{API}/execute", language=language, json=_dump(ExecuteBody.of(request)))
        result = _parse(resp, "an execution result", parse_result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"


def _dump(body: BaseModel) -> dict[str, Any]:
    """A request body as JSON data: the fields given (a Limits' too: the server fills the others from its
    defaults, as the library does), nulls left out."""
    return body.model_dump(exclude_unset=True, exclude_none=True)


@implements(AsyncSandboxesProtocol)
class AsyncSandboxes:
    """The server's sandboxes of the client's key, with ``AsyncSandbox``'s constructors and lookups."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, language: str = "python", *, labels: Mapping[str, str] | None = None,
                     ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
                     provider: str | None = None, fallback: Sequence[str] | None = None,
                     env: Mapping[str, str] | None = None) -> RemoteAsyncSandbox:
        body = _dump(CreateBody.of(language, labels, ttl_s, max_lifetime_s, limits, provider, env, fallback))
        resp = await self._client._request("POST", f"{API}/sandboxes", json=body, language=language)
        return self._sandbox(resp)

    async def get_or_create(self, labels: Mapping[str, str], *, language: str = "python",
                            ttl_s: float | None = None, max_lifetime_s: float | None = None,
                            limits: Limits | None = None, provider: str | None = None,
                            fallback: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                            ) -> RemoteAsyncSandbox:
        body = _dump(CreateBody.of(language, labels, ttl_s, max_lifetime_s, limits, provider, env, fallback))
        resp = await self._client._request("POST", f"{API}/sandboxes/get_or_create", json=body, language=language)
        return self._sandbox(resp)

    async def find(self, labels: Mapping[str, str]) -> RemoteAsyncSandbox | None:
        found = await self.list(labels)
        return found[0] if found else None

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[RemoteAsyncSandbox]:
        params = [("label", f"{k}={v}") for k, v in check_labels(labels).items()]
        resp = await self._client._request("GET", f"{API}/sandboxes", params=params)
        return _parse(resp, "a list of sandboxes", lambda b: [
            RemoteAsyncSandbox(self._client, info.model_dump()) for info in SandboxList.model_validate(b).sandboxes])

    async def get(self, sandbox_id: str) -> RemoteAsyncSandbox:
        if sandbox_id in ("", ".", "..") or "/" in sandbox_id:  # never another route
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        resp = await self._client._request("GET", f"{API}/sandboxes/{urllib.parse.quote(sandbox_id, safe='')}")
        return self._sandbox(resp)

    def _sandbox(self, resp: httpx.Response) -> RemoteAsyncSandbox:
        return _parse(resp, "a sandbox",
                      lambda b: RemoteAsyncSandbox(self._client, SandboxInfo.model_validate(b).model_dump()))


@implements(AsyncFilesProtocol)
class RemoteAsyncFiles:
    """A remote sandbox's workdir: the same methods as ``AsyncFiles``."""

    def __init__(self, sb: RemoteAsyncSandbox) -> None:
        self._sb = sb

    def _path(self, path: str) -> str:
        return f"{self._sb._path}/files/{urllib.parse.quote(check_file_name(path), safe='/')}"

    async def write(self, path: str, data: str | bytes) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self._sb._request("PUT", self._path(path), content=raw)

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        url = self._path(path)
        self._sb._check_alive()
        if max_bytes is None:
            return (await self._sb._client._request("GET", url)).content
        data = bytearray()
        async with self._sb._client._stream("GET", url) as resp:
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) >= max_bytes:
                    break  # the rest is not wanted: closing the response stops the transfer
        return bytes(data[:max_bytes])

    async def list(self, path: str = ".") -> builtins.list[FileInfo]:
        rel = "." if path in ("", ".") else check_file_name(path)
        resp = await self._sb._request("GET", f"{self._sb._path}/files", params={"dir": rel})
        return _parse(resp, "a directory listing", lambda b: Listing.model_validate(b).entries)

    async def remove(self, path: str) -> bool:
        try:
            await self._sb._request("DELETE", self._path(path))
        except NotFoundError:
            await self._sb._request("GET", self._sb._path)  # NotFoundError too when the sandbox is gone
            return False
        return True


@implements(AsyncSandboxProtocol)
class RemoteAsyncSandbox:
    """A sandbox on an execbox server, with ``AsyncSandbox``'s methods (``run`` compiles and runs as the
    server's languages say; closing a ``stream`` early makes the server kill the command). Made by
    ``client.AsyncSandbox``."""

    def __init__(self, client: AsyncClient, info: Mapping[str, Any]) -> None:
        self._client = client
        self.id: str = info["id"]
        self.language: str = info["language"]
        self.provider: str = info["provider"]
        self.labels: dict[str, str] = dict(info["labels"])
        self.limits = Limits.model_validate(info["limits"])
        self.ttl_s: float = info["ttl_s"]
        self.max_lifetime_s: float = info["max_lifetime_s"]
        self.created_at: float = info["created_at"]  # Unix seconds, as the library's
        self.expires_at: float = info["expires_at"]  # at the latest, used or not
        self.idle_expires_at: float = info["idle_expires_at"]  # when this description was fetched
        self._path = f"{API}/sandboxes/{urllib.parse.quote(self.id, safe='')}"
        self._destroyed = False
        self.files = RemoteAsyncFiles(self)

    @property
    def alive(self) -> bool:
        """Not destroyed through this object (the server may have reaped it since: then NotFoundError)."""
        return not self._destroyed

    def _check_alive(self) -> None:
        if self._destroyed:
            raise NotFoundError(f"sandbox {self.id} has been destroyed")

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self._check_alive()
        return await self._client._request(method, path, **kw)

    def _exec_body(self, cmd: Command, stdin: str | bytes | None, env: Mapping[str, str] | None, cwd: str,
                   limits: Limits | None) -> dict[str, Any]:
        _argv(cmd)  # the library's checks, with its errors
        return _dump(ExecBody.of(cmd if isinstance(cmd, str) else list(cmd), stdin, env, cwd, limits))

    async def exec(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
                   cwd: str = ".", limits: Limits | None = None, check: bool = False) -> ExecutionResult:
        body = self._exec_body(cmd, stdin, env, cwd, limits)
        result = _parse(await self._request("POST", f"{self._path}/exec", json=body), "an execution result",
                        parse_result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def stream(self, cmd: Command, *, stdin: str | bytes | None = "", env: Mapping[str, str] | None = None,
                     cwd: str = ".", limits: Limits | None = None) -> AsyncIterator[ExecEvent]:
        body = self._exec_body(cmd, stdin, env, cwd, limits)
        self._check_alive()
        async with self._client._stream("POST", f"{self._path}/exec/stream", json=body) as resp:
            async for event, data in _sse(resp.aiter_lines()):
                if event in ("stdout", "stderr"):
                    yield _make(data, "an output event", functools.partial(_output, event))
                elif event == "exit":
                    yield ExecEvent(type="exit", result=_make(data, "an execution result", parse_result))
                    return
                elif event == "error":  # the sandbox failed or went away after the answer had begun
                    raise SandboxError(f"sandbox {self.id}: {data.get('detail') if isinstance(data, dict) else data}")
        raise SandboxError(f"sandbox {self.id}: the stream ended before the command's exit")

    async def run(self, code: str | None = None, *, language: str | None = None, check: bool = False,
                  **options: Unpack[ProgramOptions]) -> ExecutionResult:
        lang = language or self.language
        request = program_request(code, lang, **options)
        # ExecuteBody's fields but provider and session (None here, left out): SandboxRunBody's
        resp = await self._request("POST", f"{self._path}/run", json=_dump(ExecuteBody.of(request)), language=lang)
        result = _parse(resp, "an execution result", parse_result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def run_code(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        try:
            body = _dump(RunCodeBody(code=code, timeout=timeout_s))
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None
        resp = await self._request("POST", f"{self._path}/run_code", json=body)
        return _parse(resp, "a cell result", CellResult.model_validate)

    async def destroy(self) -> None:
        if self._destroyed:
            return
        with contextlib.suppress(NotFoundError):  # reaped or destroyed elsewhere: gone, as wanted
            await self._client._request("DELETE", self._path)
        self._destroyed = True

    async def __aenter__(self) -> RemoteAsyncSandbox:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.destroy()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "destroyed"
        return f"<RemoteAsyncSandbox {self.id} {self.language} labels={self.labels} {state} at {self._client.url}>"


# ---------------------------------------------------------------------------------------------- sync facade

class Client:
    """An execbox server, for one API key (blocking): ``Sandbox`` (its sandboxes) and ``run``. No request is
    made until the first call; close it with ``close()`` or ``with``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self._async = AsyncClient(url, api_key, timeout=timeout)
        self.url = self._async.url
        # this client's sandboxes: RemoteSandbox with its constructors and lookups on this client's server
        self.Sandbox: type[RemoteSandbox] = type("RemoteSandbox", (RemoteSandbox,),
                                                 {"_backend": self._async.AsyncSandbox})

    run = twin(AsyncClient.run)

    def close(self) -> None:
        call(self._async.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url}>"


class RemoteSandbox(BlockingSandbox[RemoteAsyncSandbox]):
    """A sandbox on an execbox server (blocking), with ``Sandbox``'s methods. ``client.Sandbox`` is this class
    bound to the client: ``client.Sandbox.create(...)``, ``.get_or_create``, ``.get``, ``.find``, ``.list``."""

    def __init__(self, sb: RemoteAsyncSandbox) -> None:
        super().__init__(sb)
        # the rest of the server's description, as RemoteAsyncSandbox has it
        self.provider, self.limits, self.ttl_s = sb.provider, sb.limits, sb.ttl_s
        self.max_lifetime_s, self.created_at = sb.max_lifetime_s, sb.created_at
        self.expires_at, self.idle_expires_at = sb.expires_at, sb.idle_expires_at


RemoteFiles = Files  # a remote sandbox's workdir (blocking): the one blocking Files


def connect(url: str | None = None, api_key: str | None = None, *,
            timeout: float | None = DEFAULT_TIMEOUT_S) -> Client:
    """A blocking client of the execbox server at ``url`` (default EXECBOX_URL, else http://127.0.0.1:8002)
    with ``api_key`` (default EXECBOX_API_KEY, else a local server's dev key); ``timeout`` bounds the wait
    for any one answer, seconds. ``client.Sandbox`` has ``execbox.Sandbox``'s API, ``client.run`` is
    ``execbox.run``'s."""
    return Client(url, api_key, timeout=timeout)


def aconnect(url: str | None = None, api_key: str | None = None, *,
             timeout: float | None = DEFAULT_TIMEOUT_S) -> AsyncClient:
    """An async client of the execbox server at ``url`` (as ``connect``): ``client.AsyncSandbox`` has
    ``execbox.AsyncSandbox``'s API, ``await client.run(...)`` is ``execbox.arun``'s. Use it with
    ``async with`` (or ``await client.aclose()``)."""
    return AsyncClient(url, api_key, timeout=timeout)


__all__ = ["AsyncClient", "AsyncSandboxes", "Client", "RemoteAsyncFiles", "RemoteAsyncSandbox", "RemoteFiles",
           "RemoteSandbox", "aconnect", "connect", "default_api_key", "default_url"]
