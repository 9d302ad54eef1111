"""The handler's settings, from its environment (what the deploy guide sets on each service)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from execbox.models import Limits
from execbox.providers.cloud.handler.reset import DEFAULT_DIRS, enabled, service_of

MiB = 1024 * 1024
# What each service's own transport takes, request and answer (Lambda's synchronous invoke: 6 MB each way;
# Cloud Run's HTTP/1 requests: 32 MiB; Container Apps documents none: the same as Cloud Run)
TRANSPORT_BYTES = {"lambda": 6 * MiB, "cloud-run": 32 * MiB, "container-apps": 32 * MiB, None: 32 * MiB}
# The longest request each service lets run (Lambda's timeout 900 s, Cloud Run's request timeout 3600 s,
# Container Apps' ingress 240 s), less what the handler needs around the program (start, reset, answer)
SERVICE_WALL_S = {"lambda": 890.0, "cloud-run": 3590.0, "container-apps": 235.0, None: 300.0}

# EXECBOX_HANDLER_MAX_<NAME>: the handler's maxima over the limits a call asks (never raised by a call)
MAXIMA_ENV = {"WALL_S": "wall_time_s", "CPU_S": "cpu_time_s", "COMPILE_S": "compile_wall_time_s",
              "MEMORY_MB": "memory_mb", "PIDS": "pids", "OUTPUT_BYTES": "output_bytes",
              "FILE_SIZE_MB": "file_size_mb", "OPEN_FILES": "open_files", "DISK_MB": "disk_mb"}


class ConfigError(ValueError):
    """An EXECBOX_HANDLER_* variable the handler cannot use."""


@dataclass(frozen=True)
class HandlerConfig:
    service: str | None  # "lambda", "cloud-run", "container-apps": where it runs (None: none of them)
    reset: bool | None  # see reset.enabled
    run_as: tuple[int, int] | None  # the programs' uid and gid, used when the handler is root
    work_root: Path
    scrub_dirs: tuple[Path, ...]
    egress: bool  # the service gives programs the network (EXECBOX_HANDLER_EGRESS=open, the default)
    maxima: Limits
    max_payload_bytes: int
    max_answer_bytes: int
    margin_s: float  # kept from Lambda's remaining time for the reset and the answer
    token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HandlerConfig:
        env = os.environ if env is None else env
        service = service_of(env)

        def number(name: str, default: float) -> float:
            raw = env.get(f"EXECBOX_HANDLER_{name}", "").strip()
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"EXECBOX_HANDLER_{name}={raw!r} is not a number") from None

        egress = env.get("EXECBOX_HANDLER_EGRESS", "open").strip()
        if egress not in ("open", "none"):
            raise ConfigError(f"EXECBOX_HANDLER_EGRESS={egress!r}: 'open' (the service gives programs the "
                              "network) or 'none' (its deploy has no egress)")
        top = Limits(wall_time_s=SERVICE_WALL_S[service], cpu_time_s=SERVICE_WALL_S[service],
                     compile_wall_time_s=SERVICE_WALL_S[service], memory_mb=4096, pids=256,
                     output_bytes=TRANSPORT_BYTES[service] // 4, file_size_mb=1024, disk_mb=2048, open_files=1024)
        values = {field: number(f"MAX_{name}", getattr(top, field)) for name, field in MAXIMA_ENV.items()}
        try:
            maxima = Limits(**{k: v if k.endswith("_s") else int(v) for k, v in values.items()},
                            network=egress == "open")
        except ValueError as e:
            raise ConfigError(f"EXECBOX_HANDLER_MAX_*: {e}") from None
        transport = TRANSPORT_BYTES[service]
        dirs = env.get("EXECBOX_HANDLER_SCRUB_DIRS", ":".join(DEFAULT_DIRS))
        return cls(
            service=service, reset=enabled(env), run_as=_ids(env.get("EXECBOX_HANDLER_RUN_AS", "")),
            work_root=Path(env.get("EXECBOX_HANDLER_WORK_ROOT", "/tmp/execbox-handler")),
            scrub_dirs=tuple(Path(d) for d in dirs.split(":") if d), egress=egress == "open", maxima=maxima,
            max_payload_bytes=int(number("MAX_PAYLOAD_BYTES", transport)),
            max_answer_bytes=int(number("MAX_ANSWER_BYTES", transport)),
            margin_s=number("MARGIN_S", 2.0), token=env.get("EXECBOX_HANDLER_TOKEN") or None)


def _ids(raw: str) -> tuple[int, int] | None:
    """EXECBOX_HANDLER_RUN_AS: "uid" or "uid:gid", the programs' ids when the handler runs as root (a
    container); a handler that is not root (Lambda) cannot give them another uid: they run as its own."""
    if not raw.strip():
        return None
    uid, _, gid = raw.strip().partition(":")
    try:
        ids = int(uid), int(gid or uid)
    except ValueError:
        raise ConfigError(f"EXECBOX_HANDLER_RUN_AS={raw!r}: a uid or uid:gid") from None
    if min(ids) <= 0:
        raise ConfigError("EXECBOX_HANDLER_RUN_AS: the programs never run as root")
    return ids
