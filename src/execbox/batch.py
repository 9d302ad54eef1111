"""``run_many``/``arun_many``: several commands, one after another, in one throwaway sandbox."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execbox.blocking import call
from execbox.errors import RequestError
from execbox.models import ExecutionResult, Limits, check_file_name
from execbox.protocol import Command
from execbox.sandbox import AsyncSandbox, SandboxManager


async def arun_many(commands: Sequence[Command], language: str = "bash", *,
                    files: Mapping[str, str | bytes] | None = None, env: Mapping[str, str] | None = None,
                    limits: Limits | None = None, provider: str | None = None, stop_on_error: bool = False,
                    manager: SandboxManager | None = None) -> list[ExecutionResult]:
    """Run ``commands`` one after another in one throwaway sandbox (files and processes persist between
    them) and return their results, in order; with ``stop_on_error`` the first result that is not ``ok``
    is the last. ``files`` are written into the workdir first. The sandbox (of ``manager``, default the
    library's) is destroyed at the end."""
    if isinstance(commands, str):
        raise RequestError("commands is a list of commands (a single string would run one per character)")
    for name in files or {}:
        check_file_name(name)  # before any sandbox is made
    results: list[ExecutionResult] = []
    async with await AsyncSandbox.create(language, limits=limits, provider=provider, env=env, manager=manager) as sb:
        for name, data in (files or {}).items():
            await sb.files.write(name, data)
        for cmd in commands:
            r = await sb.exec(cmd)
            results.append(r)
            if stop_on_error and not r.ok:
                break
    return results


def run_many(commands: Sequence[Command], language: str = "bash", *,
             files: Mapping[str, str | bytes] | None = None, env: Mapping[str, str] | None = None,
             limits: Limits | None = None, provider: str | None = None, stop_on_error: bool = False,
             manager: SandboxManager | None = None) -> list[ExecutionResult]:
    return call(arun_many(commands, language, files=files, env=env, limits=limits, provider=provider,
                          stop_on_error=stop_on_error, manager=manager))


run_many.__doc__ = arun_many.__doc__
