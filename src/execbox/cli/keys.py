"""`execbox keys create|list|revoke`: the service's API keys, in its store (EXECBOX_DATA_DIR)."""

from __future__ import annotations

import datetime
import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from execbox.cli.common import err, fail, out
from execbox.models import Limits
from execbox.store import SQLiteStore

app = typer.Typer(help="Manage the HTTP service's API keys (stored hashed; a key is shown once).",
                  no_args_is_help=True)


def _store() -> SQLiteStore:
    from execbox.server import ServerSettings

    return SQLiteStore(ServerSettings().db_path)


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="A name for the key (shown in logs; never the key).")],
    rate_limit: Annotated[float | None, typer.Option(help="Requests per minute (default: the server's).")] = None,
    max_timeout: Annotated[float | None, typer.Option(help="Cap on wall and CPU time, seconds.")] = None,
    max_memory: Annotated[int | None, typer.Option(help="Cap on memory, MiB.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Give it the admin scope (/api/v1/admin: providers, "
                                        "the chain, breakers).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    from execbox.server.auth import create_key
    from execbox.store import NameTaken

    caps_fields = {"wall_time_s": max_timeout, "cpu_time_s": max_timeout, "memory_mb": max_memory}
    try:
        caps = Limits(**{k: v for k, v in caps_fields.items() if v is not None})
    except ValidationError as e:
        raise fail(f"invalid cap: {e}", 2) from None
    try:
        key, record = create_key(_store(), name, rate_limit, caps, ("admin",) if admin else ())
    except NameTaken as e:
        raise fail(str(e), 1) from None
    except ValueError as e:
        raise fail(str(e), 2) from None
    if as_json:
        print(json.dumps({"name": record.name, "key": key, "rate_limit_per_min": record.rate_limit_per_min,
                          "caps": record.caps, "scopes": list(record.scopes)}))
    else:
        print(key)
        err.print(f"key {name!r} created; it is shown only now", highlight=False)


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the keys (names, prefixes, limits; never the keys)."""
    records = _store().keys()
    if as_json:
        print(json.dumps([{"name": r.name, "prefix": r.prefix, "rate_limit_per_min": r.rate_limit_per_min,
                           "caps": r.caps, "scopes": list(r.scopes), "created_at": r.created_at,
                           "revoked": r.revoked_at is not None}
                          for r in records], indent=2))
        return
    table = Table("name", "prefix", "rate/min", "caps", "scopes", "created", "state")
    for r in records:
        created = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
        table.add_row(r.name, r.prefix + "…", "-" if r.rate_limit_per_min is None else f"{r.rate_limit_per_min:g}",
                      json.dumps(r.caps) if r.caps else "-", " ".join(r.scopes) or "-", created,
                      "revoked" if r.revoked_at else "active")
    out.print(table)


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: it stops working at once."""
    if not _store().revoke_key(name):
        raise fail(f"no active key named {name!r}", 1)
    err.print(f"key {name!r} revoked", highlight=False)
