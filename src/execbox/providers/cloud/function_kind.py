"""What the function-service kinds (aws, gcp, azure) declare alike, for their settings modules (which import
no SDK and nothing of execbox's provider layer: the kinds module imports them)."""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from execbox.providers.cloud.caps import Egress, with_egress

if TYPE_CHECKING:
    from execbox.providers.kinds import Capabilities

MiB = 1024 * 1024
# What execbox's handler enforces on every run (processes, disk and the network are the deployment's own)
HANDLER_LIMITS = frozenset({"wall_time_s", "cpu_time_s", "compile_wall_time_s", "memory_mb", "output_bytes",
                            "file_size_mb", "open_files"})
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def payload_cap(transport_bytes: int) -> int:
    """The code, files and stdin a transport of ``transport_bytes`` surely carries in a HandlerCall: binary
    files go base64-encoded (4/3 as large), less room for the call's JSON. The exact size is checked on the
    encoded call before it is sent."""
    return transport_bytes * 3 // 4 - 64 * 1024


def capabilities(max_wall_time_s: float, transport_bytes: int, isolation: str) -> dict[str, Any]:
    """A function kind's Capabilities fields: whole requests, stdin, env and files through the handler, no
    streaming or sandboxes. The program's egress is the deployment's, not something a call can turn off, so
    network_off is False for the kind (docs/providers-functions.md says how to deploy with none)."""
    return {"stdin": True, "env": True, "files_in": True, "files_out": True, "streaming": False,
            "live_input": False, "persistent": False, "network_off": False, "network_on": True,
            "limits": HANDLER_LIMITS, "max_wall_time_s": max_wall_time_s,
            "max_payload_bytes": payload_cap(transport_bytes), "isolation": isolation}


class FunctionSettings(BaseModel):
    """What every function service's settings have: how the deployment treats the network."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    egress: Egress = "open"
    """The network the deployment gives programs, as the handler's EXECBOX_HANDLER_EGRESS says it: "open"
    (the default deployment: only requests that ask for the network are sent to it) or "none" (deployed
    without egress: only requests that keep the network off are)."""

    def capabilities(self, declared: Capabilities) -> Capabilities:
        """The kind's capabilities with this deployment's network (execbox.providers.kinds.InstanceCapabilities)."""
        return with_egress(declared, self.egress)


def https_or_loopback(url: str) -> str:
    """A handler URL: https (a token goes with each call), or http to this host only (tests, a local one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http(s) URL is needed, e.g. https://execbox-handler-abc123-ew.a.run.app")
    if parts.username is not None:
        raise ValueError("the URL may not hold a user or password")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ValueError("https is needed (a bearer token goes with each call); http only to this host")
    return url.rstrip("/")
