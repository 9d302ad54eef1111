"""`execbox list`, `execbox exec`, `execbox destroy` and `execbox run --keep/--reuse`: persistent sandboxes.

A sandbox must outlive the command that made it, so these go through an execbox server with the remote
client: `--url` (EXECBOX_URL, default http://127.0.0.1:8002) and `--api-key` (EXECBOX_API_KEY, default the
dev key of a server started on this machine). `execbox run` without --keep/--reuse still runs in-process.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Annotated

import typer
from rich.table import Column, Table

from execbox.cli.common import err, exit_code, fail, out, parse_env, parse_labels, report, write_result
from execbox.client import Client, RemoteSandbox, default_url
from execbox.errors import AuthenticationError, ExecboxError, NotFoundError, RequestError, ServerUnreachable
from execbox.models import ExecutionResult, Limits

Url = Annotated[str | None, typer.Option("--url", help="The execbox server (default: EXECBOX_URL, else "
                                         "http://127.0.0.1:8002).", show_default=False)]
ApiKey = Annotated[str | None, typer.Option("--api-key", help="Its API key (default: EXECBOX_API_KEY, else the "
                                            "dev key of a server started here).", show_default=False)]


@contextlib.contextmanager
def connected(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client; execbox's errors become a message and exit code 125 (with how to start a server)."""
    where = url or default_url()
    try:
        with Client(url, api_key) as client:
            yield client
    except ServerUnreachable as e:
        raise fail(f"{e}\n  start a server with `make serve` (or `execbox serve`), or point --url / EXECBOX_URL "
                    "at one") from None
    except AuthenticationError as e:
        raise fail(f"the server at {where} refused the API key: {e}; `execbox serve` prints its dev key") from None
    except NotFoundError as e:
        raise fail(str(e)) from None
    except ExecboxError as e:
        kind = "bad request" if isinstance(e, RequestError) else "failure"
        raise fail(f"{kind}: {e}") from None


def _stream(sb: RemoteSandbox, argv: list[str] | str, *, stdin: str, env: Mapping[str, str],
            limits: Limits | None) -> ExecutionResult:
    """Run, writing the output as it comes; the result."""
    for ev in sb.stream(argv, stdin=stdin, env=env, limits=limits):
        if ev.type == "exit" and ev.result is not None:
            return ev.result
        out = sys.stdout if ev.type == "stdout" else sys.stderr
        out.write(ev.data)
        out.flush()
    raise ExecboxError("the command ended without a result")  # _stream's stream always ends with exit


def run_in_sandbox(*, url: str | None, api_key: str | None, keep: bool, labels: dict[str, str], language: str,
                   source: str, entry: str | None, files: dict[str, bytes], args: list[str], stdin: str,
                   env: dict[str, str], limits: Limits | None, provider: str | None, as_json: bool) -> int:
    """`execbox run --keep` (a new sandbox, left alive) or `--reuse` (the live sandbox with these labels, or a
    new one): the server writes the files, compiles and runs as its languages say (POST .../run); the exit
    code as `run`'s."""
    with connected(url, api_key) as client:
        if keep:
            sb = client.Sandbox.create(language, labels=labels, limits=limits, provider=provider)
        else:
            sb = client.Sandbox.get_or_create(labels, language=language, limits=limits, provider=provider)
        # first, so that the id is known even if what follows fails or is interrupted
        err.print(f"execbox: sandbox {sb.id}" + (" (kept)" if keep else ""), highlight=False, soft_wrap=True)
        result = sb.run(source, language=language, entry=entry, files=files, stdin=stdin, args=args, env=env,
                        limits=limits)
    if as_json:
        print(json.dumps({"sandbox_id": sb.id, **result.model_dump(mode="json")}, indent=2))
        return exit_code(result)
    write_result(result)
    return exit_code(result)


def list_(
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="Only sandboxes with this label, "
                                                    "KEY=VAL (repeatable: all of them).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """List your live sandboxes on the server, most recently used first."""
    labels = parse_labels(label)
    with connected(url, api_key) as client:
        found = client.Sandbox.list(labels)
    if as_json:
        print(json.dumps([{"id": sb.id, "language": sb.language, "provider": sb.provider, "labels": sb.labels,
                           "created_at": sb.created_at, "ttl_s": sb.ttl_s, "idle_expires_at": sb.idle_expires_at,
                           "expires_at": sb.expires_at, "limits": sb.limits.model_dump(mode="json")}
                          for sb in found], indent=2))
        return
    now = time.time()
    ids = Column("id", no_wrap=True, min_width=max((len(sb.id) for sb in found), default=2))  # never cut short
    table = Table(ids, "language", Column("labels", overflow="fold"), "age", "idle expiry in", "provider")
    for sb in found:
        table.add_row(sb.id, sb.language, ", ".join(f"{k}={v}" for k, v in sb.labels.items()) or "-",
                      _duration(now - sb.created_at), _duration(sb.idle_expires_at - now), sb.provider)
    out.print(table)


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def exec_(
    sandbox_id: Annotated[str, typer.Argument(help="The sandbox (see `execbox list`).", show_default=False)],
    command: Annotated[list[str], typer.Argument(
        help="One argument runs under /bin/sh -c (`execbox exec ID 'ls | wc -l'`); several are the argv "
             "(`execbox exec ID -- ls -la`).", show_default=False)],
    stdin: Annotated[str | None, typer.Option("--stdin", help="Text given to the command's stdin.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VAL environment variable "
                                                  "(repeatable).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", "-t", help="Time limit, seconds: the wall time "
                                                  "and the CPU time with it (at most the sandbox's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ExecutionResult as JSON.")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Run a command in a live sandbox, printing its output as it comes; exit with its exit code (or
    121-125, as `run`)."""
    variables = parse_env(env)
    try:
        limits = Limits.with_timeout(timeout)
    except ValueError as e:
        raise fail(f"bad request: --timeout: {e}") from None
    cmd: str | list[str] = command[0] if len(command) == 1 else command
    with connected(url, api_key) as client:
        sb = client.Sandbox.get(sandbox_id)
        if as_json:
            result = sb.exec(cmd, stdin=stdin or "", env=variables, limits=limits)
            print(result.model_dump_json(indent=2))
        else:
            result = _stream(sb, cmd, stdin=stdin or "", env=variables, limits=limits)
            report(result)
    raise typer.Exit(exit_code(result))


def destroy(
    sandbox_ids: Annotated[list[str], typer.Argument(help="The sandboxes (see `execbox list`).",
                                                     show_default=False)],
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Kill everything in the sandboxes and remove them."""
    with connected(url, api_key) as client:
        for sandbox_id in sandbox_ids:
            client.Sandbox.get(sandbox_id).destroy()
            err.print(f"execbox: destroyed {sandbox_id}", highlight=False, soft_wrap=True)
