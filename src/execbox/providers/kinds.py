"""Provider *kinds* (local, docker, ssh, remote, mock, and third parties') apart from named *instances*.

A kind is data: its settings model (whose JSON schema drives forms; secrets as ``SecretStr``), what it can
honour (``Capabilities``), and where its implementation lives, imported only when an instance is first
used. So listing kinds never imports an optional dependency: a kind whose dependency is missing is listed as
unavailable with the exact install line.

Third-party kinds come through the ``execbox.providers`` entry-point group, each pointing to a
``ProviderKind`` (or, the older form, to a ``Provider`` subclass that takes no settings).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, SecretStr

from execbox.models import ExecutionRequest, ExecutionResult, Limits
from execbox.providers.cloud import (
    aliyun_settings,
    aws_settings,
    azure_settings,
    cloudflare_settings,
    daytona_settings,
    e2b_settings,
    gcp_settings,
    modal_settings,
)
from execbox.providers.docker.provider import DockerSettings
from execbox.providers.local.provider import LocalSettings
from execbox.providers.remote_settings import RemoteSettings
from execbox.providers.ssh.settings import SshSettings

if TYPE_CHECKING:
    from execbox.providers.base import Provider

Isolation = Literal["none", "process", "namespaces", "container", "microvm", "remote"]
ALL_LIMITS: frozenset[str] = frozenset(Limits.model_fields) - {"network"}


class Capabilities(BaseModel):
    """What a provider can honour. A request is routed only to providers that can: one that cannot enforce a
    limit the request sets is never chosen in a chain, and refuses when pinned."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    stdin: bool = True
    """The run step reads the request's stdin."""
    env: bool = True
    """Environment variables reach the program."""
    files_in: bool = True
    """Files beside the entry file."""
    files_out: bool = True
    """Files read back after a run (main()'s return value, a sandbox's files)."""
    streaming: bool = False
    """Output arrives as it is written (sandbox streams)."""
    live_input: bool = False
    """stdin and signals while the program runs (interactive runs)."""
    persistent: bool = False
    """Sandboxes that live across many executions."""
    network_off: bool = True
    """It can cut the program off the network (execbox's default)."""
    network_on: bool = True
    """It can give the program the network when the request asks and the policy allows."""
    limits: frozenset[str] = ALL_LIMITS
    """The ``Limits`` fields it enforces."""
    max_wall_time_s: float | None = None
    """The longest run it allows (None: the operator's maxima only)."""
    max_payload_bytes: int | None = None
    """The largest request (code, files and stdin together) it takes."""
    isolation: Isolation = "namespaces"
    """How the program is kept from the host: none, a process with rlimits, kernel namespaces, a container,
    a micro-VM, or another execbox server's choice."""

    def unfit(self, limits: Limits, asked: Iterable[str] = (), request: ExecutionRequest | None = None, *,
              live: bool = False, persistent: bool = False) -> str | None:
        """Why this provider cannot honour a run under ``limits`` (None: it can): ``asked`` are the limits the
        caller set itself (the operator's defaults for the others are applied as well as it can);
        ``request`` the execution's own needs (stdin, env, files), when it is one."""
        if missing := sorted((set(asked) - {"network"}) - self.limits):
            return f"it cannot enforce {', '.join(missing)}"
        if limits.network and not self.network_on:
            return "it cannot give programs the network"
        if not limits.network and not self.network_off:
            return "it cannot cut programs off the network"
        needs = {"live_input": live, "persistent": persistent}
        if request is not None:
            needs |= {"stdin": bool(request.stdin), "env": bool(request.env), "files_in": bool(request.files),
                      "files_out": request.arguments is not None}
        if lacking := [_CANNOT[name] for name, needed in needs.items() if needed and not getattr(self, name)]:
            return f"it cannot {' or '.join(lacking)}"
        if self.max_wall_time_s is not None and limits.wall_time_s > self.max_wall_time_s:
            return f"its longest run is {self.max_wall_time_s:g} s (asked {limits.wall_time_s:g} s)"
        if (self.max_payload_bytes is not None and request is not None
                and (size := payload_bytes(request)) > self.max_payload_bytes):
            return f"it takes at most {self.max_payload_bytes} bytes of code, files and stdin ({size} given)"
        return None


_CANNOT = {"live_input": "run interactively", "persistent": "keep sandboxes", "stdin": "pass stdin",
           "env": "pass environment variables", "files_in": "take extra files",
           "files_out": "read files back (main()'s return value)"}


def payload_bytes(request: ExecutionRequest) -> int:
    stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
    return len((request.code or "").encode()) + sum(len(f.data()) for f in request.files) + len(stdin)


class NoSettings(BaseModel):
    """A kind with nothing to set."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class ProviderKind:
    """One kind of provider, as data. ``factory`` ("module:callable") takes a validated ``settings`` model
    and returns the Provider; it is imported on first use. ``requires``: modules it needs (checked without
    importing them), missing ones make the kind unavailable with ``install`` as the fix."""

    name: str
    summary: str
    factory: str
    settings: type[BaseModel] = NoSettings
    capabilities: Capabilities = field(default_factory=Capabilities)
    requires: tuple[str, ...] = ()
    install: str | None = None
    # An instance named after the kind exists without being configured (its settings' defaults are usable).
    implicit: bool = True
    takes_settings: bool = True  # False: the factory is called without arguments (a plain Provider class)
    broken: str | None = None  # a third-party kind that failed to load: why, and the fix
    # Environment variables that configure it, as alternatives (all of one group set): when one group is
    # there, an instance named after the kind exists unconfigured, as cloud SDKs detect their credentials.
    detect: tuple[tuple[str, ...], ...] = ()

    def detected(self) -> tuple[str, ...] | None:
        """The group of ``detect`` set in this environment (None: none is)."""
        return next((group for group in self.detect if all(os.environ.get(v) for v in group)), None)

    @property
    def auto(self) -> bool:
        """An instance named after the kind exists without being configured."""
        return self.implicit or self.detected() is not None

    def missing(self) -> str | None:
        """Why the kind cannot be loaded here, with the fix (None: it can)."""
        if self.broken is not None:
            return self.broken
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        return f"needs {', '.join(absent)}: {self.install_line}"

    @property
    def install_line(self) -> str:
        return self.install or f"pip install 'execbox[{self.name}]'"

    def create(self, settings: BaseModel | None) -> Provider:
        """A provider of this kind (imports its implementation); ``settings`` None: the kind's defaults (and
        its environment variables, for the kinds that read some)."""
        module, _, attr = self.factory.partition(":")
        factory: Callable[..., Provider] = getattr(importlib.import_module(module), attr)
        return factory(settings) if self.takes_settings else factory()

    def schema(self) -> dict[str, Any]:
        return self.settings.model_json_schema()


@runtime_checkable
class RequestRunner(Protocol):
    """A provider that takes whole requests rather than processes (another execbox server, a function
    service running execbox's handler). It raises ``OutcomeUnknown`` whenever the code may have run (the
    request was sent and no answer came); any other error means the code was not handed over."""

    async def run_request(self, request: ExecutionRequest, limits: Limits, execution_id: str) -> ExecutionResult:
        """Run ``request`` (its provider fields unset) under ``limits``; the result as the far side gave it."""


@runtime_checkable
class InstanceCapabilities(Protocol):
    """Settings that change what their instance can honour: a function service whose deployment has no
    egress (the operator's word: ``egress: none``) can keep programs off the network, one with egress cannot."""

    def capabilities(self, declared: Capabilities) -> Capabilities:
        """The instance's capabilities, from its kind's ``declared`` ones."""


def secret_fields(model: type[BaseModel]) -> set[str]:
    """The settings fields that hold secrets (never returned, encrypted at rest)."""
    return {name for name, f in model.model_fields.items() if f.annotation in (SecretStr, SecretStr | None)}


BUILTIN_KINDS: tuple[ProviderKind, ...] = (
    ProviderKind(
        "local", "bubblewrap, cgroups and seccomp on this host, a uid per run (no daemon)",
        "execbox.providers.local:LocalProvider", settings=LocalSettings, capabilities=Capabilities(
            streaming=True, live_input=True, persistent=True, isolation="namespaces"),
        install="apt-get install bubblewrap libseccomp2 (or run scripts/bootstrap)"),
    ProviderKind(
        "docker", "hardened containers from execbox's images through a warm pool",
        "execbox.providers.docker:DockerProvider", settings=DockerSettings, capabilities=Capabilities(
            streaming=True, live_input=True, persistent=True, isolation="container"),
        requires=("docker",), install="pip install 'execbox[docker]' and apt-get install docker.io "
                                      "(or run scripts/bootstrap)"),
    ProviderKind(
        "ssh", "execbox's sandboxes on another Linux host over SSH (host keys pinned)",
        "execbox.providers.ssh.provider:SshProvider", settings=SshSettings, capabilities=Capabilities(
            streaming=True, persistent=True, isolation="namespaces"),
        requires=("asyncssh",), install="pip install 'execbox[ssh]'", implicit=False),
    ProviderKind(
        "remote", "another execbox server (its own providers, limits and fallback)",
        "execbox.providers.remote:RemoteProvider", settings=RemoteSettings, capabilities=Capabilities(
            streaming=True, persistent=True, isolation="remote"), implicit=False),
    ProviderKind(
        "mock", "runs nothing: echoes what it was asked to run (for tests)", "execbox.providers.mock:from_settings",
        capabilities=Capabilities(streaming=True, persistent=True, isolation="none")),
)


def _cloud_kind(module: ModuleType) -> ProviderKind:
    """A cloud kind from its settings module: ``Settings`` and ``KIND``, the rest of the kind as data."""
    data = dict(module.KIND)
    caps = Capabilities(**data.pop("capabilities"))
    return ProviderKind(**data, settings=module.Settings, capabilities=caps, implicit=False)


# Cloud services: each vendor's settings module holds its kind as data (no SDK imported to list them).
CLOUD_KINDS: tuple[ProviderKind, ...] = tuple(_cloud_kind(m) for m in (
    e2b_settings, modal_settings, daytona_settings, cloudflare_settings, aliyun_settings,
    aws_settings, gcp_settings, azure_settings))


def kinds() -> dict[str, ProviderKind]:
    """Every kind: the builtin ones, the cloud services', then third parties' (an entry point never replaces
    one of execbox's)."""
    out = {k.name: k for k in (*BUILTIN_KINDS, *CLOUD_KINDS)}
    for ep in entry_points(group="execbox.providers"):
        if ep.name not in out:
            out[ep.name] = _entry_point_kind(ep.name, ep.value)
    return out


def _entry_point_kind(name: str, target: str) -> ProviderKind:
    """A kind from an entry point: a ProviderKind object, or a Provider class (taken without settings)."""
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        root = (e.name or module).split(".")[0]
        return ProviderKind(name, f"third-party provider from {target}", target, broken=(
            f"needs {root}: pip install 'execbox[{name}]' (or the package that provides {root})"))
    except Exception as e:  # a broken plugin is listed as such, never takes the registry down
        return ProviderKind(name, f"third-party provider from {target}", target,
                            broken=f"{target} fails to import ({type(e).__name__}: {e}): fix or remove it")
    if isinstance(obj, ProviderKind):
        return obj
    doc = (obj.__doc__ or target).strip().splitlines()[0]
    # a class that declares nothing is taken at its weakest: no limit it is known to enforce, no isolation
    declared = getattr(obj, "capabilities", None)
    caps = declared if isinstance(declared, Capabilities) else Capabilities(limits=frozenset(), isolation="none")
    return ProviderKind(name, doc, target, capabilities=caps, takes_settings=False)
