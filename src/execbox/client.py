"""A client of an execbox server: the library's sandbox API and one-shot runs, over HTTP.

    client = execbox.connect("http://127.0.0.1:8002", api_key=KEY)    # blocking; execbox.aconnect: async
    Sandbox = client.Sandbox          # create / get_or_create / get / find / list, as execbox.Sandbox's
    with Sandbox.create("python", labels={"project": "demo"}) as sb:
        sb.exec("echo hi").stdout     # ExecutionResult, ExecEvent, FileInfo: the library's own models
    client.run("print(1)", language="python")                     # POST /api/v1/execute, as execbox.run

    async with execbox.aconnect(url, key) as client:
        async with await client.AsyncSandbox.create("python") as sb: ...

Code written against ``execbox.Sandbox`` / ``AsyncSandbox`` runs unchanged against ``client.Sandbox`` /
``aclient.AsyncSandbox``: the same names, signatures, results and exceptions. HTTP errors become execbox's
exceptions: 401/403 AuthenticationError, 404 NotFoundError, 400/413/422 RequestError (UnknownLanguageError for
an unknown language), 429 (and 503 with Retry-After: the server's queue is full) CapacityError, other 503
ProviderUnavailable, other 5xx SandboxError, no server answering ServerUnreachable, a broken connection or no
answer within ``timeout`` SandboxError. What differs from in-process sandboxes: they live on the server (they
outlive the client until their TTL, and a key sees only its own), ``alive`` is what this object knows (a
sandbox the server reaped raises NotFoundError at its next use), and stdin given as bytes must be UTF-8.

The url defaults to ``EXECBOX_URL`` or http://127.0.0.1:8002; the key to the first of ``EXECBOX_API_KEY``,
else the dev key a local server wrote (``$EXECBOX_DATA_DIR/dev-api-key``, default
``~/.local/share/execbox/dev-api-key``). httpx is imported at the first client, not with execbox.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import functools
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from execbox.api import program_request
from execbox.errors import (
    AuthenticationError,
    CapacityError,
    ExecboxError,
    ExecutionFailed,
    NotFoundError,
    ProviderUnavailable,
    RequestError,
    SandboxError,
    ServerUnreachable,
    UnknownLanguageError,
)
from execbox.interpreter import CellResult
from execbox.models import ExecEvent, ExecutionRequest, ExecutionResult, File, FileInfo, Limits, check_file_name
from execbox.sandbox import Command, _argv, _labels, _portal

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:8002"
DEFAULT_TIMEOUT_S = 600.0
API = "/api/v1"


def default_url() -> str:
    return os.environ.get("EXECBOX_URL", "").strip() or DEFAULT_URL


def default_api_key() -> str | None:
    """The first key of EXECBOX_API_KEY, else the dev key of a server started on this machine by this user."""
    if key := next((k.strip() for k in os.environ.get("EXECBOX_API_KEY", "").split(",") if k.strip()), None):
        return key
    # where the server's default_data_dir() puts it (not imported: that would import the web stack)
    data_dir = os.environ.get("EXECBOX_DATA_DIR") or Path(
        os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "execbox"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return (Path(data_dir) / "dev-api-key").read_text().strip() or None
    return None


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise RequestError(f"an execbox server URL is http(s)://host[:port][/prefix], not {url!r}")
    return url.rstrip("/")


def _text(data: str | bytes, what: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode()
    except UnicodeDecodeError:
        raise RequestError(f"{what} given as bytes must be UTF-8 text over HTTP") from None


def _limits(limits: Limits | None) -> dict[str, Any] | None:
    """Only the fields set: the server fills the others from its defaults, as the library does."""
    return None if limits is None else limits.model_dump(mode="json", exclude_unset=True)


def _result(body: Any) -> ExecutionResult:
    """The ExecutionResult inside an execute-shaped answer (it adds success/output/error/execution_time)."""
    return ExecutionResult.model_validate({k: v for k, v in body.items() if k in ExecutionResult.model_fields})


def _output(stream: str, data: Any) -> ExecEvent:
    return ExecEvent.model_validate({"type": stream, "data": data["data"]})


def _make(data: Any, what: str, make: Callable[[Any], T]) -> T:
    """``make(data)``; data that is not what was asked for is the server's failure, not a KeyError."""
    try:
        return make(data)
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # ValidationError is a ValueError
        raise SandboxError(f"the execbox server's answer is not {what}: {e}") from e


def _parse(resp: httpx.Response, what: str, make: Callable[[Any], T]) -> T:
    try:
        data = resp.json()
    except ValueError as e:
        raise SandboxError(f"the execbox server's answer is not JSON: {e}") from e
    return _make(data, what, make)


def _detail(status: int, content: bytes) -> tuple[str, list[str] | None]:
    """The error's words (the native ``{"detail"}``, field errors joined) and an unknown language's list."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode(errors="replace")[:500] or f"HTTP {status}", None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ...}]
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []) if p != 'body') or 'body'}: {e.get('msg')}"
                           for e in detail if isinstance(e, dict))
    supported = body.get("supported") if isinstance(body, dict) else None
    return str(detail or f"HTTP {status}"), supported if isinstance(supported, list) else None


def _http_error(status: int, headers: Mapping[str, str], content: bytes, language: str | None) -> ExecboxError:
    detail, supported = _detail(status, content)
    retry = headers.get("retry-after")
    if status in (401, 403):
        return AuthenticationError(f"{detail} (give api_key= or EXECBOX_API_KEY)")
    if status == 404:
        return NotFoundError(detail)
    if status == 400 and supported is not None and language is not None:
        return UnknownLanguageError(language, [str(s) for s in supported])
    if status in (400, 413, 422):
        return RequestError(detail)
    if status == 429 or (status == 503 and retry):
        return CapacityError(f"{detail} (retry after {retry} s)" if retry else detail)
    if status == 503:
        return ProviderUnavailable(detail)
    if status >= 500:
        return SandboxError(f"the execbox server failed: {detail}")
    return ExecboxError(f"unexpected HTTP {status} from the execbox server: {detail}")


async def _sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """(event, JSON data) of a Server-Sent Events stream; comments (the keep-alives) skipped."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                try:
                    yield event, json.loads("\n".join(data))
                except ValueError as e:
                    raise SandboxError(f"the execbox server sent a malformed event: {e}") from e
            event, data = "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


# ---------------------------------------------------------------------------------------------- async core

class AsyncClient:
    """An execbox server, for one API key: ``AsyncSandbox`` (its sandboxes) and ``run`` (one-shot runs).
    No request is made until the first call; close it with ``aclose()`` or ``async with``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        import httpx

        self.url = _check_url(url or default_url())
        key = api_key if api_key is not None else default_api_key()
        self._timeout = timeout
        # a command's own limits are the server's to enforce: `timeout` only bounds waiting for any one answer
        self._http = httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": key} if key else {},
                                       timeout=httpx.Timeout(timeout, connect=min(timeout or 10.0, 10.0)))
        self.AsyncSandbox = AsyncSandboxes(self)

    def _transport_error(self, e: Exception) -> ExecboxError:
        import httpx

        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return ServerUnreachable(f"no execbox server answers at {self.url}: {str(e) or type(e).__name__}")
        if isinstance(e, httpx.TimeoutException):
            return SandboxError(f"the execbox server at {self.url} did not answer within {self._timeout} s")
        return SandboxError(f"the connection to the execbox server at {self.url} failed: {e!r}")

    def _encode(self, kw: dict[str, Any]) -> dict[str, Any]:
        if "json" in kw:  # encoded here: a value JSON cannot carry is the request's mistake, not a TypeError
            try:
                kw["content"] = json.dumps(kw.pop("json"), allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise RequestError(f"the request cannot be sent as JSON: {e}") from None
            kw["headers"] = {"Content-Type": "application/json"}
        return kw

    async def _request(self, method: str, path: str, *, language: str | None = None, **kw: Any) -> httpx.Response:
        import httpx

        kw = self._encode(kw)
        try:
            resp = await self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise self._transport_error(e) from e
        if resp.status_code >= 400:
            raise _http_error(resp.status_code, resp.headers, resp.content, language)
        return resp

    @contextlib.asynccontextmanager
    async def _stream(self, method: str, path: str, **kw: Any) -> AsyncIterator[httpx.Response]:
        import httpx

        kw = self._encode(kw)
        try:
            async with self._http.stream(method, path, **kw) as resp:
                if resp.status_code >= 400:
                    raise _http_error(resp.status_code, resp.headers, await resp.aread(), None)
                yield resp
        except httpx.HTTPError as e:
            raise self._transport_error(e) from e

    async def run(
        self,
        code: str | None = None,
        language: str = "python",
        *,
        stdin: str | bytes = "",
        files: Mapping[str, str | bytes] | Sequence[File] | None = None,
        entry: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        version: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        provider: str | None = None,
        command: Literal["run", "test"] = "run",
        check: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` (and/or ``files``) on the server (POST /api/v1/execute), as ``execbox.arun`` does in
        this process: the same arguments, result and exceptions."""
        # the library's checks first: the same RequestErrors before anything is sent
        request = program_request(code, language, stdin=stdin, files=files, entry=entry, args=args, env=env,
                                  limits=limits, version=version, arguments=arguments, provider=provider,
                                  command=command)
        resp = await self._request("POST", f"{API}/execute", language=language, json=_program_body(request))
        result = _parse(resp, "an execution result", _result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.url}>"


def _program_body(request: ExecutionRequest) -> dict[str, Any]:
    """POST /api/v1/execute's body (and, but its provider, POST .../sandboxes/{id}/run's)."""
    body = {"language": request.language, "code": request.code, "version": request.version,
            "stdin": _text(request.stdin, "stdin"), "environment": request.env, "args": request.args,
            "limits": _limits(request.limits),
            "files": [{"name": f.name, "content": f.content, "encoding": "utf8"} if isinstance(f.content, str)
                      else {"name": f.name, "content": base64.b64encode(f.content).decode(), "encoding": "base64"}
                      for f in request.files],
            "entry": request.entry, "arguments": request.arguments, "provider": request.provider,
            "command": request.command}
    return {k: v for k, v in body.items() if v is not None}


def _create_body(language: str, labels: Mapping[str, str] | None, ttl_s: float | None,
                 max_lifetime_s: float | None, limits: Limits | None, provider: str | None,
                 env: Mapping[str, str] | None) -> dict[str, Any]:
    body = {"language": language, "labels": _labels(labels), "ttl_s": ttl_s, "max_lifetime_s": max_lifetime_s,
            "limits": _limits(limits), "provider": provider, "env": dict(env or {})}
    return {k: v for k, v in body.items() if v is not None}


class AsyncSandboxes:
    """The server's sandboxes of the client's key, with ``AsyncSandbox``'s constructors and lookups."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, language: str = "python", *, labels: Mapping[str, str] | None = None,
                     ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
                     provider: str | None = None, env: Mapping[str, str] | None = None) -> RemoteAsyncSandbox:
        """A new sandbox: ``labels`` to find it again, ``ttl_s`` idle seconds before it is destroyed,
        ``max_lifetime_s`` its hard maximum age, ``limits`` each exec's defaults and the sandbox's caps,
        ``env`` variables of every exec."""
        body = _create_body(language, labels, ttl_s, max_lifetime_s, limits, provider, env)
        resp = await self._client._request("POST", f"{API}/sandboxes", json=body, language=language)
        return self._sandbox(resp)

    async def get_or_create(self, labels: Mapping[str, str], *, language: str = "python",
                            ttl_s: float | None = None, max_lifetime_s: float | None = None,
                            limits: Limits | None = None, provider: str | None = None,
                            env: Mapping[str, str] | None = None) -> RemoteAsyncSandbox:
        """The live sandbox whose labels include ``labels``, or a new one (concurrent calls create one)."""
        body = _create_body(language, labels, ttl_s, max_lifetime_s, limits, provider, env)
        resp = await self._client._request("POST", f"{API}/sandboxes/get_or_create", json=body, language=language)
        return self._sandbox(resp)

    async def find(self, labels: Mapping[str, str]) -> RemoteAsyncSandbox | None:
        """The most recently used live sandbox whose labels include ``labels``, or None."""
        found = await self.list(labels)
        return found[0] if found else None

    async def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[RemoteAsyncSandbox]:
        """Live sandboxes whose labels include ``labels`` (all with None), most recently used first."""
        params = [("label", f"{k}:{v}") for k, v in _labels(labels).items()]
        resp = await self._client._request("GET", f"{API}/sandboxes", params=params)
        return _parse(resp, "a list of sandboxes",
                      lambda b: [RemoteAsyncSandbox(self._client, info) for info in b["sandboxes"]])

    async def get(self, sandbox_id: str) -> RemoteAsyncSandbox:
        """The live sandbox with this id; NotFoundError when there is none."""
        if sandbox_id in ("", ".", "..") or "/" in sandbox_id:  # never another route
            raise NotFoundError(f"no sandbox {sandbox_id!r}")
        resp = await self._client._request("GET", f"{API}/sandboxes/{urllib.parse.quote(sandbox_id, safe='')}")
        return self._sandbox(resp)

    def _sandbox(self, resp: httpx.Response) -> RemoteAsyncSandbox:
        return _parse(resp, "a sandbox", lambda b: RemoteAsyncSandbox(self._client, b))


class RemoteAsyncFiles:
    """A remote sandbox's workdir: the same methods as ``AsyncFiles``."""

    def __init__(self, sb: RemoteAsyncSandbox) -> None:
        self._sb = sb

    def _path(self, path: str) -> str:
        return f"{self._sb._path}/files/{urllib.parse.quote(check_file_name(path), safe='/')}"

    async def write(self, path: str, data: str | bytes) -> None:
        """Create or replace a file (text is written as UTF-8); parent directories are made."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self._sb._request("PUT", self._path(path), content=raw)

    async def read(self, path: str, max_bytes: int | None = None) -> bytes:
        """A file's bytes (at most ``max_bytes``, default the sandbox's disk size). NotFoundError when it
        does not exist, is not a regular file, or its path leads out of the workdir."""
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
        """The entries of a workdir directory, sorted by name."""
        rel = "." if path in ("", ".") else check_file_name(path)
        resp = await self._sb._request("GET", f"{self._sb._path}/files", params={"dir": rel})
        return _parse(resp, "a directory listing", lambda b: [FileInfo.model_validate(e) for e in b["entries"]])

    async def remove(self, path: str) -> bool:
        """Remove a file, symlink or directory tree; False when nothing was there."""
        try:
            await self._sb._request("DELETE", self._path(path))
        except NotFoundError:
            await self._sb._request("GET", self._sb._path)  # NotFoundError too when the sandbox is gone
            return False
        return True


class RemoteAsyncSandbox:
    """A sandbox on an execbox server, with ``AsyncSandbox``'s methods. Made by ``client.AsyncSandbox``."""

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

    def _exec_body(self, cmd: Command, stdin: str | bytes, env: Mapping[str, str] | None, cwd: str,
                   limits: Limits | None) -> dict[str, Any]:
        _argv(cmd)  # the library's checks, with its errors
        if cwd not in (".", ""):
            check_file_name(cwd)
        body = {"command": cmd if isinstance(cmd, str) else list(cmd), "stdin": _text(stdin, "stdin"),
                "env": dict(env or {}), "cwd": cwd or ".", "limits": _limits(limits)}
        return {k: v for k, v in body.items() if v is not None}

    async def exec(self, cmd: Command, *, stdin: str | bytes = "", env: Mapping[str, str] | None = None,
                   cwd: str = ".", limits: Limits | None = None, check: bool = False) -> ExecutionResult:
        """Run a command (a string runs under ``/bin/sh -c``; a list is the argv) in the sandbox and return
        its result. Files and background processes persist between execs; each exec has its own limits
        and a runaway one is killed (with everything it started) while the sandbox lives on. The command
        failing is a result; ``check=True`` raises ExecutionFailed for anything but ``ok``."""
        body = self._exec_body(cmd, stdin, env, cwd, limits)
        result = _parse(await self._request("POST", f"{self._path}/exec", json=body), "an execution result", _result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def stream(self, cmd: Command, *, stdin: str | bytes = "", env: Mapping[str, str] | None = None,
                     cwd: str = ".", limits: Limits | None = None) -> AsyncIterator[ExecEvent]:
        """Run a command as ``exec`` does, yielding its stdout/stderr as they come (ExecEvent "stdout" and
        "stderr", within the output cap), then an "exit" event carrying the result. Leaving the loop early
        kills the command (the server kills it when the connection closes)."""
        body = self._exec_body(cmd, stdin, env, cwd, limits)
        self._check_alive()
        async with self._client._stream("POST", f"{self._path}/exec/stream", json=body) as resp:
            async for event, data in _sse(resp.aiter_lines()):
                if event in ("stdout", "stderr"):
                    yield _make(data, "an output event", functools.partial(_output, event))
                elif event == "exit":
                    yield ExecEvent(type="exit", result=_make(data, "an execution result", _result))
                    return
                elif event == "error":  # the sandbox failed or went away after the answer had begun
                    raise SandboxError(f"sandbox {self.id}: {data.get('detail') if isinstance(data, dict) else data}")
        raise SandboxError(f"sandbox {self.id}: the stream ended before the command's exit")

    async def run(self, code: str | None = None, *, language: str | None = None, version: str | None = None,
                  files: Mapping[str, str | bytes] | Sequence[File] | None = None, entry: str | None = None,
                  stdin: str | bytes | None = "", args: Sequence[str] | None = (),
                  env: Mapping[str, str] | None = None, limits: Limits | None = None,
                  arguments: Mapping[str, Any] | None = None, command: Literal["run", "test"] = "run",
                  check: bool = False) -> ExecutionResult:
        """Run a program in the sandbox (POST .../run), as ``AsyncSandbox.run``: written into the workdir,
        compiled and run as the server's language says; its files stay; the sandbox's limits bound it."""
        lang = language or self.language
        request = program_request(code, lang, version=version, files=files, entry=entry, stdin=stdin,
                                  args=args, env=env, limits=limits, arguments=arguments, command=command)
        resp = await self._request("POST", f"{self._path}/run", json=_program_body(request), language=lang)
        result = _parse(resp, "an execution result", _result)
        if check and not result.ok:
            raise ExecutionFailed(result)
        return result

    async def run_code(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        """Run a Python cell in the sandbox's IPython kernel (POST .../run_code), as ``AsyncSandbox.run_code``:
        state is kept between calls; the value, rich outputs (image/png as bytes), stdout, stderr and the
        exception come back as data in a CellResult."""
        body: dict[str, Any] = {"code": code} if timeout_s is None else {"code": code, "timeout": timeout_s}
        resp = await self._request("POST", f"{self._path}/run_code", json=body)
        return _parse(resp, "a cell result", CellResult.model_validate)

    async def destroy(self) -> None:
        """Kill everything in the sandbox and remove every trace of it. Idempotent."""
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

def _call(aw: Awaitable[T]) -> T:
    """Run on the library's one sandbox event loop (a daemon thread), where the async client lives."""
    return _portal().call(aw)


def _same_doc(twin: Callable[..., Any]) -> Callable[[F], F]:
    def deco(f: F) -> F:
        f.__doc__ = twin.__doc__
        return f
    return deco


class Client:
    """An execbox server, for one API key (blocking): ``Sandbox`` (its sandboxes) and ``run``. No request is
    made until the first call; close it with ``close()`` or ``with``."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S) -> None:
        self._async = AsyncClient(url, api_key, timeout=timeout)
        self.url = self._async.url
        self.Sandbox = Sandboxes(self._async.AsyncSandbox)

    @_same_doc(AsyncClient.run)
    def run(
        self,
        code: str | None = None,
        language: str = "python",
        *,
        stdin: str | bytes = "",
        files: Mapping[str, str | bytes] | Sequence[File] | None = None,
        entry: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        version: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        provider: str | None = None,
        command: Literal["run", "test"] = "run",
        check: bool = False,
    ) -> ExecutionResult:
        return _call(self._async.run(code, language, stdin=stdin, files=files, entry=entry, args=args, env=env,
                                     limits=limits, version=version, arguments=arguments, provider=provider,
                                     command=command, check=check))

    def close(self) -> None:
        _call(self._async.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url}>"


class Sandboxes:
    """The server's sandboxes of the client's key (blocking), with ``Sandbox``'s constructors and lookups."""

    def __init__(self, sandboxes: AsyncSandboxes) -> None:
        self._a = sandboxes

    @_same_doc(AsyncSandboxes.create)
    def create(self, language: str = "python", *, labels: Mapping[str, str] | None = None,
               ttl_s: float | None = None, max_lifetime_s: float | None = None, limits: Limits | None = None,
               provider: str | None = None, env: Mapping[str, str] | None = None) -> RemoteSandbox:
        return RemoteSandbox(_call(self._a.create(language, labels=labels, ttl_s=ttl_s,
                                                  max_lifetime_s=max_lifetime_s, limits=limits, provider=provider,
                                                  env=env)))

    @_same_doc(AsyncSandboxes.get_or_create)
    def get_or_create(self, labels: Mapping[str, str], *, language: str = "python", ttl_s: float | None = None,
                      max_lifetime_s: float | None = None, limits: Limits | None = None,
                      provider: str | None = None, env: Mapping[str, str] | None = None) -> RemoteSandbox:
        return RemoteSandbox(_call(self._a.get_or_create(labels, language=language, ttl_s=ttl_s,
                                                         max_lifetime_s=max_lifetime_s, limits=limits,
                                                         provider=provider, env=env)))

    @_same_doc(AsyncSandboxes.find)
    def find(self, labels: Mapping[str, str]) -> RemoteSandbox | None:
        sb = _call(self._a.find(labels))
        return None if sb is None else RemoteSandbox(sb)

    @_same_doc(AsyncSandboxes.list)
    def list(self, labels: Mapping[str, str] | None = None) -> builtins.list[RemoteSandbox]:
        return [RemoteSandbox(sb) for sb in _call(self._a.list(labels))]

    @_same_doc(AsyncSandboxes.get)
    def get(self, sandbox_id: str) -> RemoteSandbox:
        return RemoteSandbox(_call(self._a.get(sandbox_id)))


class RemoteFiles:
    """A remote sandbox's workdir (blocking): the same methods as ``Files``."""

    def __init__(self, files: RemoteAsyncFiles) -> None:
        self._files = files

    @_same_doc(RemoteAsyncFiles.write)
    def write(self, path: str, data: str | bytes) -> None:
        return _call(self._files.write(path, data))

    @_same_doc(RemoteAsyncFiles.read)
    def read(self, path: str, max_bytes: int | None = None) -> bytes:
        return _call(self._files.read(path, max_bytes))

    @_same_doc(RemoteAsyncFiles.list)
    def list(self, path: str = ".") -> builtins.list[FileInfo]:
        return _call(self._files.list(path))

    @_same_doc(RemoteAsyncFiles.remove)
    def remove(self, path: str) -> bool:
        return _call(self._files.remove(path))


class RemoteSandbox:
    """A sandbox on an execbox server (blocking), with ``Sandbox``'s methods. Made by ``client.Sandbox``."""

    def __init__(self, sb: RemoteAsyncSandbox) -> None:
        self._sb = sb
        self.files = RemoteFiles(sb.files)
        # the rest of the server's description, as RemoteAsyncSandbox has it
        self.provider, self.limits, self.ttl_s = sb.provider, sb.limits, sb.ttl_s
        self.max_lifetime_s, self.created_at = sb.max_lifetime_s, sb.created_at
        self.expires_at, self.idle_expires_at = sb.expires_at, sb.idle_expires_at

    @property
    def id(self) -> str:
        return self._sb.id

    @property
    def labels(self) -> dict[str, str]:
        return self._sb.labels

    @property
    def language(self) -> str:
        return self._sb.language

    @property
    def alive(self) -> bool:
        """Not destroyed through this object (the server may have reaped it since: then NotFoundError)."""
        return self._sb.alive

    @_same_doc(RemoteAsyncSandbox.exec)
    def exec(self, cmd: Command, *, stdin: str | bytes = "", env: Mapping[str, str] | None = None,
             cwd: str = ".", limits: Limits | None = None, check: bool = False) -> ExecutionResult:
        return _call(self._sb.exec(cmd, stdin=stdin, env=env, cwd=cwd, limits=limits, check=check))

    @_same_doc(RemoteAsyncSandbox.stream)
    def stream(self, cmd: Command, *, stdin: str | bytes = "", env: Mapping[str, str] | None = None,
               cwd: str = ".", limits: Limits | None = None) -> Iterator[ExecEvent]:
        agen = self._sb.stream(cmd, stdin=stdin, env=env, cwd=cwd, limits=limits)
        try:
            while True:
                try:
                    yield _call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            _call(agen.aclose())  # type: ignore[attr-defined]

    @_same_doc(RemoteAsyncSandbox.run)
    def run(self, code: str | None = None, *, language: str | None = None, version: str | None = None,
            files: Mapping[str, str | bytes] | Sequence[File] | None = None, entry: str | None = None,
            stdin: str | bytes | None = "", args: Sequence[str] | None = (),
            env: Mapping[str, str] | None = None, limits: Limits | None = None,
            arguments: Mapping[str, Any] | None = None, command: Literal["run", "test"] = "run",
            check: bool = False) -> ExecutionResult:
        return _call(self._sb.run(code, language=language, version=version, files=files, entry=entry,
                                  stdin=stdin, args=args, env=env, limits=limits, arguments=arguments,
                                  command=command, check=check))

    @_same_doc(RemoteAsyncSandbox.run_code)
    def run_code(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        return _call(self._sb.run_code(code, timeout_s=timeout_s))

    @_same_doc(RemoteAsyncSandbox.destroy)
    def destroy(self) -> None:
        _call(self._sb.destroy())

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return repr(self._sb).replace("RemoteAsyncSandbox", "RemoteSandbox", 1)


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
           "RemoteSandbox", "Sandboxes", "aconnect", "connect", "default_api_key", "default_url"]
