"""Cloudflare sandboxes through the sandbox bridge Worker (cloudflare/sandbox-sdk's ``bridge/worker``, the
HTTP face of the ``@cloudflare/sandbox`` SDK, which runs only inside Workers): the service layer's Box on one
bridge sandbox, over httpx.

The bridge's routes (``packages/sandbox/src/bridge/routes.ts``) as this module uses them, under ``/v1``:

- ``POST /sandbox`` answers ``{"id"}`` (a base32 name, nothing started); the container is allocated by the
  first call on ``/sandbox/:id/*``, which is where a full account answers 503 ``capacity_exceeded``: the
  create therefore makes the work directories at once (an exec of mkdir) so that capacity shows there;
- ``POST /sandbox/:id/exec`` with ``{"argv", "timeout_ms"}`` answers Server-Sent Events: ``stdout`` and
  ``stderr`` (base64 of the output, which the SDK decoded as UTF-8), then ``exit`` (``{"exit_code"}``) or
  ``error`` (``{"error", "code"}``); a stream that ends without either is a run whose end is unknown;
- ``PUT``/``GET /sandbox/:id/file/<absolute path without its slash>``: raw bytes, confined to /workspace
  (403 outside), 32 MiB at most, 404 ``workspace_read_not_found``; ``POST /sandbox/:id/hydrate``: a tar
  extracted into /workspace (several files in one call);
- ``DELETE /sandbox/:id``: destroys the container (204, also when there was none);
- errors are ``{"error", "code"}``; a wrong bearer token is 401 ``unauthorized``. A 429 comes from
  Cloudflare's edge (a rate limit in front of the Worker), with Retry-After.

Every request is sent once: httpx's transport retries nothing by default (``retries=0``, and then only failed
connects), and no redirect is followed; so an exec is never resent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import json
import posixpath
import shlex
import tarfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping

import httpx

from execbox.errors import AtCapacity, ExecboxError, IsolationError, ProviderUnavailable, SandboxError
from execbox.providers.base import InstanceSpec, Provider
from execbox.providers.cloud.cloudflare_settings import BRIDGE_WRITE_BYTES, Settings
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.service import Box, Ran, Service, ServiceProvider

URL_FIX = ("set CLOUDFLARE_SANDBOX_BASE_URL (or the cloudflare provider's base_url) to your sandbox bridge "
           "Worker's URL (deploy it from https://github.com/cloudflare/sandbox-sdk/tree/main/bridge/worker)")
TOKEN_FIX = ("set CLOUDFLARE_SANDBOX_TOKEN (or the cloudflare provider's api_token) to the SANDBOX_API_KEY "
             "secret the bridge Worker was deployed with")
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def create(settings: Settings | None = None) -> Provider:
    s = settings or Settings()
    if s.base_url is None:
        raise ProviderUnavailable(f"the cloudflare provider has no bridge URL: {URL_FIX}")
    # A bridge without SANDBOX_API_KEY skips authentication (its local `npm run dev`): only on this host.
    if s.api_token is None and urllib.parse.urlsplit(s.base_url).hostname not in _LOOPBACK:
        raise ProviderUnavailable(f"the cloudflare provider has no bridge token: {TOKEN_FIX}")
    return ServiceProvider(CloudflareService(s), s)


class Refused(Exception):
    """The bridge (or Cloudflare's edge) answered an error status; mapped by ``_mapped``."""

    def __init__(self, response: httpx.Response, body: bytes) -> None:
        self.status, self.headers = response.status_code, response.headers
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            self.error, self.code = str(data.get("error", "")), str(data.get("code", ""))
        else:
            self.error, self.code = body[:200].decode(errors="replace").strip(), ""
        super().__init__(f"HTTP {self.status} {self.code or ''}: {self.error}".replace("  ", " "))


@contextlib.contextmanager
def _mapped(doing: str, unreachable: type[SandboxError] = SandboxError) -> Iterator[None]:
    """The bridge's failures as execbox's (the one place they are mapped). ``unreachable``: the error for a
    bridge that could not be reached (ProviderUnavailable before a sandbox exists)."""
    try:
        yield
    except (ExecboxError, TimeoutError):  # execbox's own clock (a run's deadline) and errors pass through
        raise
    except Refused as e:
        if e.status == 401 or e.code == "unauthorized":
            raise ProviderUnavailable(f"the Cloudflare sandbox bridge refused the token while {doing} ({e}): "
                                      f"{TOKEN_FIX}") from e
        if e.status == 429 or e.code == "capacity_exceeded":
            raise AtCapacity(f"Cloudflare has no room while {doing} ({e}); try again later",
                             retry_after_s=_retry_after(e.headers.get("retry-after"))) from e
        if e.status == 403:
            raise SandboxError(f"the Cloudflare sandbox bridge refused a path outside its workspace while "
                               f"{doing} ({e})") from e
        raise SandboxError(f"the Cloudflare sandbox bridge failed while {doing} ({e})") from e
    except httpx.TimeoutException as e:
        raise unreachable(f"the Cloudflare sandbox bridge did not answer while {doing}: {type(e).__name__}") from e
    except (httpx.TransportError, OSError) as e:
        raise unreachable(f"the Cloudflare sandbox bridge could not be reached while {doing}: "
                          f"{type(e).__name__}: {e}") from e
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:  # an answer not in the bridge's shape
        raise SandboxError(f"the Cloudflare sandbox bridge gave an unexpected answer while {doing}: "
                           f"{type(e).__name__}: {e}") from e


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (its delta-seconds or HTTP-date form; None when absent or unreadable)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


async def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise Refused(response, await response.aread())
    return response


class CloudflareService(Service):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.base_url is not None
        token = secret(settings.api_token)
        self.client = httpx.AsyncClient(  # one connection pool for the provider's sandboxes
            base_url=settings.base_url + settings.api_prefix, follow_redirects=False,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(settings.request_timeout_s, connect=min(settings.create_timeout_s, 30.0)))

    async def create(self, spec: InstanceSpec) -> Box:
        s = self.settings
        if spec.network != (s.egress == "open"):  # the router sends none such: a direct caller is told why
            has = "no network" if s.egress == "none" else "the network"
            raise IsolationError(f"this Cloudflare bridge's containers have {has} (its egress setting), and the run "
                                 f"asks for {'it' if spec.network else 'none'}")
        with _mapped("creating a sandbox", ProviderUnavailable):
            answer = await _checked(await self.client.post("/sandbox", timeout=s.create_timeout_s))
            sandbox_id = str(answer.json()["id"])
        box = CloudflareBox(self, sandbox_id)
        try:
            # The first call on the sandbox allocates its container (a full account refuses it here).
            ran = await box.run(f"mkdir -p {shlex.quote(s.workdir)} {shlex.quote(s.scratch_dir)}", s.create_timeout_s)
            if ran.exit_code != 0:
                raise SandboxError(f"the Cloudflare sandbox could not make {s.workdir}: "
                                   f"{ran.stderr.decode(errors='replace').strip()}")
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                await box.kill()
            raise
        return box

    async def aclose(self) -> None:
        await self.client.aclose()


class CloudflareBox(Box):
    def __init__(self, service: CloudflareService, sandbox_id: str) -> None:
        self.service, self.id = service, sandbox_id
        s = service.settings
        self.workdir, self.scratch_dir, self.root = s.workdir, s.scratch_dir, s.workspace_root
        self._killed = False

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._killed:  # the bridge would give a destroyed sandbox's name a fresh container: never reuse it
            raise SandboxError("the Cloudflare sandbox was destroyed")
        return self.service.client

    def _file_url(self, path: str) -> str:
        return f"/sandbox/{self.id}/file/{urllib.parse.quote(path.lstrip('/'), safe='/')}"

    async def run(self, command: str, timeout_s: float) -> Ran:
        body = {"argv": ["/bin/sh", "-c", command], "timeout_ms": max(1, round(timeout_s * 1000))}
        out, err = bytearray(), bytearray()
        with _mapped("running a command"):
            async with asyncio.timeout(timeout_s):  # execbox's clock; the bridge's timeout_ms backs it up
                async with self._client.stream("POST", f"/sandbox/{self.id}/exec", json=body,
                                               timeout=httpx.Timeout(self.service.settings.request_timeout_s,
                                                                     read=None)) as response:
                    await _checked(response)
                    async for event, data in _events(response.aiter_lines()):
                        if event in ("stdout", "stderr"):
                            (out if event == "stdout" else err).extend(base64.b64decode(data))
                        elif event == "exit":
                            return Ran(int(json.loads(data)["exit_code"]), bytes(out), bytes(err))
                        elif event == "error":
                            failure = json.loads(data)
                            message = str(failure.get("error", ""))
                            if "timeout" in message.lower() or "timed out" in message.lower():
                                raise TimeoutError(message)
                            raise SandboxError(f"the Cloudflare sandbox failed running a command: {message} "
                                               f"({failure.get('code')})")
            raise SandboxError("the Cloudflare sandbox bridge's answer ended before the command's end")

    async def write(self, path: str, data: bytes) -> None:
        with _mapped(f"writing {path}"):
            await _checked(await self._client.put(self._file_url(path), content=data,
                                                  headers={"Content-Type": "application/octet-stream"}))

    async def write_many(self, files: Mapping[str, bytes]) -> None:
        """Two or more files in one call (a tar the bridge extracts into its workspace root), when they fit."""
        archive = self._archive(files) if len(files) > 1 else None
        if archive is None:
            return await super().write_many(files)
        with _mapped(f"writing {len(files)} files"):
            await _checked(await self._client.post(f"/sandbox/{self.id}/hydrate", content=archive,
                                                   headers={"Content-Type": "application/octet-stream"}))

    def _archive(self, files: Mapping[str, bytes]) -> bytes | None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, data in files.items():
                name = posixpath.relpath(posixpath.normpath(path), self.root)
                if name.startswith(".."):  # outside the root: the bridge refuses it, file by file
                    return None
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        archive = buffer.getvalue()
        return archive if len(archive) <= BRIDGE_WRITE_BYTES else None

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        with _mapped(f"reading {path}"):
            async with self._client.stream("GET", self._file_url(path)) as response:
                if response.status_code == 404:  # workspace_read_not_found
                    return None
                await _checked(response)
                data = bytearray()
                async for chunk in response.aiter_bytes():  # no more than max_bytes taken from a large file
                    data += chunk
                    if len(data) >= max_bytes:
                        break
                return bytes(data[:max_bytes])

    async def kill(self) -> None:
        if not self._killed:
            client = self._client
            self._killed = True
            with _mapped("destroying the sandbox"):
                await _checked(await client.delete(f"/sandbox/{self.id}"))  # 204, with or without a container


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Server-Sent Events (their ``event`` and joined ``data``) from an answer's lines."""
    event, data = "message", list[str]()
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:  # a last event with no blank line after it: the stream was cut, take what came
        yield event, "\n".join(data)
