"""`execbox serve`: the HTTP service on uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from execbox.cli.common import EXIT_EXECBOX, err, fail


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1, "
                                             "EXECBOX_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8002, EXECBOX_PORT).")] = None,
) -> None:
    """Start the HTTP service. Settings come from EXECBOX_* variables and the TOML file in EXECBOX_CONFIG
    (see the README); the dev API key is printed at start."""
    import uvicorn

    from execbox.errors import ExecboxError
    from execbox.server import ServerSettings, create_app
    from execbox.server.app import configure_logging, dev_key
    from execbox.server.provider_admin import check_config

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    try:
        settings = ServerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        raise fail(f"invalid settings: {e}", EXIT_EXECBOX) from None
    configure_logging(settings.log_level)
    try:  # what would stop the server (a stored provider that cannot be loaded...) said in words, not a traceback
        check_config(settings)
    except ExecboxError as e:
        raise fail(f"cannot start: {e}", EXIT_EXECBOX) from None
    key = dev_key(settings)
    url = f"http://{settings.host}:{settings.port}"
    err.print(f"execbox {url}  (API docs: {url}/docs)", highlight=False)
    if key:
        err.print(f"dev API key: {key}  (from {settings.data_dir / 'dev-api-key'}; EXECBOX_DEV_KEY=false "
                  "turns it off)", highlight=False)
    if settings.env_keys:
        err.print(f"{len(settings.env_keys)} key(s) from EXECBOX_API_KEY", highlight=False)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning",
                access_log=False, server_header=False)
