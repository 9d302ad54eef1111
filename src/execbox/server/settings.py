"""The service's settings: environment variables (prefix ``EXECBOX_``, ``__`` for nesting) over an optional
TOML file (``EXECBOX_CONFIG``) over these defaults.

    EXECBOX_PORT=9000 EXECBOX_MAXIMA__WALL_TIME_S=30 EXECBOX_API_KEY=k1,k2 execbox serve
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from execbox.models import Limits, Policy
from execbox.routing import RoutingSettings

# The library's maxima, with output kept per stream lowered: a response carries it (twice: `output` and
# `stdout`), and a server answers many at once.
SERVER_MAXIMA = Policy().maxima.model_copy(update={"output_bytes": 8 * 1024 * 1024})


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "execbox"


class ServerSettings(BaseSettings):
    """Everything an operator sets. Each field is also ``EXECBOX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="EXECBOX_", env_nested_delimiter="__", extra="forbid",
                                      frozen=True)

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(8002, description="Port to listen on.")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Where the SQLite store and the dev API key live.")
    api_key: str = Field("", description="API keys that always work, comma-separated (EXECBOX_API_KEY).")
    dev_key: bool = Field(True, description="Create a random dev key in data_dir/dev-api-key on first start and "
                          "accept it (print it at start). Turn off in production and use `execbox keys`.")
    secret_key: SecretStr | None = Field(
        None, description="The key that encrypts provider secrets in the store (32+ characters); none: one is "
        "generated once into data_dir/secret.key (0600).")
    default_provider: str = Field("local", description="Provider used when a request names none. This and "
                                  "providers, fallback_chain and routing seed the store on the first start; "
                                  "afterwards the store is the source (the admin API, `execbox config set`).")
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named provider instances: name -> {kind = 'ssh', ...that kind's "
        "settings} (TOML tables [providers.NAME], or JSON in EXECBOX_PROVIDERS). The kinds that need no settings "
        "(local, docker) have an instance of their own name without this.")
    fallback_chain: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Providers tried after the default, in order, when it fails before the "
        "code is handed to it: EXECBOX_FALLBACK_CHAIN=docker,ssh-gpu1 (a request's `fallback` replaces it).")
    routing: RoutingSettings = Field(default_factory=RoutingSettings,
                                     description="Circuit breakers and the retry before dispatch.")
    max_concurrency: Annotated[int, Field(ge=1, le=1024)] = Field(
        default_factory=lambda: 2 * (os.cpu_count() or 1), description="Executions running at once.")
    queue_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        60, description="Longest a request waits for an execution slot; then 503 with Retry-After. This admits "
                        "a burst: it waits in line as long as the server may clear it in time.")
    max_queue: Annotated[int, Field(ge=0, le=100_000)] = Field(
        10_000, description="Requests waiting for a slot at once; beyond it: 503 with Retry-After at once. Only a "
                            "bound on the memory waiting requests hold (each its connection and body: ~30 KiB "
                            "for a small one), far above what a server clears within queue_timeout_s.")
    max_pending_jobs: Annotated[int, Field(ge=1)] = Field(
        10_000, description="Async jobs queued at once; beyond it: 503 with Retry-After.")
    max_pending_jobs_per_key: Annotated[int, Field(ge=1)] = Field(
        1_000, description="Async jobs one key may have queued or running at once; beyond it: 429.")
    max_job_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Times a job is begun again after servers died running it; then it fails as an internal "
                       "error (a job that kills its server must not kill every restart).")
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = Field(64, description="Requests in one batch.")
    batch_output_bytes: Annotated[int, Field(ge=1024)] = Field(
        16 * 1024 * 1024, description="Output kept per stream for a whole batch, shared by its requests.")
    max_body_bytes: Annotated[int, Field(ge=1024)] = Field(10 * 1024 * 1024,
                                                           description="Largest request body (413 beyond).")
    job_ttl_s: Annotated[float, Field(gt=0)] = Field(3600, description="How long finished results are kept.")
    rate_limit_per_min: Annotated[float, Field(gt=0)] | None = Field(
        None, description="Default rate limit of keys that set none (requests per minute); none: unlimited.")
    defaults: Limits = Field(default_factory=lambda: Policy().defaults,
                             description="Limits a request starts from.")
    maxima: Limits = Field(default_factory=lambda: SERVER_MAXIMA, description="Limits no request can exceed.")
    max_sandboxes: Annotated[int, Field(ge=0, le=100_000)] = Field(
        32, description="Persistent sandboxes live at once, in all; beyond it: 429 with Retry-After.")
    max_sandboxes_per_key: Annotated[int, Field(ge=0, le=100_000)] | None = Field(
        8, description="Persistent sandboxes live at once per API key; none: only max_sandboxes applies.")
    sandbox_ttl_s: Annotated[float, Field(gt=0)] = Field(
        600, description="Idle seconds before a sandbox is destroyed, when its create request sets no ttl_s.")
    sandbox_max_ttl_s: Annotated[float, Field(gt=0)] = Field(
        3600, description="Largest idle TTL a create request may ask for (a larger one is lowered to it).")
    sandbox_max_lifetime_s: Annotated[float, Field(gt=0)] = Field(
        24 * 3600, description="Hard maximum age of a sandbox, busy or not.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins browsers may call from (e.g. "
                                    "a page with the codapi-js widget); '*' for any. None by default.")
    log_level: str = Field("info", description="debug, info, warning or error.")

    @field_validator("fallback_chain", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else v

    @field_validator("defaults", "maxima", mode="before")
    @classmethod
    def _over_builtin(cls, v: Any, info: Any) -> Any:
        """A partial table (e.g. only maxima.wall_time_s) keeps the built-in values of the other fields."""
        if isinstance(v, dict):
            base = Policy().defaults if info.field_name == "defaults" else SERVER_MAXIMA
            return {**base.model_dump(), **v}
        return v

    @property
    def policy(self) -> Policy:
        return Policy(defaults=self.defaults, maxima=self.maxima)

    @property
    def env_keys(self) -> list[str]:
        return [k.strip() for k in self.api_key.split(",") if k.strip()]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "execbox.db"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config := os.environ.get("EXECBOX_CONFIG"):
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config)))
        return tuple(sources)
