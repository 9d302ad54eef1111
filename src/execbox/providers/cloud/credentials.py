"""Credentials from the vendors' usual environment variables, as defaults of the settings models (a stored
setting wins; a secret read from the environment is never stored or shown)."""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic import SecretStr


def env_secret(*names: str) -> Callable[[], SecretStr | None]:
    """A default factory: the first of ``names`` set in the environment, as a secret (None: none is)."""
    def read() -> SecretStr | None:
        value = env_value(*names)
        return None if value is None else SecretStr(value)
    return read


def env_text(*names: str, default: str | None = None) -> Callable[[], str | None]:
    """A default factory: the first of ``names`` set in the environment (else ``default``)."""
    def read() -> str | None:
        value = env_value(*names)
        return default if value is None else value
    return read


def env_value(*names: str) -> str | None:
    for name in names:
        if value := os.environ.get(name):
            return value
    return None


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
