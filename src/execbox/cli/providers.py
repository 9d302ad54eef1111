"""`execbox providers`, `execbox test`, `execbox config show|set`: the provider configuration in the service's
store (the data_dir of EXECBOX_DATA_DIR), read and written as the server does (execbox.server.provider_admin).

A running server reads the store at its start: changes made here reach it when it restarts (the admin API,
/api/v1/admin, changes a running server at once). Secrets are never printed: "********" when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from execbox.cli.common import err, fail, out
from execbox.errors import ExecboxError, RequestError

if TYPE_CHECKING:
    from execbox.server.provider_admin import ProviderAdmin
    from execbox.wire_admin import KindInfo

config_app = typer.Typer(help="Show or change the provider configuration in the service's store.",
                         no_args_is_help=True)
CONFIG_KEYS = "default_provider, fallback_chain (a comma list), routing (JSON), providers.NAME (JSON)"


@contextlib.contextmanager
def _admin() -> Iterator[ProviderAdmin]:
    """The store's configuration (seeded from the settings on first use, as a server's start would)."""
    from execbox.server import ServerSettings
    from execbox.server.provider_admin import ProviderAdmin
    from execbox.store import SQLiteStore

    try:
        settings = ServerSettings()
    except ValidationError as e:
        raise fail(f"invalid settings: {e}") from None
    store = SQLiteStore(settings.db_path)
    try:
        admin = ProviderAdmin(settings, store, strict=False)  # a broken instance is left out: it can be set anew
        for why in admin.broken.values():
            err.print(f"[yellow]execbox:[/yellow] {escape(why)}", highlight=False, soft_wrap=True)
        yield admin
    except ExecboxError as e:
        raise fail(str(e), 2 if isinstance(e, RequestError) else 1) from None
    finally:
        store.close()


def _status(admin: ProviderAdmin, name: str) -> str | None:
    """Why ``name`` cannot run here (None: it can): its kind's missing dependency, or its set-up failing."""
    try:
        admin.registry.get(name)
    except ExecboxError as e:
        return str(e)
    return None


def providers(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the provider instances (kind, whether each can run here and why not, the default, the chain), then
    every kind, with the line that installs one missing here. The breaker column is this process's (a running
    server's own: GET /api/v1/admin/providers)."""
    os.environ.setdefault("EXECBOX_LOCAL_WARM_POOL", "0")  # probing an instance need not pre-start sandboxes
    with _admin() as admin:
        try:
            view = admin.view()
            rows = [(i, _status(admin, i.name)) for i in view.instances]
        finally:
            asyncio.run(admin.registry.aclose())
    if as_json:
        print(json.dumps({"instances": [{**i.model_dump(mode="json"), "status": "unavailable" if why else "available",
                                         "message": why} for i, why in rows],
                          "kinds": [k.model_dump(mode="json", include={"name", "summary", "available", "missing",
                                                                       "install", "detect", "detected"})
                                    for k in view.kinds]}, indent=2))
        return
    table = Table("name", "kind", "status", "default", "chain", "breaker")
    for i, why in rows:
        status = f"[red]unavailable[/red]: {escape(why)}" if why else "[green]available[/green]"
        table.add_row(i.name, i.kind, status, "yes" if i.is_default else "",
                      "" if i.chain_position is None else str(i.chain_position + 1), i.breaker.state)
    out.print(table)
    kinds = Table("kind", "status", "what it is")
    for k in view.kinds:
        kinds.add_row(k.name, _kind_status(k), k.summary)
    out.print(kinds)


def _kind_status(k: KindInfo) -> str:
    """Installed or not (the line that installs it), and for a kind configured by environment variables,
    whether they are set here."""
    if not k.available:
        return f"[red]unavailable[/red]: {escape(k.missing or '')}"
    if k.detected:
        return f"[green]available[/green], configured by {escape(', '.join(k.detected))}"
    if k.detect:
        either = " or ".join(" + ".join(group) for group in k.detect)
        return f"[green]available[/green], not configured: set {escape(either)} or add an instance"
    return "[green]available[/green]"


def test(
    provider: Annotated[str | None, typer.Option("--provider", "-p", help="The instance to test (default: the "
                                                 "default provider).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run a program that prints 1 on one provider, here (5 s, 128 MiB), as POST
    /api/v1/admin/providers/NAME/test does on a server. Exit 0 when it worked, 1 when not."""
    from execbox.engine import Engine
    from execbox.languages import default_registry

    os.environ.setdefault("EXECBOX_LOCAL_WARM_POOL", "0")  # one execution: pre-starting only costs
    with _admin() as admin:
        engine = Engine(providers=admin.registry, router=admin.router, policy=admin.settings.policy,
                        languages=default_registry())

        async def run() -> Any:
            try:
                return await admin.test(engine, provider or admin.registry.default)
            finally:
                await admin.registry.aclose()

        answer = asyncio.run(run())
    if as_json:
        print(answer.model_dump_json(indent=2))
    else:
        color = "green" if answer.ok else "red"
        out.print(f"[{color}]{'ok' if answer.ok else 'failed'}[/{color}] {escape(answer.provider)} "
                  f"({answer.wall_ms:g} ms): {escape(answer.message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if answer.ok else 1)


@config_app.command()
def show(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The effective provider configuration: default, chain, thresholds and instances (secrets masked)."""
    with _admin() as admin:
        view = admin.view()
    tables = {i.name: {"kind": i.kind, **i.settings} for i in view.instances if i.configured}
    doc = {"default_provider": view.default, "fallback_chain": view.chain,
           "routing": view.routing.model_dump(mode="json"), "providers": tables}
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    out.print(f"default_provider  {escape(view.default)}", highlight=False)
    out.print(f"fallback_chain    {escape(','.join(view.chain)) or '-'}", highlight=False)
    out.print(f"routing           {escape(json.dumps(doc['routing']))}", highlight=False, soft_wrap=True)
    table = Table("provider", "kind", "settings")
    for name, table_doc in tables.items():
        settings = {k: v for k, v in table_doc.items() if k != "kind"}
        table.add_row(name, table_doc["kind"], escape(json.dumps(settings)) if settings else "-")
    out.print(table)


@config_app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help=f"What to set: {CONFIG_KEYS}.")],
    value: Annotated[str, typer.Argument(help="Its value, e.g. `docker,ssh-gpu1` or "
                                              "'{\"kind\": \"ssh\", \"host\": ...}'.")],
) -> None:
    """Change the provider configuration in the store (validated first; a running server sees it at its
    next start). Examples: `execbox config set default_provider docker`, `execbox config set fallback_chain
    docker,local`, `execbox config set providers.gpu1 '{"kind": "ssh", "host": "10.0.0.5", ...}'`."""
    from execbox.routing import RoutingSettings

    with _admin() as admin:
        if key == "default_provider":
            admin.set_chain(default=value.strip())
        elif key == "fallback_chain":
            admin.set_chain(chain=[n.strip() for n in value.split(",") if n.strip()])
        elif key == "routing":
            try:
                routing = RoutingSettings.model_validate({**admin.router.settings.model_dump(), **_json(value)})
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                raise fail(f"routing.{'.'.join(map(str, first['loc']))}: {first['msg']}", 2) from None
            admin.set_chain(routing=routing)
        elif key.startswith("providers.") and key.count(".") == 1:
            table = _json(value)
            kind = table.pop("kind", None)
            if not isinstance(kind, str):
                raise fail(f"{key}: give the instance's kind: '{{\"kind\": \"ssh\", ...}}'", 2)
            admin.put(key.partition(".")[2], kind, table)
        else:
            raise fail(f"unknown key {key!r}; known: {CONFIG_KEYS}", 2)
    err.print(f"{key} set (a running server applies it at its next start; the admin API applies at once)",
              highlight=False, soft_wrap=True)


def _json(value: str) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except json.JSONDecodeError as e:
        raise fail(f"not JSON: {e}", 2) from None
    if not isinstance(doc, dict):
        raise fail("give a JSON object: '{...}'", 2)
    return doc
