"""`execbox images build|list`: the docker provider's runtime images (see images/images.toml)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from execbox.cli.common import err, fail, out
from execbox.errors import ExecboxError

app = typer.Typer(help="Build and list the docker provider's runtime images (images/<name>/Dockerfile).",
                  no_args_is_help=True)


@app.command()
def build(
    names: Annotated[list[str] | None, typer.Argument(help="Images to build (default: all in images.toml).",
                                                      show_default=False)] = None,
    official: Annotated[bool, typer.Option("--official", help="Build FROM the public images named in "
                                           "images.toml (needs Docker Hub) instead of a debootstrap'd base.")
                        ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the tag exists.")] = False,
) -> None:
    """Build the missing images (an unchanged image is never rebuilt: tags are content hashes).

    The base is a minimal Debian made with debootstrap from the host's apt mirror and `docker import`
    (needs root and debootstrap; a few minutes); each runtime image is then built FROM it.
    Example: `execbox images build python gcc`.
    """
    from execbox.providers.docker import images

    started = time.monotonic()

    def log(line: str) -> None:
        err.print(f"{time.monotonic() - started:6.1f}s {line}", highlight=False, markup=False)

    try:
        tags = images.build(names, official=official, force=force, log=log)
    except ExecboxError as e:
        raise fail(str(e), 1) from None
    for name, tag in tags.items():
        typer.echo(f"{name}\t{tag}")


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The images, their content-hash tags and whether they are built."""
    from execbox.providers.docker import images

    try:
        catalog = images.Catalog.load()
        found = images.status(catalog)
    except ExecboxError as e:
        raise fail(str(e), 1) from None
    binaries = {name: list(d.binaries) for name, d in catalog.images.items()}
    if as_json:
        typer.echo(json.dumps([{"name": n, "tag": t, "built": b, "binaries": binaries.get(n, [])}
                               for n, (t, b) in found.items()], indent=2))
        return
    table = Table("image", "tag", "built", "runs")
    for n, (t, b) in found.items():
        table.add_row(n, t, "yes" if b else "[red]no[/red]", " ".join(binaries.get(n, [])))
    out.print(table)
    raise typer.Exit(0 if all(b for _, b in found.values()) else 1)
