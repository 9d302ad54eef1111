"""`execbox run`, `execbox languages`, `execbox doctor`; the other commands are registered from their modules.
Exit codes: execbox.cli.common."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import execbox
from execbox.cli.common import EXIT_HELP, exit_code, fail, out, parse_env, parse_labels, write_result
from execbox.errors import ExecboxError, RequestError, UnknownLanguageError
from execbox.models import Limits

app = typer.Typer(help="Run untrusted code in a sandbox, in many languages, with hard limits.", epilog=EXIT_HELP,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command()
def run(
    target: Annotated[list[str] | None, typer.Argument(
        help="FILE [ARGS...]: the source file ('-' for stdin) and the program's arguments (with --code: "
             "only arguments). Put `--` before arguments that start with '-'.", show_default=False)] = None,
    code: Annotated[str | None, typer.Option("--code", "-c", help="Source code given inline.")] = None,
    lang_opts: Annotated[list[str] | None, typer.Option(
        "--lang", "-l", help="Language (default: from the file's extension; see `execbox languages`). With "
        "--keep/--reuse, a KEY=VAL value is a label instead.")] = None,
    stdin: Annotated[str | None, typer.Option("--stdin", help="Text given to the program's stdin.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VAL environment variable "
                                                  "(repeatable).")] = None,
    extra: Annotated[list[Path] | None, typer.Option("--file", "-f", help="Extra file to put beside the "
                                                     "entry file (repeatable).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", "-t", help="Time limit, seconds: the wall time, "
                                                  "and the CPU time with it.")] = None,
    memory: Annotated[int | None, typer.Option("--memory", "-m", help="Memory limit, MiB.")] = None,
    network: Annotated[bool, typer.Option("--network", help="Give the program the host's network.")] = False,
    provider: Annotated[str | None, typer.Option("--provider", help="Isolation provider (pinned: no fallback "
                                                 "unless --fallback names some).")] = None,
    fallback: Annotated[list[str] | None, typer.Option("--fallback", help="Provider to try next when the one "
                                                       "before fails before running the code (repeatable; in place "
                                                       "of EXECBOX_FALLBACK_CHAIN).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ExecutionResult as JSON.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Run in a new persistent sandbox on the server and leave it "
                                       "alive (its id is printed).")] = False,
    reuse: Annotated[bool, typer.Option("--reuse", help="Run in the server's live sandbox with these labels, "
                                        "made if there is none.")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", help="KEY=VAL label of the sandbox, with "
                                                    "--keep/--reuse (repeatable; also -l KEY=VAL).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="With --keep/--reuse: the execbox server (default: "
                                            "EXECBOX_URL, else http://127.0.0.1:8002).", show_default=False)] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="With --keep/--reuse: its API key (default: "
                                                "EXECBOX_API_KEY, else a local server's dev key).",
                                                show_default=False)] = None,
) -> None:
    """Run a program in a sandbox; exit with its exit code (or 121-125, see `execbox --help`).

    Examples: `execbox run hello.py`, `execbox run --lang go - < main.go`,
    `execbox run -c 'print(input())' -l python --stdin hi`, `execbox run prog.c -- -v arg2`.
    In a persistent sandbox on a server (`make serve`): `execbox run --keep -l project=x main.py`,
    `execbox run --reuse -l project=x main.py`.
    """
    remote = keep or reuse
    labels = [v for v in lang_opts or [] if "=" in v] + list(label or [])
    langs = [v for v in lang_opts or [] if "=" not in v]
    if keep and reuse:
        raise fail("give --keep (a new sandbox) or --reuse, not both")
    if not remote and (labels or url or api_key):
        raise fail("labels, --url and --api-key go with --keep or --reuse")
    if reuse and not labels:
        raise fail("--reuse finds the sandbox by its labels: give -l KEY=VAL")
    if len(langs) > 1:
        raise fail(f"give one language, not {', '.join(langs)}")
    lang = langs[0] if langs else None
    for pool in ("EXECBOX_LOCAL_WARM_POOL", "EXECBOX_DOCKER_POOL_SIZE"):  # one execution: pre-starting only costs
        os.environ.setdefault(pool, "0")
    positional = list(target or [])
    file = positional.pop(0) if code is None and positional else None
    if file is None and code is None:
        raise fail("give a FILE (or '-') or --code")
    entry = None
    if file == "-":
        source = sys.stdin.read()
    elif file is not None:
        path = Path(file)
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"cannot read {file}: {e}") from None
        entry = path.name
        if lang is None:
            found = execbox.LanguageRegistry.load().by_extension(path.suffix)
            if found is None:
                raise fail(f"cannot tell the language of {file}; give --lang")
            lang = found.name
    else:
        source = code or ""
    if lang is None:
        raise fail("give --lang (the language cannot be told from stdin or --code)")
    variables = parse_env(env)
    try:
        files = {p.name: p.read_bytes() for p in extra or []}
        registry = execbox.LanguageRegistry.load()
        # a file whose extension is not the language's is run under the language's entry name; with
        # --keep/--reuse the server's languages decide, and a language only it knows keeps the file's name
        try:
            known: execbox.Language | None = registry.get(lang)
        except UnknownLanguageError:
            if not remote:
                raise
            known = None
        if entry is not None and known is not None and not entry.endswith(tuple(f".{e}" for e in known.extensions)):
            entry = None
        limits = Limits.with_timeout(timeout, memory_mb=memory, network=network or None)
        if remote:
            from execbox.cli.sandboxes import run_in_sandbox  # the client: only with --keep/--reuse

            raise typer.Exit(run_in_sandbox(
                url=url, api_key=api_key, keep=keep, labels=parse_labels(labels), language=lang, source=source,
                entry=entry, files=files, args=positional, stdin=stdin or "", env=variables,
                limits=limits, provider=provider,
                as_json=as_json))
        result = execbox.run(source, lang, stdin=stdin or "", files=files, entry=entry, args=positional,
                             env=variables, limits=limits, provider=provider, fallback=fallback)
    except (ExecboxError, ValueError, OSError) as e:
        kind = "bad request" if isinstance(e, RequestError | ValueError) else "sandbox failure"
        raise fail(f"{kind}: {e}") from None
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        write_result(result)
    raise typer.Exit(exit_code(result))


@app.command()
def languages(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the languages, their detected versions and whether they are available here."""
    langs = list(execbox.LanguageRegistry.load())
    if as_json:
        print(json.dumps([{"name": lang.name, "aliases": lang.aliases, "version": lang.version(),
                           "available": lang.available, "missing": lang.missing(),
                           "compiled": lang.compile is not None} for lang in langs], indent=2))
        return
    table = Table("language", "version", "available", "aliases")
    for lang in langs:
        missing = lang.missing()
        state = f"[red]no[/red] (missing {', '.join(missing)})" if missing else "[green]yes[/green]"
        table.add_row(lang.name, lang.version() or "-", state, ", ".join(lang.aliases))
    out.print(table)


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Report which isolation features this host gives, what is degraded, and how to fix it."""
    from execbox.doctor import checks

    results = checks()
    if as_json:
        print(json.dumps([c.as_dict() for c in results], indent=2))
    else:
        colors = {"ok": "green", "degraded": "yellow", "missing": "red"}
        table = Table("check", "state", "detail", "fix")
        for c in results:
            table.add_row(c.name, f"[{colors[c.state]}]{c.state}[/]", c.detail, c.fix)
        out.print(table)
    raise typer.Exit(1 if any(c.state == "missing" for c in results) else 0)


def _register() -> None:
    """The service's commands live in their own modules (imported lazily: `run` needs no web stack)."""
    from execbox.cli import agent, images, keys, notebook, providers, sandboxes, serve

    app.command()(serve.serve)
    app.command("list")(sandboxes.list_)
    app.command("exec")(sandboxes.exec_)
    app.command()(sandboxes.destroy)
    app.command("run-code")(notebook.run_code)
    app.add_typer(keys.app, name="keys")
    app.add_typer(images.app, name="images")
    app.command(hidden=True)(agent.agent)  # the ssh provider's far end
    app.command()(providers.providers)
    app.command()(providers.test)
    app.add_typer(providers.config_app, name="config")


_register()
