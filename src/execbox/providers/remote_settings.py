"""The remote provider's settings (another execbox server)."""

from __future__ import annotations

import urllib.parse
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class RemoteSettings(BaseModel):
    """Another execbox server that runs what this one sends it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    url: str
    """The server's base URL, e.g. http://10.0.0.7:8002."""
    api_key: SecretStr | None = None
    """An API key of that server."""
    provider: str | None = None
    """The provider to ask for there (default: that server's default)."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    """Seconds to wait for a connection."""
    extra_time_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """Seconds allowed on top of a run's own time limits for the answer (queueing, compiling, the network)."""
    sandbox_ttl_s: Annotated[float, Field(gt=0, le=365 * 86400)] = 3600.0
    """Idle seconds asked for each persistent sandbox there (that server caps it by its sandbox_max_ttl_s):
    this server destroys its sandboxes itself; the TTL only bounds what it leaves behind if it dies."""

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        """A URL is shown in errors and listings: a password in it would be shown too (use ``api_key``)."""
        if urllib.parse.urlsplit(v).username is not None:
            raise ValueError("the URL may not hold a user or password (give the server's key as api_key)")
        return v
