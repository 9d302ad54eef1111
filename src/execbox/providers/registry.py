"""Provider name -> lazily imported class. Third parties add theirs through the ``execbox.providers`` entry
point group; nothing here names a provider in code paths (no ``if name == ...`` factory)."""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from execbox.errors import ExecboxError, ProviderUnavailable, RequestError
from execbox.providers.base import Provider

BUILTIN: dict[str, str] = {
    "local": "execbox.providers.local:LocalProvider",
    "mock": "execbox.providers.mock:MockProvider",
    "docker": "execbox.providers.docker:DockerProvider",
}
INSTALL_HINTS: dict[str, str] = {
    "local": "apt-get install bubblewrap libseccomp2 (or run scripts/bootstrap)",
    "docker": "pip install 'execbox[docker]' and apt-get install docker.io (or run scripts/bootstrap)",
}


def available_names() -> dict[str, str]:
    names = dict(BUILTIN)
    for ep in entry_points(group="execbox.providers"):
        names.setdefault(ep.name, ep.value)
    return names


class ProviderRegistry:
    """Creates each provider once, on first use, and hands the same object out afterwards."""

    def __init__(self, default: str | None = None, instances: dict[str, Provider] | None = None) -> None:
        self.default = default or os.environ.get("EXECBOX_DEFAULT_PROVIDER") or "local"
        self._instances: dict[str, Provider] = dict(instances or {})

    def get(self, name: str | None = None) -> Provider:
        name = name or self.default
        if name in self._instances:
            return self._instances[name]
        target = available_names().get(name)
        if target is None:
            raise RequestError(f"unknown provider {name!r}; known: {', '.join(sorted(available_names()))}")
        module, _, cls = target.partition(":")
        try:
            provider: Provider = getattr(importlib.import_module(module), cls)()
        except ImportError as e:
            hint = INSTALL_HINTS.get(name, f"pip install 'execbox[{name}]'")
            raise ProviderUnavailable(f"provider {name!r} cannot be loaded ({e}); install: {hint}") from e
        except ExecboxError:
            raise
        except Exception as e:  # e.g. OSError from a constructor probing the host: mapped at the boundary
            raise ProviderUnavailable(f"provider {name!r} cannot be set up: {e}") from e
        self._instances[name] = provider
        return provider

    def loaded(self) -> dict[str, Provider]:
        """The providers created so far (never creates one)."""
        return dict(self._instances)

    async def aclose(self) -> None:
        for p in self._instances.values():
            await p.aclose()
        self._instances.clear()
