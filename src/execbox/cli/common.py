"""What every `execbox` command shares: the exit codes, the consoles, failing with a message, and reading
KEY=VAL options. It imports no other command module, so that none imports another for these.

Exit codes of `run` and `exec` (documented in the README):

    the program's own exit code      ok / runtime_error
    128 + N                          the program was killed by signal N
    121                              output limit
    122                              memory limit
    123                              compile error
    124                              timeout (wall or CPU time), as coreutils' timeout
    125                              execbox failed: bad request, unknown language, sandbox failure
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from execbox import models
from execbox.errors import RequestError
from execbox.models import ExecutionResult, Status

EXIT_OUTPUT, EXIT_MEMORY, EXIT_COMPILE, EXIT_TIMEOUT, EXIT_EXECBOX = 121, 122, 123, 124, 125
EXIT_KILLED = 128 + 9
STATUS_EXIT = {Status.OUTPUT_LIMIT: EXIT_OUTPUT, Status.MEMORY_LIMIT: EXIT_MEMORY,
               Status.COMPILE_ERROR: EXIT_COMPILE, Status.TIMEOUT: EXIT_TIMEOUT,
               Status.INTERNAL_ERROR: EXIT_EXECBOX, Status.KILLED: EXIT_KILLED}
EXIT_HELP = ("Exit codes of `run`: the program's own; 128+N when killed by signal N; 121 output limit; 122 memory "
             "limit; 123 compile error; 124 timeout; 125 execbox failed.")

out = Console()  # tables and reports on stdout
err = Console(stderr=True)  # execbox's own messages, never the program's output


def exit_code(result: ExecutionResult) -> int:
    """The exit code of a run or exec with this result (see the module's table)."""
    if result.status in STATUS_EXIT:
        return STATUS_EXIT[result.status]
    if result.signal:
        return 128 + result.signal
    return result.exit_code or 0


def fail(message: str, code: int = EXIT_EXECBOX) -> typer.Exit:
    """Print ``message`` as execbox's error and return the Exit to raise. Unwrapped and without markup: the
    messages carry paths, URLs and commands to copy."""
    err.print(f"[red]execbox:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def report(result: ExecutionResult) -> None:
    """Why a run or exec did not end ok, on stderr (its output went to stdout and stderr as it was)."""
    if result.status is not Status.OK:
        err.print(f"[yellow]execbox:[/yellow] {result.status.value}"
                  + (f": {escape(result.message)}" if result.message else ""), highlight=False, soft_wrap=True)


def write_result(result: ExecutionResult) -> None:
    """A finished run's output as the program wrote it (a compile error's on stderr), then ``report``."""
    if result.compile and result.status is Status.COMPILE_ERROR:
        sys.stderr.write(result.compile.stdout + result.compile.stderr)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    sys.stdout.flush()
    report(result)


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``--env KEY=VAL`` options (the value may hold '='); exit 125 for one without '='."""
    variables = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--env wants KEY=VAL, got {item!r}")
        variables[key] = value
    return variables


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``--label KEY=VAL`` options (key:value accepted too), read as the HTTP API reads its label filters;
    exit 125 for a bad one."""
    try:
        return models.parse_labels(items or [])
    except RequestError as e:
        raise fail(str(e)) from None
