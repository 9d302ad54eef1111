"""`execbox run-code`: notebook cells in a persistent python sandbox's kernel, from the shell.

    execbox run-code -l nb=demo 'x = 41'          # the live sandbox labelled nb=demo (made if there is none)
    execbox run-code -l nb=demo 'x + 1'           # 42: the kernel kept x
    execbox run-code sb_1234 - < cell.py          # a cell from stdin (or -f FILE)
    execbox run-code sb_1234                      # on a terminal: an interactive session, In [n]: prompts

Like `execbox exec`, it talks to a server (the sandbox outlives the command). A cell prints what a notebook
shows: its stdout and stderr, then each output's text/plain (its value last); binary outputs (a matplotlib
figure's image/png) are written to files with `--save DIR`, else only named. The exit code says how the cell
ended: 0 ok, 1 error (the traceback on stderr), 124 timeout, 137 kernel died, 125 execbox failed.
"""

from __future__ import annotations

import codeop
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from execbox.cli.common import EXIT_KILLED, EXIT_TIMEOUT, err, fail, parse_labels
from execbox.cli.sandboxes import ApiKey, Url, connected
from execbox.client import RemoteSandbox
from execbox.interpreter import CellResult, CellStatus

CELL_EXIT = {CellStatus.OK: 0, CellStatus.ERROR: 1, CellStatus.TIMEOUT: EXIT_TIMEOUT,
             CellStatus.KERNEL_DIED: EXIT_KILLED}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp",
              "application/pdf": "pdf"}


def run_code(
    target: Annotated[list[str] | None, typer.Argument(
        help="[ID] [CODE]: the sandbox (unless -l) and the cell's code ('-' or none: from stdin; none on a "
             "terminal: an interactive session).", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", "-l", help="KEY=VAL: use the live python sandbox with these labels, made if there is none, "
        "instead of an ID (repeatable).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the cell from this file.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", "-t", help="The cell's timeout, seconds (default "
                                                  "and maximum: the sandbox's wall time).")] = None,
    save: Annotated[Path | None, typer.Option(
        "--save", help="Write binary outputs (image/png, ...) into this directory, as cellN-I.EXT (N: the cell's "
        "number; I: the output's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the CellResult as JSON (binary outputs in "
                                          "base64).")] = False,
    provider: Annotated[str | None, typer.Option("--provider", help="With -l, the provider of a sandbox made "
                                                 "now.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Run a python cell in a sandbox's IPython kernel, which keeps its state between cells (`execbox
    run-code -l nb=demo 'x = 41'`, then `... 'x + 1'` prints 42). Exit 0 ok, 1 error, 124 timeout, 137
    kernel died, 125 execbox failed."""
    labels = parse_labels(label)
    args = list(target or [])
    sandbox_id = None if labels else (args.pop(0) if args else None)
    if sandbox_id is None and not labels:
        raise fail("give the sandbox's ID (see `execbox list`) or its labels with -l KEY=VAL")
    if len(args) > 1:
        raise fail("give the cell as one argument (quote it), with -f FILE, or on stdin")
    if args and file is not None:
        raise fail("give the cell as an argument or with -f, not both")
    if save is not None:
        try:
            save.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fail(f"--save: {e}") from None
    code: str | None = args[0] if args else None
    if file is not None:
        try:
            code = file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"cannot read {file}: {e}") from None
    if code == "-" or (code is None and not sys.stdin.isatty()):
        code = sys.stdin.read()
    with connected(url, api_key) as client:
        if sandbox_id is None:
            sb = client.Sandbox.get_or_create(labels, language="python", provider=provider)
            err.print(f"execbox: sandbox {sb.id}", highlight=False, soft_wrap=True)
        else:
            sb = client.Sandbox.get(sandbox_id)
        if code is None:
            _interactive(sb, timeout, save)
            return
        result = sb.run_code(code, timeout_s=timeout)
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        show(result, save)
    raise typer.Exit(CELL_EXIT[result.status])


def show(result: CellResult, save: Path | None) -> None:
    """What a notebook shows of a cell, on stdout (data) and stderr (errors and notes)."""
    if result.restarted:
        err.print(f"[yellow]execbox:[/yellow] {escape(result.message or 'a new kernel was started')}",
                  highlight=False, soft_wrap=True)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    for i, bundle in enumerate(result.outputs, 1):
        for mime, data in bundle.items():
            if not isinstance(data, bytes):
                continue
            what = f"{mime}, {len(data) / 1024:.1f} KiB"
            if save is None:
                sys.stderr.write(f"[{what}: --save DIR writes it]\n")  # unwrapped: a path to copy
                continue
            path = save / f"cell{result.execution_count or 0}-{i}.{EXTENSIONS.get(mime, 'bin')}"
            path.write_bytes(data)
            sys.stderr.write(f"[{what}: {path}]\n")
        text = bundle.get("text/plain")
        if isinstance(text, str):
            print(text)
    if result.error is not None:
        sys.stderr.write("\n".join(result.error.traceback or [f"{result.error.name}: {result.error.value}"]) + "\n")
    if result.status not in (CellStatus.OK, CellStatus.ERROR):
        err.print(f"[yellow]execbox:[/yellow] {result.status.value}"
                  + (f": {escape(result.message)}" if result.message else ""), highlight=False, soft_wrap=True)
    elif result.truncated:
        err.print("[yellow]execbox:[/yellow] output beyond the sandbox's output_bytes was dropped", highlight=False)
    sys.stderr.flush()


def _interactive(sb: RemoteSandbox, timeout: float | None, save: Path | None) -> None:
    """A terminal session: a cell is read like the python prompt reads a statement (continuation lines until
    it is complete; a blank line ends a block), run, shown. Ctrl-D ends the session; the sandbox lives on."""
    err.print(f"execbox: python kernel in sandbox {sb.id}; Ctrl-D ends the session (the sandbox lives on)",
              highlight=False, soft_wrap=True)
    first = sb.run_code("")  # starts the kernel now, not at the first cell, and tells its In [n] counter
    show(first, save)
    count = (first.execution_count or 0) + 1
    while True:
        try:
            cell = _read_cell(f"In [{count}]: ", " " * (len(str(count)) + 5) + "...: ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print("\nKeyboardInterrupt")
            continue
        if not cell.strip():
            continue
        try:
            result = sb.run_code(cell, timeout_s=timeout)
        except KeyboardInterrupt:
            err.print("\nexecbox: stopped waiting; the cell runs on in the kernel until its timeout",
                      highlight=False)
            continue
        show(result, save)
        count = (result.execution_count or count) + 1


def _read_cell(prompt: str, more: str) -> str:
    lines = [input(prompt)]
    while _incomplete("\n".join(lines)):
        line = input(more)
        lines.append(line)
        if not line:
            break
    return "\n".join(lines)


def _incomplete(source: str) -> bool:
    """Whether the python prompt would ask for more; code that does not parse is complete (the kernel says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return codeop.compile_command(source, symbol="single") is None
    except (SyntaxError, ValueError, OverflowError):
        return False
