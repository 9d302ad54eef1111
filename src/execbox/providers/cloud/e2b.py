"""E2B sandboxes through the official ``e2b`` SDK (its async API): the service layer's Box on one E2B sandbox.

What the SDK does that this module relies on or works around:

- ``AsyncSandbox.create`` is ``POST /v2/sandboxes``; ``allow_internet_access`` is the network switch and
  ``timeout`` the sandbox's lifetime. Its REST calls retry 429/502/503/504 (sleeping the Retry-After); the
  create here is sent with ``retries=0`` so a refusal reaches the router at once (the SDK's exception does
  not carry the Retry-After, so none is given). ``debug=False`` is explicit: with E2B_DEBUG=true the SDK
  would skip the API and talk to localhost.
- ``commands.run`` is envd's ``process.Process/Start`` (a Connect server stream) of ``/bin/bash -l -c
  LINE``. Its transport retries only failures to connect, before the request is written, so an exec is
  never sent twice; a connection lost afterwards surfaces as an error (OutcomeUnknown in the engine).
- A non-zero exit is an exception (``CommandExitException``) carrying the result; a process killed by a
  signal ends with exit code -1 and Go's ``signal: <name>`` as its error; output arrives decoded as UTF-8
  (undecodable bytes replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import math
import shlex
import signal
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from connectrpc.errors import ConnectError
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
    TimeoutException,
)

from execbox.errors import AtCapacity, ExecboxError, ProviderUnavailable, SandboxError
from execbox.providers.base import InstanceSpec, Provider
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.e2b_settings import Settings
from execbox.providers.cloud.service import Box, Ran, Service, ServiceProvider

KEY_FIX = ("set E2B_API_KEY (or the e2b provider's api_key) to a key from "
           "https://e2b.dev/dashboard?tab=keys")
# Before 2.60 the SDK also retried network errors after a request was sent (for the calls it deemed
# replayable): the never-twice rule needs the later policy (tested with 2.63).
SDK_FLOOR = (2, 60)
KILL_RETRIES = 3
STOP_GRACE_S = 5  # the SDK's own deadline on a run, past execbox's: execbox's clock decides, the SDK's backs it
_SIGNALS = {(signal.strsignal(s) or s.name).lower(): int(s) for s in signal.Signals}


def create(settings: Settings | None = None) -> Provider:
    s = settings or Settings()
    version = importlib.metadata.version("e2b")
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < SDK_FLOOR:
        raise ProviderUnavailable(f"the e2b provider needs e2b>={'.'.join(map(str, SDK_FLOOR))} (found {version}): "
                                  "pip install -U 'execbox[e2b]'")
    if s.api_key is None:
        raise ProviderUnavailable(f"the e2b provider has no API key: {KEY_FIX}")
    return ServiceProvider(E2bService(s), s)


@contextlib.contextmanager
def _mapped(doing: str, unreachable: type[SandboxError] = SandboxError) -> Iterator[None]:
    """The SDK's errors as execbox's (the one place they are mapped). ``unreachable``: the error for a
    service that could not be reached (ProviderUnavailable before a sandbox exists)."""
    try:
        yield
    except (ExecboxError, TimeoutError):  # execbox's own clock (a run's deadline) and errors pass through
        raise
    except AuthenticationException as e:
        raise ProviderUnavailable(f"E2B refused the API key while {doing} ({e}): {KEY_FIX}") from e
    except (RateLimitException, ServiceBusyException) as e:
        raise AtCapacity(f"E2B has no room while {doing} ({e}); try again later") from e
    except (SandboxNotRunningException, NotFoundException) as e:
        raise SandboxError(f"the E2B sandbox is gone (killed or past its timeout) while {doing}: {e}") from e
    except (httpx.TransportError, ConnectError, OSError, SandboxUnreachableException) as e:
        raise unreachable(f"E2B could not be reached while {doing}: {e}") from e
    except TimeoutException as e:  # the SDK's request timeouts, and a sandbox it cannot reach
        raise unreachable(f"E2B did not answer while {doing}: {e}") from e
    except SandboxException as e:
        raise SandboxError(f"E2B failed while {doing}: {e}") from e
    except Exception as e:  # the SDK raises bare Exceptions too ("Command ended without an end event")
        raise SandboxError(f"E2B failed while {doing}: {type(e).__name__}: {e}") from e


class E2bService(Service):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every call of a sandbox carries these (the SDK keeps them in the sandbox's connection config).
        self.connection: dict[str, Any] = {
            "api_key": secret(settings.api_key), "domain": settings.domain, "api_url": settings.api_url,
            "sandbox_url": settings.sandbox_url, "debug": False, "request_timeout": settings.create_timeout_s}

    async def create(self, spec: InstanceSpec) -> Box:
        s = self.settings
        with _mapped("creating a sandbox", ProviderUnavailable):
            sandbox = await AsyncSandbox.create(
                template=s.template, timeout=math.ceil(s.sandbox_timeout_s), allow_internet_access=spec.network,
                metadata={"created-by": "execbox"}, retries=0, **self.connection)
        box = E2bBox(sandbox, s.workdir)
        try:
            with _mapped("making the sandbox's work directory"):
                await sandbox.files.make_dir(s.workdir)
        except BaseException:
            with contextlib.suppress(Exception):  # the first failure is the one to report
                await box.kill()
            raise
        return box


class E2bBox(Box):
    def __init__(self, sandbox: AsyncSandbox, workdir: str) -> None:
        self.sandbox, self.workdir = sandbox, workdir
        self._killed = False

    async def run(self, command: str, timeout_s: float) -> Ran:
        with _mapped("running a command"):
            # background: the handle is what can stop it when execbox's deadline passes first.
            # envd runs it with bash, whose `ulimit -f` counts KiB, not sh's 512-byte blocks: the line is sh's
            handle = await self.sandbox.commands.run(f"exec /bin/sh -c {shlex.quote(command)}", background=True,
                                                     timeout=timeout_s + STOP_GRACE_S)
        try:
            with _mapped("running a command"):
                try:
                    result: Any = await asyncio.wait_for(handle.wait(), timeout_s)
                except CommandExitException as e:
                    result = e
        except TimeoutError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.kill(), 10)
            with contextlib.suppress(Exception):
                await handle.disconnect()
            raise
        return Ran(_exit_code(result.exit_code, result.error), (result.stdout or "").encode(),
                   (result.stderr or "").encode())

    async def write(self, path: str, data: bytes) -> None:
        with _mapped(f"writing {path}"):
            await self.sandbox.files.write(path, data)

    async def write_many(self, files: Mapping[str, bytes]) -> None:
        if files:
            with _mapped(f"writing {len(files)} files"):  # one multipart upload
                await self.sandbox.files.write_files([{"path": p, "data": d} for p, d in files.items()])

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        with _mapped(f"reading {path}"):
            try:
                stream = await self.sandbox.files.read(path, format="stream")
            except (FileNotFoundException, InvalidArgumentException):  # none there, or a directory
                return None
            data = bytearray()
            async with stream:  # streamed: no more than max_bytes is taken from a large file
                async for chunk in stream:
                    data += chunk
                    if len(data) >= max_bytes:
                        break
            return bytes(data[:max_bytes])

    async def kill(self) -> None:
        if not self._killed:
            self._killed = True
            with _mapped("destroying the sandbox"):
                # A kill is safe to repeat: the SDK's own retries of a busy API (off for the create) are on.
                await self.sandbox.kill(retries=KILL_RETRIES)  # False (not found) is fine: it is gone


def _exit_code(code: int, error: str | None) -> int:
    """envd's end as a shell's exit status: a signal's end (-1, ``signal: killed``) is 128+N."""
    if code >= 0:
        return code
    name = (error or "").removeprefix("signal: ").removesuffix(" (core dumped)").strip().lower()
    if name in _SIGNALS:
        return 128 + _SIGNALS[name]
    raise SandboxError(f"the E2B sandbox ended the command without an exit status: {error or code}")
