"""HTTP to an execbox server, under the remote client (``execbox.client``): where the server is and with which
key (``default_url``, ``default_api_key``), one connection (``Transport``: requests and streams, transport
failures and HTTP errors as execbox's exceptions), answers read into models (``_parse``) and Server-Sent
Events (``_sse``). httpx is imported at the first connection, not with execbox."""

from __future__ import annotations

import contextlib
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from execbox.errors import (
    AuthenticationError,
    CapacityError,
    ExecboxError,
    ProviderUnavailable,
    RequestError,
    SandboxError,
    ServerUnreachable,
    UnknownLanguageError,
)
from execbox.wire import CODE_RUN_HEADER, error_of

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8002"
DEFAULT_TIMEOUT_S = 600.0


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
    """The exception of an error answer, by the wire schema's table (the server's, read back), with its
    ``http_status`` and ``code_not_run`` (the server said the code was not run: CODE_RUN_HEADER)."""
    e = _error_of_answer(status, headers, content, language)
    e.http_status, e.code_not_run = status, headers.get(CODE_RUN_HEADER) == "no"  # type: ignore[attr-defined]
    return e


def _error_of_answer(status: int, headers: Mapping[str, str], content: bytes, language: str | None,
                     ) -> ExecboxError:
    detail, supported = _detail(status, content)
    retry = headers.get("retry-after")
    kind = error_of(status, retry is not None)
    if kind is None:
        kind = SandboxError if status >= 500 else ExecboxError
        return kind(f"unexpected HTTP {status} from the execbox server: {detail}")
    if issubclass(kind, AuthenticationError):
        return kind(f"{detail} (give api_key= or EXECBOX_API_KEY)")
    if issubclass(kind, RequestError) and status == 400 and supported is not None and language is not None:
        return UnknownLanguageError(language, [str(s) for s in supported])
    if issubclass(kind, CapacityError):
        seconds = float(retry) if retry and retry.isdigit() else None  # (an HTTP date is not worth parsing)
        return kind(f"{detail} (retry after {retry} s)" if retry else detail, seconds)
    if status >= 500 and not issubclass(kind, ProviderUnavailable):
        return kind(f"the execbox server failed: {detail}")
    return kind(detail)


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




class Transport:
    """One connection to an execbox server with one API key; ``timeout`` bounds the wait for any one answer.
    No request is made until the first call."""

    def __init__(self, url: str | None = None, api_key: str | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT_S, connect_timeout: float | None = None,
                 keepalive_s: float = 5.0) -> None:
        import httpx

        self.url = _check_url(url or default_url())
        key = api_key if api_key is not None else default_api_key()
        self._timeout = timeout
        connect = connect_timeout if connect_timeout is not None else min(timeout or 10.0, 10.0)
        # a command's own limits are the server's to enforce: `timeout` only bounds waiting for any one answer.
        # `keepalive_s`: idle connections are dropped before the server closes them (uvicorn: after 5 s), so a
        # request is never sent on one the server is closing (an error that looks like a lost answer).
        self._http = httpx.AsyncClient(base_url=self.url, headers={"X-API-Key": key} if key else {},
                                       timeout=httpx.Timeout(timeout, connect=connect),
                                       limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                                           keepalive_expiry=keepalive_s))

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
            kw["headers"] = {**kw.get("headers", {}), "Content-Type": "application/json"}
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

    async def aclose(self) -> None:
        await self._http.aclose()
