"""Modal sandboxes as an execbox provider, through the official ``modal`` SDK (its async ``.aio`` API).

One execbox instance is one ``modal.Sandbox`` (``Sandbox.create``: the settings' image, ``block_network``
unless the instance has the network, the memory and CPU as hard limits, its lifetime); each process is one
``Sandbox.exec`` of the generic shell line (``service.command_line``); files go through the sandbox's
``filesystem`` API; ``terminate`` ends it.

Never twice. ``Sandbox.exec`` starts the process with the task command router's ``TaskExecStart`` RPC, which
the SDK resends on transient failures (UNAVAILABLE, INTERNAL, a lost connection, a client timeout: up to 10
times; ``call_with_retries_on_transient_errors``), and once more after UNAUTHENTICATED with a fresh JWT. Each
resend carries the same ``exec_id``, which Modal documents as the exec's idempotency key, but execbox does not
rest the rule on a server's deduplication: a grpclib listener on the router's channel sees every request
message before it is sent and refuses a second ``TaskExecStart`` of the same ``exec_id`` of a program (its
headers may have gone, its message never does; Modal's own file tool, also an exec, may be resent: it only
writes or reads a file). The refusal ends the exec call
with ``OutcomeUnknown``: the first attempt may have started the program.

The guard needs two of the SDK's internals (``Sandbox._get_command_router_client``, the router's
``_channel``): an SDK without them is refused (``ProviderUnavailable``) rather than run unguarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shlex
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grpclib.events
import modal
import modal.exception as mx
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2

from execbox.errors import AtCapacity, OutcomeUnknown, ProviderUnavailable, SandboxError
from execbox.providers.base import InstanceSpec, Provider
from execbox.providers.cloud.credentials import secret
from execbox.providers.cloud.modal_settings import Settings
from execbox.providers.cloud.service import Box, Ran, Service, ServiceProvider

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"  # the SDK's file tool, run by exec (sandbox/_filesystem.py)
_PARALLEL_WRITES = 8
_CREDENTIALS_FIX = ("set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (or the provider's token_id/token_secret) to a "
                    "valid Modal API token: `modal token new`, or the dashboard's Settings > API Tokens")


def create(settings: Settings | None = None) -> Provider:
    s = settings or Settings()
    if not s.token_id or not s.token_secret:
        raise ProviderUnavailable(f"modal: no API token: {_CREDENTIALS_FIX}")
    return ModalProvider(ModalService(s), s)


class ModalProvider(ServiceProvider):
    name = "modal"

    async def aclose(self) -> None:
        assert isinstance(self.service, ModalService)
        await self.service.close()


class ExecResendRefused(Exception):
    """The SDK tried to send a program's exec start a second time (raised in its send path, so never sent)."""


@contextlib.contextmanager
def mapped(doing: str, *, after_start: bool = False) -> Iterator[None]:
    """The SDK's errors as execbox's, in one place. ``after_start``: the program may be running."""
    try:
        yield
    except ExecResendRefused as e:
        raise OutcomeUnknown(f"modal: {doing}: the exec start failed after it may have reached Modal; execbox "
                             f"does not resend it ({e})") from None
    except mx.ExecTimeoutError as e:
        raise TimeoutError(f"modal: {doing}: {e}") from None
    except TimeoutError:  # the builtin one (an OSError): a deadline of execbox's own
        raise
    except (mx.AuthError, mx.PermissionDeniedError) as e:
        raise ProviderUnavailable(f"modal refused the credentials ({e}): {_CREDENTIALS_FIX}") from None
    except mx.ResourceExhaustedError as e:
        raise AtCapacity(f"modal: {doing}: at capacity: {e}", retry_after_s=_retry_after(e)) from None
    except (mx.NotFoundError, mx.SandboxTerminatedError, mx.SandboxTimeoutError, mx.ClientClosed) as e:
        raise SandboxError(f"modal: {doing}: the sandbox is gone ({type(e).__name__}: {e})") from None
    except (mx.ConnectionError, OSError) as e:
        if after_start:
            raise SandboxError(f"modal: {doing}: connection lost ({e})") from None
        raise ProviderUnavailable(f"modal: {doing}: cannot reach Modal ({e}); check server_url and the "
                                  "network") from None
    except mx.Error as e:
        raise SandboxError(f"modal: {doing}: {type(e).__name__}: {e}") from None


def _untyped(obj: object) -> Any:
    """The SDK objects whose synchronicity wrappers its stubs leave untyped."""
    return obj


def _retry_after(e: mx.ResourceExhaustedError) -> float | None:
    for detail in getattr(e, "_grpc_details", None) or ():
        if isinstance(detail, api_pb2.RPCRetryPolicy):
            return max(float(detail.retry_after_secs), 0.1)
    return None


class ModalService(Service):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: modal.Client | None = None
        self._app: modal.App | None = None
        self._image = modal.Image.from_registry(settings.image)
        self._lock = asyncio.Lock()

    async def _connected(self) -> tuple[modal.Client, modal.App]:
        """The SDK client and the app, made once (the SDK's own event loop keeps them across callers')."""
        async with self._lock:
            if self._client is None or self._app is None:
                s = self.settings
                url = s.server_url or modal.config.config["server_url"]
                token = (s.token_id or "", secret(s.token_secret) or "")
                client = modal.Client(url, api_pb2.CLIENT_TYPE_CLIENT, token)
                with mapped("connecting"):
                    await _untyped(client).__aenter__()  # opens the channels; nothing is sent yet
                    try:
                        app = await modal.App.lookup.aio(s.app_name, create_if_missing=True, client=client,
                                                         environment_name=s.environment)
                    except BaseException:
                        await client.close.aio()
                        raise
                self._client, self._app = client, app
            return self._client, self._app

    async def create(self, spec: InstanceSpec) -> Box:
        s = self.settings
        client, app = await self._connected()
        memory = spec.memory_mb if spec.persistent else s.memory_mb
        with mapped("creating a sandbox"):
            try:
                async with asyncio.timeout(s.create_timeout_s):
                    sb = await modal.Sandbox.create.aio(
                        app=app, client=client, image=self._image, block_network=not spec.network,
                        cpu=(s.cpu, s.cpu), memory=(memory, memory), timeout=math.ceil(s.sandbox_timeout_s))
            except TimeoutError:
                raise SandboxError(f"modal: no sandbox within {s.create_timeout_s:g}s") from None
        try:
            box = ModalBox(sb, s.workdir)
            await box.guard()
            with mapped("making the workdir"):
                await sb.filesystem.make_directory.aio(s.workdir, create_parents=True)
        except BaseException:
            with contextlib.suppress(Exception):
                await sb.terminate.aio()
            raise
        return box

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._app = self._client, None, None
            with contextlib.suppress(Exception):
                await client.close.aio()


class ModalBox(Box):
    def __init__(self, sandbox: modal.Sandbox, workdir: str) -> None:
        self.sandbox, self.workdir = sandbox, workdir
        self._guarded: object | None = None  # the router client whose channel carries the guard
        self._started: set[str] = set()

    async def guard(self) -> None:
        """Put the never-twice listener on the channel of the sandbox's command router (the SDK opens one per
        sandbox and keeps it until detach; each exec checks that it is still the guarded one)."""
        sb: Any = self.sandbox
        try:
            with mapped("connecting to the sandbox"):
                task_id = await sb._get_task_id.aio()
                router = await sb._get_command_router_client.aio(task_id)
            if router is self._guarded:
                return
            channel = router._channel
        except AttributeError as e:
            raise ProviderUnavailable(f"this modal SDK ({modal.__version__}) lacks what execbox needs to keep its "
                                      f"execs from being resent ({e}): install the tested modal 1.6") from None
        grpclib.events.listen(channel, grpclib.events.SendMessage, self._refuse_resend)
        self._guarded = router

    async def _refuse_resend(self, event: grpclib.events.SendMessage) -> None:
        message = event.message
        if isinstance(message, sr_pb2.TaskExecStartRequest) and message.command_args[:1] != [FS_TOOLS]:
            if message.exec_id in self._started:
                raise ExecResendRefused(f"exec {message.exec_id}")
            self._started.add(message.exec_id)

    async def run(self, command: str, timeout_s: float) -> Ran:
        await self.guard()
        began = time.monotonic()
        with mapped("starting the command"):
            process = await self.sandbox.exec.aio("/bin/sh", "-c", command, text=False,
                                                   timeout=math.ceil(timeout_s))
        with mapped("running the command", after_start=True):
            async with asyncio.timeout(timeout_s + 10):  # the SDK's deadline first; this if it hangs
                stdout, stderr, code = await asyncio.gather(
                    process.stdout.read.aio(), process.stderr.read.aio(), process.wait.aio())
        # Modal ends the exec at its timeout (whole seconds): the SDK's wait answers -1 when its own deadline
        # came first, else the kill's signal (128+N); either way past timeout_s is the service giving up.
        if code == -1 or (code > 128 and time.monotonic() - began >= timeout_s):
            raise TimeoutError(f"modal: the command ran past {timeout_s:g}s")
        return Ran(code, bytes(stdout), bytes(stderr))

    async def write(self, path: str, data: bytes) -> None:
        with mapped(f"writing {path}", after_start=True):
            await self.sandbox.filesystem.write_bytes.aio(data, path)

    async def write_many(self, files: Mapping[str, bytes]) -> None:
        slots = asyncio.Semaphore(_PARALLEL_WRITES)  # each write is an exec of Modal's file tool

        async def one(path: str, data: bytes) -> None:
            async with slots:
                await self.write(path, data)
        results = await asyncio.gather(*(one(p, d) for p, d in files.items()), return_exceptions=True)
        if failed := next((r for r in results if isinstance(r, BaseException)), None):
            raise failed

    async def read(self, path: str, max_bytes: int) -> bytes | None:
        with mapped(f"reading {path}", after_start=True):
            try:
                data = await self.sandbox.filesystem.read_bytes.aio(path)
            except (mx.SandboxFilesystemNotFoundError, mx.SandboxFilesystemIsADirectoryError):
                return None
            except mx.SandboxFilesystemFileTooLargeError:  # beyond the file tool's limit: its head only
                ran = await self.run(f"head -c {max_bytes} -- {shlex.quote(path)}", 120)
                if ran.exit_code != 0:
                    raise SandboxError(f"modal: reading {path}: {ran.stderr.decode(errors='replace')}") from None
                return ran.stdout
        return bytes(data[:max_bytes])

    async def kill(self) -> None:
        with contextlib.suppress(mx.Error, OSError):
            await self.sandbox.terminate.aio()
        with contextlib.suppress(mx.Error, OSError):
            await _untyped(self.sandbox).detach.aio()  # closes the router's channel
