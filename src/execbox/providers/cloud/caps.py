"""What the cloud providers enforce in common, for their kinds' ``Capabilities``."""

from __future__ import annotations

# A sandbox service's box runs each process under service.command_line: these it enforces inside the box
# (memory, processes and disk are the box's own, set at its creation where the vendor allows: each kind says).
LINE_LIMITS: frozenset[str] = frozenset({"wall_time_s", "cpu_time_s", "compile_wall_time_s", "output_bytes",
                                         "file_size_mb", "open_files"})
