"""Named provider instances: each one a kind with its own settings (``ssh-gpu1`` and ``ssh-gpu2`` are two
instances of ``ssh``), created on first use and handed out afterwards. Kinds that need no settings (local,
docker, mock) also have an implicit instance named after the kind.

Instances can be changed at runtime (``configure``, ``remove``): the next request gets the new provider,
while a replaced one keeps serving the sandboxes it started until they end (it is closed with the registry).
Nothing here names a provider in code paths (no ``if name == ...`` factory): kinds are data (kinds.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from execbox.errors import ExecboxError, ProviderUnavailable, RequestError
from execbox.providers.base import Provider
from execbox.providers.kinds import Capabilities, InstanceCapabilities, ProviderKind, kinds

INSTANCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class InstanceConfig:
    """One named instance: its kind and its validated settings (None: the kind's defaults)."""

    name: str
    kind: str
    settings: BaseModel | None = None


def parse_instance(name: str, kind_name: str, settings: Mapping[str, Any] | None,
                   known: Mapping[str, ProviderKind] | None = None) -> InstanceConfig:
    """An InstanceConfig from plain data (a TOML table, an admin request); RequestError naming what is wrong
    (the name, the kind, or the first bad settings field)."""
    if not INSTANCE_NAME.fullmatch(name):
        raise RequestError(f"provider name {name!r}: 1-63 lowercase letters, digits, '-' or '_'")
    known = kinds() if known is None else known
    kind = known.get(kind_name)
    if kind is None:
        raise RequestError(f"unknown provider kind {kind_name!r}; known: {', '.join(sorted(known))}")
    try:
        model = kind.settings.model_validate(dict(settings or {}))
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "settings"
        raise RequestError(f"provider {name!r} ({kind_name}): {where}: {first['msg']}") from None
    return InstanceConfig(name, kind_name, model)


class ProviderRegistry:
    """Provider instances by name, each created once on first use."""

    def __init__(self, default: str | None = None, instances: Mapping[str, Provider] | None = None,
                 configs: Mapping[str, InstanceConfig] | None = None) -> None:
        self.default = default or os.environ.get("EXECBOX_DEFAULT_PROVIDER") or "local"
        self.kinds = kinds()
        self._configs: dict[str, InstanceConfig] = dict(configs or {})
        self._instances: dict[str, Provider] = {}
        self._retired: list[Provider] = []  # replaced at runtime: closed with the registry
        for name, provider in (instances or {}).items():  # made in code (tests, embedders): a kind of their own
            provider.name = name
            self._instances[name] = provider
            self.kinds.setdefault(f"given:{name}", ProviderKind(
                f"given:{name}", f"{type(provider).__name__}, given in code", "", capabilities=Capabilities(
                    streaming=True, live_input=True, persistent=True, isolation="none")))
            self._configs[name] = InstanceConfig(name, f"given:{name}")

    # --- what exists
    def names(self) -> list[str]:
        """Every instance a request may name: the configured ones and the implicit one of each kind that
        needs no settings or finds its settings in the environment (a cloud SDK's credentials)."""
        implicit = {k.name for k in self.kinds.values() if k.auto}
        return sorted(implicit | self._configs.keys())

    def config(self, name: str) -> InstanceConfig:
        if name in self._configs:
            return self._configs[name]
        kind = self.kinds.get(name)
        if kind is not None and kind.auto:
            return InstanceConfig(name, name)
        raise RequestError(f"unknown provider {name!r}; known: {', '.join(self.names())}")

    def kind_of(self, name: str) -> ProviderKind:
        return self.kinds[self.config(name).kind]

    def capabilities(self, name: str) -> Capabilities:
        """What ``name`` can honour: its kind's declaration, as its settings change it (InstanceCapabilities),
        narrowed by what a created instance found on its host (a local provider without root or cgroups keeps
        no sandboxes)."""
        caps = self.kind_of(name).capabilities
        if isinstance(settings := self.config(name).settings, InstanceCapabilities):
            caps = settings.capabilities(caps)
        loaded = self._instances.get(name)
        if loaded is not None and not loaded.supports_persistent:
            caps = caps.model_copy(update={"persistent": False, "live_input": False})
        return caps

    def unavailable(self, name: str) -> str | None:
        """Why ``name`` cannot be loaded here, with the fix (None: it can, as far as can be told unloaded)."""
        return self.kind_of(name).missing()

    # --- instances
    def get(self, name: str | None = None) -> Provider:
        """The instance ``name`` (default: the default one), created on first use. RequestError for an
        unknown name; ProviderUnavailable when it cannot be created here (missing dependency, host)."""
        name = name or self.default
        if name in self._instances:
            return self._instances[name]
        config = self.config(name)
        kind = self.kinds[config.kind]
        if why := kind.missing():
            raise ProviderUnavailable(f"provider {name!r} ({kind.name}) is unavailable: {why}")
        try:
            provider = kind.create(config.settings)
        except ImportError as e:
            raise ProviderUnavailable(f"provider {name!r} cannot be loaded ({e}); install: "
                                      f"{kind.install_line}") from e
        except ExecboxError:
            raise
        except Exception as e:  # e.g. OSError from a constructor probing the host: mapped at the boundary
            raise ProviderUnavailable(f"provider {name!r} cannot be set up: {e}") from e
        provider.name = name  # results and metrics name the instance, not the kind
        self._instances[name] = provider
        return provider

    def loaded(self) -> dict[str, Provider]:
        """The providers created so far (never creates one)."""
        return dict(self._instances)

    def configure(self, config: InstanceConfig) -> None:
        """Add or replace an instance; the next ``get`` creates it anew. A replaced provider keeps serving
        what it started (sandboxes) and is closed with the registry."""
        self._configs[config.name] = config
        self._retire(config.name)

    def remove(self, name: str) -> bool:
        """Forget a configured instance (an implicit one stays); False when there was none."""
        found = self._configs.pop(name, None) is not None
        self._retire(name)
        return found

    def _retire(self, name: str) -> None:
        if (old := self._instances.pop(name, None)) is not None:
            self._retired.append(old)

    async def aclose(self) -> None:
        for p in [*self._instances.values(), *self._retired]:
            await p.aclose()
        self._instances.clear()
        self._retired.clear()


def available_names() -> dict[str, str]:
    """Kind name -> where its implementation lives (every kind, loadable here or not)."""
    return {name: kind.factory for name, kind in kinds().items()}
