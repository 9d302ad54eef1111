"""The ssh provider's settings, importable without asyncssh (forms and listings read them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class SshSettings(BaseModel):
    """One SSH host that runs execbox's sandboxes."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    host: str
    """The host's name or address."""
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    """Its SSH port."""
    user: str = "root"
    """The account execbox logs in as (root: execbox's sandboxes there need a uid per run and cgroups)."""
    known_hosts: str
    """The host's public key(s), as lines of an OpenSSH known_hosts file (``ssh-keyscan -p PORT HOST``, checked
    out of band): pinned, an unknown or changed key is refused."""
    private_key: SecretStr | None = None
    """A private key (OpenSSH or PEM text, unencrypted) to log in with."""
    password: SecretStr | None = None
    """A password to log in with, when no key is given."""
    execbox_command: str = "execbox"
    """The execbox command on the host (installed there by the documented one-line step), as a shell command
    line: `agent` and its options are appended."""
    isolation: Literal["sandbox", "none"] = "sandbox"
    """'sandbox': execbox's local provider on the host (refused when the host cannot isolate); 'none':
    unisolated runs (not supported yet: refused)."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    """Seconds to wait for the connection and login."""
    agent_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    """Seconds the execbox agent on the host has to start and answer (its first start builds helpers)."""
    first_uid: Annotated[int, Field(ge=1000, le=4_000_000_000)] | None = None
    """The first of the host's uids for sandboxes (default: the local provider's range there)."""
    uid_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """How many uids from ``first_uid`` (one per live sandbox on the host)."""
    runtime_dir: str | None = None
    """The local provider's runtime dir on the host (default: /run/execbox)."""
    heartbeat_s: Annotated[float, Field(ge=0.1, le=300)] = 15.0
    """Seconds between heartbeats on the connection: the agent closes every sandbox and exits after
    ``HEARTBEATS_MISSED`` (4) in a row are missed (a network gone silent), and the near side finds the host
    gone as soon."""
    exec_grace_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """Seconds allowed on top of a run's wall time for its answer; after them the run's outcome is unknown."""

    @model_validator(mode="after")
    def _credentials(self) -> SshSettings:
        if self.private_key is None and self.password is None:
            raise ValueError("give private_key or password")
        if not self.known_hosts.strip():
            raise ValueError("known_hosts is empty: pin the host's key (ssh-keyscan -p PORT HOST)")
        return self
