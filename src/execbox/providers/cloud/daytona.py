"""Daytona sandboxes as an execbox provider, through the official ``daytona`` SDK's async client.

One Daytona sandbox per execbox instance (``networkBlockAll`` from the instance's network), deleted when the
instance closes and bounded by its TTL meanwhile. Each run is one ``POST /process/execute`` to the sandbox's
toolbox, with the daemon's own timeout. That call answers the exit code and one string with stdout and stderr
merged, so the run line sends both to files and the call's answer carries them back base64-encoded between
per-run markers: the bytes come back exactly and apart, and the run still takes a single request.

Never twice: the generated clients retry nothing unless ``Configuration.retries`` is set (it is not; their
retry client skips POST even then), and the SDK's shared aiohttp session resends a POST only when the TCP
connect failed (``ClientConnectorError``: no byte of it was sent). A run whose answer does not come is an
error here and ``OutcomeUnknown`` in the engine.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import shlex
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    FileUpload,
    Resources,
)
from daytona.common.errors import (
    DaytonaAuthenticationError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaTimeoutError,
)

from execbox.errors import AtCapacity, ProviderUnavailable, SandboxError
from execbox.providers.base import InstanceSpec, Provider
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.daytona_settings import Settings
from execbox.providers.cloud.service import Box, Ran, Service, ServiceProvider

# Daytona's API refuses a sandbox beyond the organization's quota with these words (HTTP 403, 400 before).
_QUOTA_WORDS = ("limit exceeded", "quota exceeded")


def create(settings: Settings | None) -> Provider:
    """The daytona provider (None: the settings' defaults, i.e. DAYTONA_API_KEY and the rest of the environment)."""
    s = settings if settings is not None else Settings()
    if s.api_key is None:
        raise ProviderUnavailable("daytona needs an API key: set DAYTONA_API_KEY (dashboard -> Keys) or the "
                                  "provider's api_key setting")
    return ServiceProvider(DaytonaService(s), s)


def _retry_after(headers: Mapping[str, object]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(str(value)))
            except ValueError:
                return None  # an HTTP date: not worth parsing for a hint
    return None


@contextmanager
def _mapped(doing: str, *, run: bool = False) -> Iterator[None]:
    """The SDK's errors as execbox's, in one place. ``run``: the SDK's timeouts mean the run's time ran out."""
    try:
        yield
    except DaytonaError as e:
        message = f"daytona, {doing}: {e.message}"
        if isinstance(e, DaytonaRateLimitError):
            raise AtCapacity(message, _retry_after(e.headers)) from e
        if e.status_code in (400, 403) and any(w in e.message.lower() for w in _QUOTA_WORDS):
            raise AtCapacity(message + " (the organization's quota: delete sandboxes or raise the tier)") from e
        if isinstance(e, DaytonaAuthenticationError | DaytonaForbiddenError):
            raise ProviderUnavailable(f"{message}: Daytona refused the API key; set a valid DAYTONA_API_KEY "
                                      "(or the provider's api_key) for this api_url") from e
        if run and isinstance(e, DaytonaTimeoutError):
            raise TimeoutError(message) from e
        if isinstance(e, DaytonaConnectionError) and not run:
            raise ProviderUnavailable(f"{message}: Daytona cannot be reached (check api_url / DAYTONA_API_URL "
                                      "and the network)") from e
        if isinstance(e, DaytonaNotFoundError):
            raise SandboxError(f"{message} (the sandbox is gone)") from e
        raise SandboxError(message) from e
    except (aiohttp.ClientError, OSError) as e:  # raised past the SDK's own wrappers (streamed downloads)
        if run and isinstance(e, TimeoutError):
            raise
        raise SandboxError(f"daytona, {doing}: {type(e).__name__}: {e}") from e


class DaytonaService(Service):
    """Creates Daytona sandboxes; one SDK client per event loop (its aiohttp session is bound to one)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: AsyncDaytona | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self) -> AsyncDaytona:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or loop.is_closed():
            s = self.settings
            with _mapped("configuring the client"):
                self._client = AsyncDaytona(DaytonaConfig(api_key=secret(s.api_key), api_url=s.api_url,
                                                          target=s.target))
            self._loop = loop
        return self._client

    def params(self, spec: InstanceSpec) -> CreateSandboxFromSnapshotParams | CreateSandboxFromImageParams:
        s = self.settings
        common = {
            "os_user": s.user, "labels": {"execbox": "1"}, "network_block_all": not spec.network,
            "auto_stop_interval": s.auto_stop_minutes, "auto_delete_interval": s.auto_delete_minutes,
            "ttl_minutes": max(1, math.ceil(s.sandbox_timeout_s / 60)),
        }
        if s.image:
            memory = s.memory_gib or (math.ceil(spec.memory_mb / 1024) if spec.persistent else None)
            resources = Resources(cpu=s.cpu, memory=memory, disk=s.disk_gib)
            return CreateSandboxFromImageParams(image=s.image, resources=resources, **common)
        return CreateSandboxFromSnapshotParams(snapshot=s.snapshot, **common)

    async def create(self, spec: InstanceSpec) -> Box:
        client = self.client()
        try:
            with _mapped("creating a sandbox"):
                sandbox = await client.create(self.params(spec), timeout=self.settings.create_timeout_s)
        except SandboxError as e:
            made = getattr(e.__cause__, "sandbox_id", None)  # set by the SDK on a create that timed out
            if isinstance(e.__cause__, DaytonaTimeoutError) and made:
                await self._delete_late(made)  # made, but not started in time: not left behind
            raise
        box = DaytonaBox(sandbox)
        try:
            with _mapped("reading the sandbox's working directory"):
                box.workdir = await sandbox.get_work_dir()
        except BaseException:
            await box.kill()
            raise
        return box

    async def _delete_late(self, sandbox_id: str) -> None:
        try:
            with _mapped(f"deleting sandbox {sandbox_id}, which did not start in time"):
                await (await self.client().get(sandbox_id)).delete()
        except SandboxError:
            pass  # its TTL (sandbox_timeout_s) still ends it; the creation's own error is the one to report

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated


class DaytonaBox(Box):
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self.sandbox = sandbox
        self.workdir = ""
        self._killed = False

    async def run(self, command: str, timeout_s: float) -> Ran:
        mark = f"execbox-{uuid.uuid4().hex}"
        out, err = f"/tmp/.{mark}.out", f"/tmp/.{mark}.err"
        framed = (f"sh -c {shlex.quote(command)} >{out} 2>{err}; c=$?; echo {mark}; base64 {out}; echo {mark}; "
                  f"base64 {err}; echo {mark}; rm -f {out} {err}; exit $c")
        with _mapped("running a command", run=True):
            # sh -c: whichever shell the daemon uses (or none, splitting the line itself), this line is sh's
            answer = await self.sandbox.process.exec(f"sh -c {shlex.quote(framed)}", timeout=math.ceil(timeout_s))
        if answer.exit_code is None:
            raise SandboxError("daytona answered a run without its exit code")
        parts = answer.result.split(mark)
        try:
            if len(parts) != 4:
                raise ValueError(f"{len(parts) - 1} markers")
            stdout, stderr = (base64.b64decode("".join(p.split()), validate=True) for p in parts[1:3])
        except (ValueError, binascii.Error) as e:
            raise SandboxError(f"daytona's answer to a run is not framed as sent ({e}): "
                               f"{answer.result[:200]!r}") from None
        return Ran(answer.exit_code, stdout, stderr)

    async def write(self, path: str, data: bytes) -> None:
        await self.write_many({path: data})

    async def write_many(self, files: Mapping[str, bytes]) -> None:
        if files:
            with _mapped("uploading files"):
                await self.sandbox.fs.upload_files([FileUpload(data, path) for path, data in files.items()])

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        got = bytearray()
        try:
            with _mapped(f"downloading {path}"):
                stream = await self.sandbox.fs.download_file_stream(path)
                try:
                    async for chunk in stream:
                        got += chunk
                        if len(got) >= max_bytes:
                            break
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]  # an async generator: stop the download
        except SandboxError as e:
            if isinstance(e.__cause__, DaytonaNotFoundError):
                return None
            raise
        return bytes(got[:max_bytes])

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        try:
            with _mapped("deleting the sandbox"):
                await self.sandbox.delete()
        except SandboxError as e:
            if not isinstance(e.__cause__, DaytonaNotFoundError):
                raise
