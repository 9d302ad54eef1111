"""The library's entry points: an async core and a thin sync facade with the same names and signatures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, TypeVar, Unpack

from pydantic import ValidationError

from execbox.engine import Engine
from execbox.errors import ExecutionFailed, RequestError
from execbox.models import ExecutionRequest, ExecutionResult, File, Limits
from execbox.protocol import ProgramOptions

P = ParamSpec("P")
T = TypeVar("T")


@functools.cache
def default_engine() -> Engine:
    return Engine()


def _files(files: Mapping[str, str | bytes] | Sequence[File] | None) -> list[File]:
    if files is None:
        return []
    if isinstance(files, Mapping):
        return [File(name=k, content=v) for k, v in files.items()]
    return list(files)


def program_request(code: str | None, language: str, *, provider: str | None = None,
                    fallback: Sequence[str] | None = None, **options: Unpack[ProgramOptions]) -> ExecutionRequest:
    """The ExecutionRequest of ``run``'s arguments (in-process, in a sandbox, or sent to a server); a
    client's mistake is a RequestError (still a ValueError), never a pydantic error."""
    try:
        args, env, arguments = options.get("args", ()), options.get("env"), options.get("arguments")
        return ExecutionRequest(
            language=language, code=code, files=_files(options.get("files")), entry=options.get("entry"),
            version=options.get("version"), stdin=options.get("stdin", ""), args=None if args is None else list(args),
            env=None if env is None else dict(env), arguments=None if arguments is None else dict(arguments),
            limits=options.get("limits"), provider=provider, fallback=None if fallback is None else list(fallback),
            command=options.get("command", "run"),
        )
    except ValidationError as e:
        raise RequestError(f"invalid request: {e}") from e


async def arun(
    code: str | None = None,
    language: str = "python",
    *,
    stdin: str | bytes | None = "",
    files: Mapping[str, str | bytes] | Sequence[File] | None = None,
    entry: str | None = None,
    args: Sequence[str] | None = (),
    env: Mapping[str, str] | None = None,
    limits: Limits | None = None,
    version: str | None = None,
    arguments: Mapping[str, Any] | None = None,
    provider: str | None = None,
    fallback: Sequence[str] | None = None,
    command: Literal["run", "test"] = "run",
    check: bool = False,
) -> ExecutionResult:
    """Run ``code`` (and/or ``files``) in a sandbox and return the result: on ``provider`` (then on those of
    ``fallback``, when given), or on the default and then the fallback chain (EXECBOX_FALLBACK_CHAIN).

    The program failing is a result (see ``result.status``); with ``check=True`` anything but ``ok`` raises
    ``ExecutionFailed`` carrying the result. Errors of the request or the sandbox raise ``ExecboxError``s.
    """
    request = program_request(code, language, stdin=stdin, files=files, entry=entry, args=args, env=env,
                              limits=limits, version=version, arguments=arguments, provider=provider,
                              fallback=fallback, command=command)
    result = await default_engine().execute(request)
    if check and not result.ok:
        raise ExecutionFailed(result)
    return result


async def aexecute_code(
    code: str, language: str = "python", timeout: float = 30, arguments: Mapping[str, Any] | None = None,
) -> ExecutionResult:
    """RAGFlow's contract: run ``code``; with ``arguments``, call its ``main(**arguments)`` and put the JSON
    return value in ``result.return_value``. ``timeout`` is the time limit in seconds: the wall time, and the CPU
    time with it."""
    try:
        limits = Limits.with_timeout(timeout)
    except ValidationError as e:
        raise RequestError(f"invalid timeout {timeout!r}: {e}") from e
    return await arun(code, language, limits=limits, arguments=arguments)


def _sync(fn: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """The same function, blocking. Inside a running event loop (a notebook) it runs on a helper thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(fn(*args, **kwargs))  # type: ignore[arg-type]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fn(*args, **kwargs)).result()  # type: ignore[arg-type]

    wrapper.__name__ = fn.__name__.removeprefix("a")
    wrapper.__qualname__ = wrapper.__name__
    return wrapper


run = _sync(arun)
execute_code = _sync(aexecute_code)
