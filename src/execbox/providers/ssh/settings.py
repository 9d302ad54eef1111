"""The ssh provider's settings, importable without asyncssh (forms and listings read them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SshSettings(BaseModel):
    """One SSH host that runs execbox's sandboxes."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    host: str
    """The host's name or address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    """Its SSH port."""
    user: str = "root"
    """The account execbox logs in as (root, or one allowed to run execbox's sandboxes)."""
    known_hosts: str
    """The host's public key(s), as lines of an OpenSSH known_hosts file: pinned, an unknown key is refused."""
    private_key: SecretStr | None = None
    """A private key (OpenSSH or PEM text) to log in with."""
    password: SecretStr | None = None
    """A password to log in with, when no key is given."""
    execbox_command: str = "execbox"
    """The execbox command on the host (installed there by the documented one-line step)."""
    isolation: Literal["sandbox", "none"] = "sandbox"
    """'sandbox': execbox's local provider on the host (refused when the host cannot isolate); 'none': run
    unisolated, only when the operator says so."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds to wait for the connection and login."""
