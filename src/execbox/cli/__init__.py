"""The execbox command line: `execbox run`, `execbox languages`, `execbox doctor`."""

from __future__ import annotations

from execbox.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
