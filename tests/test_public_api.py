"""The public surface: ``__all__`` pinned, sync/async parity, the sync facade inside and outside a loop."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

import pytest

import execbox
from execbox import api, blocking, protocol
from execbox import client as client_module
from execbox import sandbox as sandbox_module
from execbox.engine import Engine
from execbox.languages import LanguageRegistry
from execbox.providers.base import ExecSpec, ProcessOutcome
from execbox.providers.mock import MockProvider, echo
from execbox.providers.registry import ProviderRegistry

EXPECTED_ALL = [
    "AsyncClient",
    "AsyncSandbox",
    "AtCapacity",
    "AuthenticationError",
    "CapacityError",
    "CellError",
    "CellResult",
    "CellStatus",
    "CircuitOpen",
    "Client",
    "Engine",
    "ExecEvent",
    "ExecboxError",
    "ExecutionFailed",
    "ExecutionRequest",
    "ExecutionResult",
    "File",
    "FileInfo",
    "InvalidFileError",
    "IsolationError",
    "Language",
    "LanguageRegistry",
    "Limits",
    "NotFoundError",
    "OutcomeUnknown",
    "Policy",
    "ProviderUnavailable",
    "RateLimited",
    "RequestError",
    "Sandbox",
    "SandboxError",
    "ServerUnreachable",
    "Status",
    "StepResult",
    "UnknownLanguageError",
    "__version__",
    "aconnect",
    "aexecute_code",
    "arun",
    "arun_many",
    "connect",
    "execute_code",
    "run",
    "run_many",
    "testing",
]

PAIRS = [(execbox.run, execbox.arun), (execbox.execute_code, execbox.aexecute_code),
         (execbox.run_many, execbox.arun_many)]


def test_all_is_pinned() -> None:
    assert sorted(execbox.__all__) == EXPECTED_ALL
    assert len(execbox.__all__) == len(set(execbox.__all__))


def test_every_public_name_exists() -> None:
    for name in execbox.__all__:
        assert hasattr(execbox, name), name


def test_star_import_gives_exactly_all() -> None:
    ns: dict[str, object] = {}
    exec("from execbox import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == EXPECTED_ALL


def test_version_is_a_string() -> None:
    assert execbox.__version__ == "0.1.0"


def test_error_tree() -> None:
    assert issubclass(execbox.RequestError, execbox.ExecboxError)
    assert issubclass(execbox.RequestError, ValueError)
    assert issubclass(execbox.UnknownLanguageError, execbox.RequestError)
    assert issubclass(execbox.InvalidFileError, execbox.RequestError)
    assert issubclass(execbox.ExecutionFailed, execbox.ExecboxError)
    assert not issubclass(execbox.ExecutionFailed, execbox.RequestError)
    assert issubclass(execbox.SandboxError, execbox.ExecboxError)
    assert not issubclass(execbox.SandboxError, execbox.RequestError)
    assert issubclass(execbox.ProviderUnavailable, execbox.SandboxError)
    assert issubclass(execbox.IsolationError, execbox.SandboxError)


@pytest.mark.parametrize(("sync", "async_"), PAIRS, ids=["run", "execute_code", "run_many"])
def test_sync_async_parity(sync, async_) -> None:
    assert inspect.iscoroutinefunction(async_)
    assert not inspect.iscoroutinefunction(sync)
    assert sync.__name__ == async_.__name__.removeprefix("a")
    s = inspect.signature(sync, eval_str=True)
    a = inspect.signature(async_, eval_str=True)
    assert list(s.parameters) == list(a.parameters)
    for name in a.parameters:
        sp, ap = s.parameters[name], a.parameters[name]
        assert (sp.kind, sp.default, sp.annotation) == (ap.kind, ap.default, ap.annotation), name
    assert s.return_annotation == a.return_annotation
    assert s.return_annotation in (execbox.ExecutionResult, list[execbox.ExecutionResult])
    assert sync.__doc__ == async_.__doc__


def test_sync_async_pairs_cover_the_public_functions() -> None:
    """Every public coroutine function has a sync twin without the ``a`` prefix, and vice versa."""
    public = {n: getattr(execbox, n) for n in execbox.__all__}
    coros = {n for n, f in public.items() if inspect.iscoroutinefunction(f)}
    assert coros == {"arun", "aexecute_code", "arun_many"}
    for n in coros:
        assert n.removeprefix("a") in public


# --- the sandbox API: every implementation against the one protocol (execbox.protocol) ----------------------

MANAGER = inspect.Parameter("manager", inspect.Parameter.KEYWORD_ONLY, default=None,
                            annotation=sandbox_module.SandboxManager | None)
OPTIONS = inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation=Any)


def _params(f: Any) -> list[tuple[str, Any, Any, Any]]:
    sig = inspect.signature(f, eval_str=True)
    return [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _callables(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and (
        callable(inspect.getattr_static(cls, n)) or isinstance(inspect.getattr_static(cls, n), classmethod))}


# (protocol, implementation, blocking?, the parameter an implementation adds to every method: None for none)
IMPLEMENTATIONS = [
    (protocol.AsyncFilesProtocol, sandbox_module.AsyncFiles, False, None),
    (protocol.AsyncFilesProtocol, client_module.RemoteAsyncFiles, False, None),
    (protocol.AsyncFilesProtocol, blocking.Files, True, None),
    (protocol.AsyncSandboxProtocol, execbox.AsyncSandbox, False, None),
    (protocol.AsyncSandboxProtocol, client_module.RemoteAsyncSandbox, False, None),
    (protocol.AsyncSandboxProtocol, execbox.Sandbox, True, None),
    (protocol.AsyncSandboxProtocol, client_module.RemoteSandbox, True, None),
    (protocol.AsyncSandboxesProtocol, execbox.AsyncSandbox, False, MANAGER),  # its classmethods
    (protocol.AsyncSandboxesProtocol, client_module.AsyncSandboxes, False, None),
    (protocol.AsyncSandboxesProtocol, execbox.Sandbox, True, OPTIONS),  # the backend's (here manager=)
    (protocol.AsyncSandboxesProtocol, client_module.RemoteSandbox, True, OPTIONS),
]


@pytest.mark.parametrize(("proto", "impl", "blocks", "extra"), IMPLEMENTATIONS,
                         ids=[f"{p.__name__}-{i.__module__}.{i.__name__}" for p, i, _, _ in IMPLEMENTATIONS])
def test_every_implementation_follows_the_protocol(proto: type, impl: type, blocks: bool,
                                                   extra: inspect.Parameter | None) -> None:
    """The same names, parameters (kinds, defaults, annotations), return types and docstrings as the protocol;
    coroutines (or async generators) in the async implementations, plain functions (or generators) in the
    blocking ones; the constructors are classmethods where the implementation is a sandbox class."""
    methods = protocol.members(proto)
    assert set(methods) <= _callables(impl) | {"alive", "files"}
    for name, spec in methods.items():
        if name in ("alive", "files"):  # properties, or attributes set per sandbox: checked on live ones
            continue
        fn = getattr(impl, name)
        if blocks:
            assert not inspect.iscoroutinefunction(fn) and not inspect.isasyncgenfunction(fn), name
        else:
            assert inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn), name
        want = _params(spec)
        if extra is not None:
            want.append((extra.name, extra.kind, extra.default, extra.annotation))
        assert _params(fn) == want, name
        assert fn.__doc__ == spec.__doc__ and spec.__doc__, name
        if proto is protocol.AsyncSandboxesProtocol:
            # a sandbox class's classmethods, or (the client's AsyncSandbox) an object's methods
            assert isinstance(inspect.getattr_static(impl, name), classmethod) == (
                impl is not client_module.AsyncSandboxes), name
        else:
            ret = str(inspect.signature(spec, eval_str=True).return_annotation)
            got = str(inspect.signature(fn, eval_str=True).return_annotation)
            assert got == (ret.replace("AsyncIterator", "Iterator") if blocks else ret), name


@pytest.mark.parametrize(("sync_cls", "async_cls"), [(execbox.Sandbox, execbox.AsyncSandbox),
                                                     (sandbox_module.Files, sandbox_module.AsyncFiles)])
def test_sandbox_sync_async_parity(sync_cls: type, async_cls: type) -> None:
    """Sandbox and AsyncSandbox (and their files) expose the same names: every coroutine (or async generator)
    of the async class is a plain function (or generator) of the sync one, a classmethod where it is one."""
    assert _callables(sync_cls) == _callables(async_cls)
    for name in _callables(async_cls):
        a_static, s_static = inspect.getattr_static(async_cls, name), inspect.getattr_static(sync_cls, name)
        assert isinstance(s_static, classmethod) == isinstance(a_static, classmethod), name
    for attr in ("id", "labels", "language", "alive"):
        assert hasattr(execbox.Sandbox, attr), attr


def test_run_signature_is_pinned() -> None:
    params = inspect.signature(execbox.arun).parameters
    assert list(params) == [
        "code",
        "language",
        "stdin",
        "files",
        "entry",
        "args",
        "env",
        "limits",
        "version",
        "arguments",
        "provider",
        "fallback",
        "command",
        "check",
    ]
    assert [p.name for p in params.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD] == [
        "code",
        "language",
    ]
    assert params["language"].default == "python"
    assert params["check"].default is False
    assert list(inspect.signature(execbox.aexecute_code).parameters) == [
        "code",
        "language",
        "timeout",
        "arguments",
    ]
    assert inspect.signature(execbox.aexecute_code).parameters["timeout"].default == 30


# --- the facade, on the mock provider ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
        self.threads.append(threading.get_ident())
        if ".execbox_args.json" in files:
            files[".execbox_return.json"] = b'{"doubled": 42}'
        return echo(spec, files)


@pytest.fixture
def mock(monkeypatch: pytest.MonkeyPatch, tmp_path) -> tuple[MockProvider, Recorder]:
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(tmp_path))
    recorder = Recorder()
    provider = MockProvider(recorder)
    engine = Engine(
        providers=ProviderRegistry(instances={"mock": provider}, default="mock"),
        languages=LanguageRegistry.load(),
    )
    monkeypatch.setattr(api, "default_engine", lambda: engine)
    return provider, recorder


def test_sync_run_outside_a_loop(mock) -> None:
    provider, recorder = mock
    r = execbox.run("print(1)", "python", stdin="in", args=["a", "b"])
    assert r.status is execbox.Status.OK
    assert r.stdout == "python3 main.py a b\nin"
    assert r.provider == "mock"
    assert recorder.threads == [threading.get_ident()]
    assert provider.instances[0].closed


async def test_sync_run_inside_a_running_loop(mock) -> None:
    provider, recorder = mock
    asyncio.get_running_loop()  # we are inside one: asyncio.run() would fail here
    r = execbox.run("print(1)", "python")
    assert r.stdout == "python3 main.py\n"
    assert recorder.threads and recorder.threads[0] != threading.get_ident()  # ran on a helper thread
    r2 = await execbox.arun("print(2)", "python")
    assert r2.stdout == r.stdout
    assert recorder.threads[1] == threading.get_ident()
    assert [i.closed for i in provider.instances] == [True, True]


async def test_sync_facade_inside_a_loop_raises_the_same_errors(mock) -> None:
    with pytest.raises(execbox.UnknownLanguageError):
        execbox.run("x", "no-such-language")


def test_none_means_nothing(mock) -> None:
    """`run(code, stdin=None)` was an invalid request; None is no stdin, no args, no env, no files."""
    provider, _ = mock
    r = execbox.run("print(1)", "python", stdin=None, args=None, env=None, files=None)
    assert r.status is execbox.Status.OK and r.stdout == "python3 main.py\n"
    assert provider.calls[-1].stdin == b"" and provider.calls[-1].argv[-1] == "main.py"


def test_execute_code_sync_and_async_agree(mock) -> None:
    provider, _ = mock
    r = execbox.execute_code(
        "def main(x): return {'doubled': 2 * x}", "python", timeout=7, arguments={"x": 21}
    )
    assert r.status is execbox.Status.OK
    assert r.return_value == {"doubled": 42}
    assert provider.calls[-1].wall_time_s == 7
    assert provider.calls[-1].cpu_time_s == 7
    ra = asyncio.run(execbox.aexecute_code("def main(x): return x", "python", timeout=7, arguments={"x": 21}))
    assert ra.return_value == r.return_value
    assert provider.calls[-1] == provider.calls[-2]


def test_check_true_raises_execution_failed_with_the_result(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(tmp_path))

    def fail(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
        return ProcessOutcome(
            exit_code=3,
            signal=None,
            stdout=b"",
            stderr=b"boom",
            stdout_truncated=False,
            stderr_truncated=False,
            wall_time_s=0.1,
        )

    engine = Engine(
        providers=ProviderRegistry(instances={"mock": MockProvider(fail)}, default="mock"),
        languages=LanguageRegistry.load(),
    )
    monkeypatch.setattr(api, "default_engine", lambda: engine)
    assert execbox.run("x").status is execbox.Status.RUNTIME_ERROR  # check=False: a result
    with pytest.raises(execbox.ExecutionFailed) as ei:
        execbox.run("x", check=True)
    assert ei.value.result.status is execbox.Status.RUNTIME_ERROR
    assert ei.value.result.exit_code == 3
    assert ei.value.result.stderr == "boom"
    assert (
        str(ei.value) == f"execution {ei.value.result.execution_id} ended with status runtime_error: "
        "exited with code 3"
    )


def test_files_mapping_and_sequence_are_equivalent(mock) -> None:
    provider, _ = mock
    execbox.run(files={"a.py": "1", "b.py": b"2"}, entry="b.py")
    execbox.run(
        files=[execbox.File(name="a.py", content="1"), execbox.File(name="b.py", content=b"2")], entry="b.py"
    )
    assert provider.instances[0].files == provider.instances[1].files == {"a.py": b"1", "b.py": b"2"}
    assert provider.calls[0].argv == provider.calls[1].argv == ("python3", "b.py")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"code": None},  # neither code nor files
        {"code": "x", "files": {"../evil": "x"}},
        {"code": "x", "env": {"A=B": "1"}},
        {"code": "x", "stdin": "\udc80"},
    ],
)
def test_bad_requests_raise_request_error_not_a_pydantic_error(mock, kwargs) -> None:
    with pytest.raises(execbox.RequestError) as ei:
        execbox.run(**kwargs)
    assert type(ei.value) is execbox.RequestError
    assert ei.value.__cause__ is not None


@pytest.mark.parametrize("timeout", [0, -1, 3601, float("nan")])
def test_execute_code_bad_timeout_is_a_request_error(mock, timeout) -> None:
    with pytest.raises(execbox.RequestError, match="invalid timeout"):
        execbox.execute_code("x", timeout=timeout)


# --- execbox.testing: what a user needs to test code that uses execbox -----------------------------------------


def test_testing_mocked_runs_the_librarys_entry_points_on_the_mock(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(tmp_path))
    from execbox import testing

    def grader(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
        return testing.outcome(stdout=b"42\n" if b"print(42)" in files.get("main.py", b"") else b"", exit_code=0)

    real = api.default_engine
    with testing.mocked(grader) as provider:
        assert execbox.run("print(42)").stdout == "42\n"
        assert execbox.run("print(1)").stdout == ""
        with execbox.Sandbox.create("python") as sb:
            assert sb.run("print(42)").stdout == "42\n" and sb.files.read("main.py") == b"print(42)"
        assert execbox.run_many(["true"])[0].provider == "mock"
        assert provider.calls[0].argv == ("python3", "main.py") and len(provider.instances) == 4
    assert api.default_engine is real
    stopped = testing.outcome(stopped_by=testing.StopReason.WALL_TIME, exit_code=-1)
    engine = testing.mock_engine(lambda spec, files: stopped)
    assert asyncio.run(engine.execute(execbox.ExecutionRequest(language="python", code="1"))).status is \
        execbox.Status.TIMEOUT
    manager = testing.mock_manager(max_sandboxes=1)
    sb = execbox.Sandbox.create("bash", manager=manager)
    with pytest.raises(execbox.CapacityError):
        execbox.Sandbox.create("bash", manager=manager)
    assert sb.exec("echo hi").stdout == "/bin/sh -c echo hi\n"
    sb.destroy()


def test_client_and_async_client_are_the_remote_clients() -> None:
    assert execbox.Client is client_module.Client and execbox.AsyncClient is client_module.AsyncClient
    assert isinstance(execbox.connect("http://127.0.0.1:1"), execbox.Client)
    assert isinstance(execbox.aconnect("http://127.0.0.1:1"), execbox.AsyncClient)
