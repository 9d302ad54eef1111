"""What the cloud providers enforce in common, for their kinds' ``Capabilities``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from execbox.providers.kinds import Capabilities

Egress = Literal["open", "none"]

# A sandbox service's box runs each process under service.command_line: these it enforces inside the box
# (memory, processes and disk are the box's own, set at its creation where the vendor allows: each kind says).
LINE_LIMITS: frozenset[str] = frozenset({"wall_time_s", "cpu_time_s", "compile_wall_time_s", "output_bytes",
                                         "file_size_mb", "open_files"})


def with_egress(declared: Capabilities, egress: Egress) -> Capabilities:
    """A kind's capabilities with the network its deployment gives programs (an ``egress`` setting, the
    operator's word): "open" takes only runs that ask for the network, "none" only runs that keep it off."""
    return declared.model_copy(update={"network_off": egress == "none", "network_on": egress == "open"})
