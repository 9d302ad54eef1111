"""The engine above the provider boundary, driven through the shipped MockProvider (no sandbox needed)."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from execbox.engine import ARGS_FILE, RETURN_FILE, Engine, StageEvent
from execbox.errors import (
    ExecboxError,
    InvalidFileError,
    IsolationError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
    SandboxError,
    UnknownLanguageError,
)
from execbox.languages import Language, LanguageRegistry
from execbox.models import ExecutionRequest, ExecutionResult, File, Limits, Policy, Status
from execbox.providers import kinds as provider_kinds
from execbox.providers.base import ExecSpec, InstanceSpec, LiveInput, ProcessOutcome, StopReason
from execbox.providers.kinds import ProviderKind
from execbox.providers.mock import MockInstance, MockProvider, echo
from execbox.providers.registry import ProviderRegistry

Handler = Callable[[ExecSpec, dict[str, bytes]], ProcessOutcome]


def outcome(
    exit_code: int | None = 0,
    signal: int | None = None,
    stdout: bytes = b"",
    stderr: bytes = b"",
    stopped_by: StopReason | None = None,
    **kw: object,
) -> ProcessOutcome:
    fields: dict[str, object] = {"stdout_truncated": False, "stderr_truncated": False, "wall_time_s": 0.25}
    fields.update(kw)
    return ProcessOutcome(
        exit_code=exit_code, signal=signal, stdout=stdout, stderr=stderr, stopped_by=stopped_by, **fields
    )


def const(o: ProcessOutcome) -> Handler:
    return lambda spec, files: o


def sequence(*outcomes: ProcessOutcome) -> Handler:
    it = iter(outcomes)
    return lambda spec, files: next(it)


@pytest.fixture
def languages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LanguageRegistry:
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(tmp_path / "no-user-languages"))
    return LanguageRegistry.load()


@pytest.fixture
def make(languages: LanguageRegistry) -> Callable[..., tuple[Engine, MockProvider]]:
    def make(
        handler: Handler = echo, policy: Policy | None = None, langs: LanguageRegistry | None = None
    ) -> tuple[Engine, MockProvider]:
        provider = MockProvider(handler)
        engine = Engine(
            providers=ProviderRegistry(instances={"mock": provider}, default="mock"),
            languages=langs or languages,
            policy=policy,
        )
        return engine, provider

    return make


def req(code: str | None = "", language: str = "python", **kw: object) -> ExecutionRequest:
    return ExecutionRequest(language=language, code=code, **kw)


# --- what the engine asks the provider to run --------------------------------------------------------------


async def test_python_run_argv_and_files(make) -> None:
    engine, provider = make()
    r = await engine.execute(req("print(1)", args=["a", "b c", ""]))
    assert [s.argv for s in provider.calls] == [("python3", "main.py", "a", "b c", "")]
    assert provider.instances[0].files == {"main.py": b"print(1)"}
    assert r.status is Status.OK
    assert r.stdout == "python3 main.py a b c \n"
    assert r.compile is None
    assert (r.language, r.provider) == ("python", "mock")
    assert re.fullmatch(r"[0-9a-f]{32}", r.execution_id)


async def test_alias_resolves_to_the_canonical_name(make) -> None:
    engine, _ = make()
    r = await engine.execute(req("", language=" PY3 "))
    assert r.language == "python"


async def test_execution_ids_are_unique(make) -> None:
    engine, _ = make()
    ids = {(await engine.execute(req())).execution_id for _ in range(5)}
    assert len(ids) == 5


def _expand(command: list[str], entry: str, sources: list[str], args: list[str]) -> tuple[str, ...]:
    """An independent reading of the placeholder rules, to compare the engine with each TOML definition."""
    stem = entry.rsplit(".", 1)[0] if "." in entry.rsplit("/", 1)[-1] else entry
    out: list[str] = []
    for part in command:
        if part == "{sources}":
            out.extend(sources)
        elif part == "{args}":
            out.extend(args)
        else:
            out.append(part.replace("{entry_stem}", stem).replace("{entry}", entry))
    return tuple(out)


def test_every_builtin_is_exercised(languages: LanguageRegistry) -> None:
    assert languages.names() == [
        "bash",
        "c",
        "cpp",
        "csharp",
        "go",
        "java",
        "javascript",
        "php",
        "python",
        "ruby",
        "rust",
        "sql",
        "typescript",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "bash",
        "c",
        "cpp",
        "csharp",
        "go",
        "java",
        "javascript",
        "php",
        "python",
        "ruby",
        "rust",
        "sql",
        "typescript",
    ],
)
async def test_argv_follows_each_toml_definition(make, languages: LanguageRegistry, name: str) -> None:
    lang = languages.get(name)
    ext = lang.extensions[0]
    helper = f"zz_helper.{ext}"
    engine, provider = make()
    args = ["x", "{entry}"] if "{args}" in lang.run.command else []  # sql takes none (refused if given)
    r = await engine.execute(
        req(
            "code",
            language=name,
            files=[File(name=helper, content="h"), File(name="notes.txt", content="n")],
            args=args,
        )
    )
    assert r.status is Status.OK
    sources = sorted([lang.entry, helper])
    expected = []
    if lang.compile is not None:
        expected.append(_expand(lang.compile.command, lang.entry, sources, []))
    expected.append(_expand(lang.run.command, lang.entry, sources, args))
    assert [s.argv for s in provider.calls] == expected
    assert all("{" not in a for s in expected for a in s[:-1] if a != "{entry}")  # every placeholder expanded
    # the program's files, and the language's support files (java's javac driver) beside them
    support = {n: t.encode() for n, t in lang.files.items()}
    assert provider.instances[0].files == {lang.entry: b"code", helper: b"h", "notes.txt": b"n", **support}


def custom_registry() -> LanguageRegistry:
    return LanguageRegistry(
        [
            Language(
                name="toy",
                aliases=["t"],
                extensions=["toy", "ty"],
                entry="Main.toy",
                requires=[],
                version_command=["true"],
                env={"TOY": "1", "SHARED": "lang"},
                compile={
                    "command": ["toyc", "-o", "{entry_stem}.bin", "{sources}", "--main={entry}"],
                    "output_bytes": 100,
                },
                run={"command": ["./{entry_stem}.bin", "{args}", "--", "{entry}"]},
            )
        ]
    )


async def test_placeholders_expand_exactly(make) -> None:
    engine, provider = make(langs=custom_registry())
    await engine.execute(
        req(
            "main",
            language="t",
            args=["1", "{sources}", "{entry_stem}"],
            files=[
                File(name="lib/b.ty", content=""),
                File(name="a.toy", content=""),
                File(name="README", content=""),
            ],
        )
    )
    compile_, run = provider.calls
    assert compile_.argv == ("toyc", "-o", "Main.bin", "Main.toy", "a.toy", "lib/b.ty", "--main=Main.toy")
    # user arguments are inserted verbatim: placeholders in them are never expanded
    assert run.argv == ("./Main.bin", "1", "{sources}", "{entry_stem}", "--", "Main.toy")


async def test_entry_stem_of_a_nested_entry(make) -> None:
    engine, provider = make(langs=custom_registry())
    await engine.execute(req(None, language="toy", files=[File(name="pkg/Prog.toy", content="")]))
    assert provider.calls[0].argv == ("toyc", "-o", "pkg/Prog.bin", "pkg/Prog.toy", "--main=pkg/Prog.toy")
    assert provider.calls[1].argv == ("./pkg/Prog.bin", "--", "pkg/Prog.toy")


async def test_sources_fall_back_to_the_entry(make) -> None:
    engine, provider = make(langs=custom_registry())
    await engine.execute(req(None, language="toy", files=[File(name="prog", content="")]))
    assert provider.calls[0].argv == ("toyc", "-o", "prog.bin", "prog", "--main=prog")


async def test_java_entry_stem_is_the_class_name(make, languages: LanguageRegistry) -> None:
    # the fast path (plain javac): the class run, named in the run step's argument file, is the entry's stem
    engine, provider = make()
    await engine.execute(req("class Main { public static void main(String[] a) {} }", language="java"))
    compile_, run = provider.calls
    java = languages.get("java")
    assert java.fast is not None and compile_.argv == _expand(java.fast.compile.command, "Main.java", ["Main.java"], [])
    assert compile_.argv[-1] == "Main.java"
    assert provider.instances[0].files[".execbox_main"] == b"Main\n"
    assert "@.execbox_main" in run.argv and "Main.java" not in run.argv
    assert run.argv == _expand(java.run.command, "Main.java", ["Main.java"], [])


async def test_java_general_step_finds_the_class(make, languages: LanguageRegistry) -> None:
    # any other program: the javac driver compiles and names the class to run itself
    engine, provider = make()
    await engine.execute(req("class Prog { public static void main(String[] a) {} }", language="java"))
    compile_, run = provider.calls
    java = languages.get("java")
    assert java.compile is not None
    assert compile_.argv == _expand(java.compile.command, "Main.java", ["Main.java"], [])
    assert ".execbox_main" not in provider.instances[0].files  # the driver writes it
    assert run.argv == _expand(java.run.command, "Main.java", ["Main.java"], [])


async def test_entry_with_code_names_the_code_file(make) -> None:
    engine, provider = make()
    await engine.execute(req("x", entry="app.py", files=[File(name="lib.py", content="")]))
    assert provider.instances[0].files == {"app.py": b"x", "lib.py": b""}
    assert provider.calls[0].argv == ("python3", "app.py")


async def test_files_only_first_file_is_the_entry(make) -> None:
    engine, provider = make()
    await engine.execute(req(None, files=[File(name="z.py", content=""), File(name="a.py", content="")]))
    assert provider.calls[0].argv == ("python3", "z.py")


# --- compile then run ---------------------------------------------------------------------------------------


async def test_compile_then_run(make) -> None:
    engine, provider = make(
        sequence(outcome(stdout=b"compiled", stderr=b"warning: w"), outcome(stdout=b"ran", stderr=b""))
    )
    r = await engine.execute(req("int main(){}", language="c", stdin="input", env={"K": "V"}))
    compile_, run = provider.calls
    assert compile_.argv[0] == "gcc" and run.argv == ("./main",)
    assert compile_.stdin == b"" and run.stdin == b"input"
    assert "K" not in compile_.env and run.env["K"] == "V"
    assert (compile_.wall_time_s, compile_.cpu_time_s) == (60.0, 60.0)
    assert (run.wall_time_s, run.cpu_time_s) == (10.0, 10.0)
    assert r.status is Status.OK
    assert r.stdout == "ran"
    assert r.compile is not None
    assert (r.compile.status, r.compile.stdout, r.compile.stderr) == (Status.OK, "compiled", "warning: w")


async def test_compile_failure_is_a_compile_error_and_nothing_runs(make) -> None:
    engine, provider = make(const(outcome(exit_code=1, stdout=b"o", stderr=b"main.c:1: error: x")))
    r = await engine.execute(req("nope", language="c"))
    assert len(provider.calls) == 1
    assert r.status is Status.COMPILE_ERROR
    assert r.message == "compile step: exited with code 1"
    assert r.exit_code == 1
    assert (r.stdout, r.stderr) == ("", "")
    assert r.compile is not None
    assert r.compile.status is Status.RUNTIME_ERROR
    assert r.compile.stderr == "main.c:1: error: x"
    assert r.compile.stdout == "o"
    assert provider.instances[0].closed


async def test_compile_timeout_keeps_its_status(make) -> None:
    engine, provider = make(const(outcome(exit_code=None, signal=9, stopped_by=StopReason.WALL_TIME)))
    r = await engine.execute(req("", language="c", limits=Limits(compile_wall_time_s=7)))
    assert len(provider.calls) == 1
    assert r.status is Status.TIMEOUT
    assert r.message == "compile step: wall time limit of 7.0s exceeded"


# --- outcomes -> statuses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "status", "message"),
    [
        (StopReason.WALL_TIME, Status.TIMEOUT, "wall time limit of 10.0s exceeded"),
        (StopReason.CPU_TIME, Status.TIMEOUT, "CPU time limit of 10.0s exceeded"),
        (StopReason.MEMORY, Status.MEMORY_LIMIT, "memory limit of 512 MiB exceeded"),
        (StopReason.OUTPUT, Status.OUTPUT_LIMIT, "output limit of 1048576 bytes per stream exceeded"),
        (StopReason.CANCELLED, Status.KILLED, "cancelled"),
    ],
)
async def test_stop_reasons_map_to_statuses(make, reason, status, message) -> None:
    engine, _ = make(
        const(
            outcome(
                exit_code=None,
                signal=9,
                stopped_by=reason,
                stdout=b"partial",
                stdout_truncated=reason is StopReason.OUTPUT,
            )
        )
    )
    r = await engine.execute(req())
    assert r.status is status
    assert r.message == message
    assert (r.exit_code, r.signal, r.stdout) == (None, 9, "partial")
    assert r.stdout_truncated is (reason is StopReason.OUTPUT)
    assert r.ok is False


def test_every_stop_reason_is_mapped() -> None:
    from execbox.engine import _STOP_STATUS

    assert set(_STOP_STATUS) == set(StopReason)


async def test_stop_reason_message_uses_the_clamped_limits(make) -> None:
    engine, _ = make(
        const(outcome(exit_code=None, signal=9, stopped_by=StopReason.MEMORY)),
        policy=Policy(maxima=Limits(memory_mb=64)),
    )
    r = await engine.execute(req(limits=Limits(memory_mb=1000)))
    assert r.message == "memory limit of 64 MiB exceeded"


async def test_nonzero_exit_is_a_runtime_error(make) -> None:
    engine, _ = make(const(outcome(exit_code=2, stderr=b"Traceback")))
    r = await engine.execute(req())
    assert (r.status, r.exit_code, r.signal, r.stderr) == (Status.RUNTIME_ERROR, 2, None, "Traceback")
    assert r.message == "exited with code 2"


async def test_signal_is_a_runtime_error_with_the_signal(make) -> None:
    engine, _ = make(const(outcome(exit_code=None, signal=11)))
    r = await engine.execute(req())
    assert (r.status, r.exit_code, r.signal) == (Status.RUNTIME_ERROR, None, 11)
    assert r.message == "killed by signal 11"


async def test_sigxfsz_names_the_file_size_limit(make) -> None:
    engine, _ = make(const(outcome(exit_code=None, signal=25)))
    r = await engine.execute(req(limits=Limits(file_size_mb=3)))
    assert (r.status, r.message) == (Status.RUNTIME_ERROR, "file size limit of 3 MiB exceeded")


async def test_success_has_no_message(make) -> None:
    engine, _ = make(
        const(outcome(stdout=b"hi", wall_time_s=0.1234567891, cpu_time_s=0.0500000001, max_rss_mb=12.34567))
    )
    r = await engine.execute(req())
    assert (r.status, r.message, r.exit_code, r.stdout) == (Status.OK, None, 0, "hi")
    assert (r.wall_time_s, r.cpu_time_s, r.max_rss_mb) == (0.123457, 0.05, 12.346)


async def test_invalid_utf8_output_is_replaced(make) -> None:
    engine, _ = make(const(outcome(stdout=b"ok \xff\xfe end", stderr=b"\xc3(")))
    r = await engine.execute(req())
    assert r.stdout == "ok \ufffd\ufffd end"
    assert r.stderr == "\ufffd("
    json.loads(r.model_dump_json())  # and the result still serialises


async def test_truncation_flags_pass_through(make) -> None:
    engine, _ = make(const(outcome(stdout_truncated=True, stderr_truncated=True)))
    r = await engine.execute(req())
    assert (r.stdout_truncated, r.stderr_truncated, r.status) == (True, True, Status.OK)


# --- limits, stdin, env, args reach the provider -----------------------------------------------------------


async def test_default_limits_reach_exec_spec(make) -> None:
    engine, provider = make()
    await engine.execute(req())
    s = provider.calls[0]
    assert (
        s.wall_time_s,
        s.cpu_time_s,
        s.memory_mb,
        s.pids,
        s.output_bytes,
        s.file_size_mb,
        s.open_files,
    ) == (10.0, 10.0, 512, 128, 1024 * 1024, 64, 256)
    assert provider.instances[0].spec == InstanceSpec(disk_mb=256, network=False, binaries=("python3",))


async def test_limits_are_clamped_before_they_reach_the_provider(make) -> None:
    policy = Policy(
        maxima=Limits(
            wall_time_s=2,
            cpu_time_s=1,
            memory_mb=64,
            pids=8,
            output_bytes=1000,
            file_size_mb=2,
            disk_mb=16,
            open_files=32,
            network=False,
        )
    )
    engine, provider = make(policy=policy)
    await engine.execute(
        req(
            limits=Limits(
                wall_time_s=100,
                cpu_time_s=100,
                memory_mb=4096,
                pids=4096,
                output_bytes=10**6,
                file_size_mb=100,
                disk_mb=1000,
                open_files=1000,
                network=True,
            )
        )
    )
    s = provider.calls[0]
    assert (
        s.wall_time_s,
        s.cpu_time_s,
        s.memory_mb,
        s.pids,
        s.output_bytes,
        s.file_size_mb,
        s.open_files,
    ) == (2, 1, 64, 8, 1000, 2, 32)
    assert provider.instances[0].spec == InstanceSpec(disk_mb=16, network=False, binaries=("python3",))


async def test_a_request_can_tighten_and_network_when_allowed(make) -> None:
    engine, provider = make(policy=Policy(maxima=Limits(network=True)))
    await engine.execute(req(limits=Limits(wall_time_s=0.5, memory_mb=32, network=True)))
    s = provider.calls[0]
    assert (s.wall_time_s, s.memory_mb, s.cpu_time_s) == (0.5, 32, 10.0)
    assert provider.instances[0].spec == InstanceSpec(disk_mb=256, network=True, binaries=("python3",))


async def test_step_output_bytes_is_capped_by_the_limit(make) -> None:
    engine, provider = make(langs=custom_registry())
    await engine.execute(req("", language="toy", limits=Limits(output_bytes=50)))
    assert [s.output_bytes for s in provider.calls] == [50, 50]
    engine, provider = make(langs=custom_registry())
    await engine.execute(req("", language="toy"))
    assert [s.output_bytes for s in provider.calls] == [100, 1024 * 1024]


@pytest.mark.parametrize(
    ("stdin", "expected"), [("héllo\n", "héllo\n".encode()), (b"\x00\xff", b"\x00\xff"), ("", b"")]
)
async def test_stdin_reaches_exec_spec(make, stdin, expected) -> None:
    engine, provider = make()
    await engine.execute(req(stdin=stdin))
    assert provider.calls[0].stdin == expected


async def test_env_and_args_reach_exec_spec(make, languages: LanguageRegistry) -> None:
    engine, provider = make()
    await engine.execute(req(env={"MY_VAR": "1", "PYTHONUNBUFFERED": "0"}, args=["--flag", "a b"]))
    s = provider.calls[0]
    assert dict(s.env) == {**languages.get("python").env, "MY_VAR": "1", "PYTHONUNBUFFERED": "0"}
    assert s.env["PYTHONUNBUFFERED"] == "0"  # the request's value wins over the language's
    assert s.argv[-2:] == ("--flag", "a b")
    assert s.cwd == "."


# --- arguments: main(**arguments) and its return value ------------------------------------------------------


def returning(data: bytes | None, exit_code: int = 0) -> Handler:
    def handler(spec: ExecSpec, files: dict[str, bytes]) -> ProcessOutcome:
        if data is not None:
            files[RETURN_FILE] = data
        return outcome(exit_code=exit_code)

    return handler


async def test_arguments_write_driver_and_args_and_read_the_return_value(make, languages) -> None:
    engine, provider = make(returning(b'{"sum": 3, "items": [1, "two", null]}'))
    code = "def main(a, b):\n    return {'sum': a + b}\n"
    r = await engine.execute(req(code, arguments={"a": 1, "b": 2}))
    lang = languages.get("python")
    assert lang.call_main is not None
    files = provider.instances[0].files
    assert files["main.py"] == code.encode()
    assert files[ARGS_FILE] == b'{"a": 1, "b": 2}'
    assert files[lang.call_main.file] == lang.driver(code, "main.py").encode()
    assert b'"main.py"' in files[lang.call_main.file]  # the entry name, as JSON
    assert provider.calls[0].argv == ("python3", lang.call_main.file)
    assert r.status is Status.OK
    assert r.return_value == {"sum": 3, "items": [1, "two", None]}


async def test_arguments_for_javascript_embed_the_code(make, languages) -> None:
    engine, provider = make(returning(b"[1]"))
    code = "function main(){return [1]}"
    r = await engine.execute(req(code, language="js", arguments={}))
    driver = provider.instances[0].files["__execbox_call.js"].decode()
    assert driver == languages.get("javascript").driver(code, "main.js")
    assert driver.startswith(code + "\n")
    assert provider.instances[0].files[ARGS_FILE] == b"{}"
    assert r.return_value == [1]


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (None, "main() did not return (no return value written)"),
        (b"{not json", "main()'s return value is not valid JSON"),
        (b"\xff\xfe", "main()'s return value is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "main()'s return value is not valid JSON"),
    ],
)
async def test_bad_return_file_is_a_runtime_error(make, written, message) -> None:
    engine, provider = make(returning(written))
    r = await engine.execute(req("def main(): pass", arguments={}))
    assert (r.status, r.message, r.return_value) == (Status.RUNTIME_ERROR, message, None)
    assert provider.instances[0].closed


async def test_failed_main_does_not_read_the_return_value(make) -> None:
    engine, _ = make(returning(b"123", exit_code=1))
    r = await engine.execute(req("def main(): 1/0", arguments={}))
    assert (r.status, r.message, r.return_value) == (Status.RUNTIME_ERROR, "exited with code 1", None)


async def test_arguments_unsupported_language_is_a_request_error(make) -> None:
    engine, provider = make()
    with pytest.raises(RequestError, match="not supported for c"):
        await engine.execute(req("int main(){}", language="c", arguments={"x": 1}))
    assert provider.instances == []


async def test_arguments_that_are_not_json_are_a_request_error(make) -> None:
    engine, provider = make()
    with pytest.raises(RequestError, match="cannot be encoded as JSON") as ei:
        await engine.execute(req("def main(x): pass", arguments={"x": {1, 2}}))
    assert isinstance(ei.value.__cause__, TypeError)
    assert provider.instances == []


# --- request errors -----------------------------------------------------------------------------------------


async def test_unknown_language(make, languages: LanguageRegistry) -> None:
    engine, provider = make()
    with pytest.raises(UnknownLanguageError) as ei:
        await engine.execute(req("", language="cobol"))
    assert ei.value.language == "cobol"
    assert ei.value.supported == languages.names()
    assert str(ei.value) == f"unknown language 'cobol'; supported: {', '.join(languages.names())}"
    assert "python, ruby" in str(ei.value)
    assert isinstance(ei.value, RequestError)
    assert provider.instances == []


async def test_unknown_provider(make) -> None:
    engine, provider = make()
    with pytest.raises(RequestError, match=r"unknown provider 'nope'; known: .*\bmock\b"):
        await engine.execute(req(provider="nope"))
    assert provider.instances == []


async def test_pinned_provider_is_used(make) -> None:
    engine, provider = make()
    r = await engine.execute(req(provider="mock"))
    assert r.provider == "mock" and len(provider.instances) == 1


async def test_code_and_same_named_file(make) -> None:
    engine, provider = make()
    with pytest.raises(InvalidFileError, match=r"'main\.py' given twice"):
        await engine.execute(req("x", files=[File(name="main.py", content="y")]))
    assert provider.instances == []


async def test_entry_not_among_files(make) -> None:
    engine, provider = make()
    with pytest.raises(InvalidFileError, match=r"entry file 'b\.py' is not among the files"):
        await engine.execute(req(None, entry="b.py", files=[File(name="a.py", content="")]))
    assert provider.instances == []


@pytest.mark.parametrize("names", [["a", "a/b.py"], ["x/y", "x/y/z/w.py"]])
async def test_file_that_is_also_a_directory(make, names: list[str]) -> None:
    engine, provider = make()
    with pytest.raises(InvalidFileError, match=f"'{names[0]}' is given both as a file and as a directory"):
        await engine.execute(req("", files=[File(name=n, content="") for n in names]))
    with pytest.raises(InvalidFileError):
        await engine.execute(req("", entry=names[0], files=[File(name=names[1], content="")]))
    assert provider.instances == []


async def test_similar_names_are_not_a_directory_clash(make) -> None:
    engine, provider = make()
    await engine.execute(
        req(
            "",
            files=[File(name="a", content=""), File(name="ab/c", content=""), File(name="b/a", content="")],
        )
    )
    assert set(provider.instances[0].files) == {"main.py", "a", "ab/c", "b/a"}


async def test_files_over_the_disk_limit(make) -> None:
    engine, provider = make()
    mib = 1024 * 1024
    await engine.execute(req("", files=[File(name="f", content=b"\0" * mib)], limits=Limits(disk_mb=1)))
    with pytest.raises(
        InvalidFileError, match=f"the files \\({mib + 1} bytes\\) exceed the disk limit of 1 MiB"
    ):
        await engine.execute(req("x", files=[File(name="f", content=b"\0" * mib)], limits=Limits(disk_mb=1)))
    assert len(provider.instances) == 1


async def test_disk_limit_is_the_clamped_one(make) -> None:
    engine, _ = make(policy=Policy(maxima=Limits(disk_mb=1)))
    with pytest.raises(InvalidFileError, match="disk limit of 1 MiB"):
        await engine.execute(req("x" * (2 * 1024 * 1024), limits=Limits(disk_mb=100)))


# --- odd but legal input ------------------------------------------------------------------------------------


async def test_empty_code_runs_an_empty_program(make) -> None:
    engine, provider = make()
    r = await engine.execute(req(""))
    assert r.status is Status.OK
    assert provider.instances[0].files == {"main.py": b""}
    assert len(provider.calls) == 1


async def test_binary_garbage_file_is_written_verbatim(make) -> None:
    garbage = bytes(range(256)) * 17 + b"\xff\xfe\x00\xc3("
    engine, provider = make()
    r = await engine.execute(req(None, files=[File(name="main.py", content=garbage)]))
    assert provider.instances[0].files == {"main.py": garbage}
    assert r.status is Status.OK


async def test_binary_entry_with_arguments_does_not_crash(make) -> None:
    engine, provider = make(returning(b"null"))
    r = await engine.execute(
        req(None, language="javascript", files=[File(name="main.js", content=b"\xff\xfe")], arguments={})
    )
    assert r.status is Status.OK and r.return_value is None
    files = provider.instances[0].files
    assert files["main.js"] == b"\xff\xfe"
    assert files["__execbox_call.js"].startswith("\ufffd\ufffd\n".encode())  # the js driver embeds the code


async def test_ten_megabytes_of_code(make) -> None:
    code = "# " + "x" * (10 * 1024 * 1024)
    engine, provider = make()
    r = await engine.execute(req(code))
    assert r.status is Status.OK
    assert len(provider.instances[0].files["main.py"]) == len(code)


# --- provider failures are mapped at the boundary, and the instance is always closed ------------------------


class Boom(MockInstance):
    def __init__(self, provider: MockProvider, spec: InstanceSpec, where: str, exc: BaseException) -> None:
        super().__init__(provider, spec)
        self.where, self.exc = where, exc
        self.close_calls = 0

    async def write_files(self, files):
        if self.where == "write_files":
            raise self.exc
        await super().write_files(files)

    async def exec(self, spec):
        if self.where == "exec":
            raise self.exc
        return await super().exec(spec)

    async def read_file(self, path, max_bytes):
        if self.where == "read_file":
            raise self.exc
        return await super().read_file(path, max_bytes)

    async def close(self) -> None:
        self.close_calls += 1
        await super().close()
        if self.where == "close":
            raise self.exc


class BoomProvider(MockProvider):
    def __init__(self, where: str, exc: BaseException) -> None:
        super().__init__(returning(b"1"))
        self.where, self.exc = where, exc

    async def start(self, spec: InstanceSpec) -> MockInstance:
        if self.where == "start":
            raise self.exc
        inst = Boom(self, spec, self.where, self.exc)
        self.instances.append(inst)
        return inst


NATIVE = [
    RuntimeError("boom"),
    OSError(5, "I/O error"),
    KeyError("k"),
    ValueError("v"),
    TypeError("t"),
    AssertionError("a"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
    ZeroDivisionError("z"),
    NotImplementedError("n"),
    TimeoutError("slow"),
]


BEFORE, AFTER = ["start", "write_files"], ["exec", "read_file"]  # the hand-over: the first process asked for


@pytest.mark.parametrize("where", BEFORE + AFTER)
@pytest.mark.parametrize("exc", NATIVE, ids=lambda e: type(e).__name__)
async def test_no_native_exception_escapes_unmapped(where: str, exc: Exception, languages) -> None:
    provider = BoomProvider(where, exc)
    engine = Engine(
        providers=ProviderRegistry(instances={"mock": provider}, default="mock"), languages=languages
    )
    with pytest.raises(ExecboxError) as ei:
        await engine.execute(req("def main(): pass", arguments={}))
    # once a process was asked for, the code may have run: the outcome is unknown (never retried)
    assert type(ei.value) is (OutcomeUnknown if where in AFTER else SandboxError)
    assert ei.value.__cause__ is exc
    assert str(ei.value).startswith("provider 'mock' failed")
    assert not isinstance(ei.value, RequestError)  # a ValueError from the provider is not the client's fault
    if where != "start":
        (inst,) = provider.instances
        assert isinstance(inst, Boom)
        assert inst.closed and inst.close_calls == 1


@pytest.mark.parametrize("exc", [*NATIVE, IsolationError("no seccomp"), ProviderUnavailable("gone")],
                         ids=lambda e: type(e).__name__)
async def test_a_failed_cleanup_is_logged_and_never_loses_the_result(exc: Exception, languages, caplog) -> None:
    provider = BoomProvider("close", exc)
    engine = Engine(providers=ProviderRegistry(instances={"mock": provider}, default="mock"), languages=languages)
    with caplog.at_level("ERROR", logger="execbox.engine"):
        result = await engine.execute(req("print(1)"))
    assert result.status is Status.OK and provider.instances[0].close_calls == 1
    assert any(r.getMessage() == "instance cleanup failed" and r.fields["error"] == str(exc)  # type: ignore[attr-defined]
               for r in caplog.records)


@pytest.mark.parametrize("where", BEFORE + AFTER)
@pytest.mark.parametrize(
    "exc",
    [IsolationError("no seccomp"), ProviderUnavailable("gone"), SandboxError("x")],
    ids=lambda e: type(e).__name__,
)
async def test_execbox_errors_from_the_provider_pass_through_until_the_hand_over(where: str, exc: Exception,
                                                                                  languages) -> None:
    provider = BoomProvider(where, exc)
    engine = Engine(
        providers=ProviderRegistry(instances={"mock": provider}, default="mock"), languages=languages
    )
    with pytest.raises(ExecboxError) as ei:
        await engine.execute(req("def main(): pass", arguments={}))
    if where in BEFORE:
        assert ei.value is exc
    else:  # "unavailable" said after the hand-over must not let anything run the code again
        assert type(ei.value) is OutcomeUnknown and ei.value.__cause__ is exc and "not run again" in str(ei.value)
    if where != "start":
        assert provider.instances[0].closed


async def test_instance_closed_on_success_and_on_every_failing_status(make) -> None:
    for o in [
        outcome(),
        outcome(exit_code=1),
        outcome(exit_code=None, signal=9, stopped_by=StopReason.MEMORY),
    ]:
        engine, provider = make(const(o))
        await engine.execute(req())
        await engine.execute(req("", language="c"))
        assert [i.closed for i in provider.instances] == [True, True]


async def test_cancellation_is_not_mapped_and_still_closes(languages) -> None:
    import asyncio

    provider = BoomProvider("exec", asyncio.CancelledError())
    engine = Engine(
        providers=ProviderRegistry(instances={"mock": provider}, default="mock"), languages=languages
    )
    with pytest.raises(asyncio.CancelledError):
        await engine.execute(req())
    assert provider.instances[0].closed


# --- the provider registry, through the engine -------------------------------------------------------------


@pytest.fixture
def fake_provider_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("execbox_test_fake_providers")

    class Broken(MockProvider):
        def __init__(self) -> None:
            raise PermissionError(13, "Permission denied: '/run/execbox'")

    class Refusing(MockProvider):
        def __init__(self) -> None:
            raise IsolationError("cannot enforce")

    class Fine(MockProvider):
        pass

    module.Broken, module.Refusing, module.Fine = Broken, Refusing, Fine
    monkeypatch.setitem(sys.modules, module.__name__, module)
    fakes = [ProviderKind(name.lower(), "a test's", f"{module.__name__}:{name}", takes_settings=False)
             for name in ("Broken", "Refusing", "Fine", "Missing")]
    fakes.append(ProviderKind("notinstalled", "a test's", "execbox_no_such_module_xyz:Provider"))
    fakes.append(ProviderKind("needsdep", "a test's", "x:Y", requires=("execbox_no_such_dep_xyz",),
                              install="pip install 'execbox[needsdep]'"))
    monkeypatch.setattr(provider_kinds, "BUILTIN_KINDS", (*provider_kinds.BUILTIN_KINDS, *fakes))
    return module


async def test_registry_maps_constructor_failures(fake_provider_module, languages) -> None:
    engine = Engine(providers=ProviderRegistry(default="fine"), languages=languages)
    r = await engine.execute(req())
    assert isinstance(r, ExecutionResult) and r.provider == "fine"  # the instance's name
    assert engine.providers.get("fine") is engine.providers.get("fine")  # created once

    with pytest.raises(ProviderUnavailable, match="provider 'broken' cannot be set up") as ei:
        await engine.execute(req(provider="broken"))
    assert isinstance(ei.value.__cause__, PermissionError)

    with pytest.raises(ProviderUnavailable, match="provider 'missing' cannot be set up") as ei:
        await engine.execute(req(provider="missing"))
    assert isinstance(ei.value.__cause__, AttributeError)

    with pytest.raises(IsolationError, match="cannot enforce"):
        await engine.execute(req(provider="refusing"))

    with pytest.raises(
        ProviderUnavailable,
        match=r"provider 'notinstalled' cannot be loaded .*"
        r"install: pip install 'execbox\[notinstalled\]'",
    ) as ei:
        await engine.execute(req(provider="notinstalled"))
    assert isinstance(ei.value.__cause__, ImportError)

    # a missing optional dependency is found without importing anything, and named with its fix
    assert engine.providers.unavailable("needsdep") == (
        "needs execbox_no_such_dep_xyz: pip install 'execbox[needsdep]'")
    with pytest.raises(ProviderUnavailable, match=r"'needsdep' \(needsdep\) is unavailable: needs "):
        await engine.execute(req(provider="needsdep"))


async def test_registry_default_from_environment(monkeypatch: pytest.MonkeyPatch, languages) -> None:
    monkeypatch.setenv("EXECBOX_DEFAULT_PROVIDER", "mock")
    engine = Engine(providers=ProviderRegistry(), languages=languages)
    r = await engine.execute(req("x"))
    assert r.provider == "mock"
    assert r.stdout == "python3 main.py\n"  # the shipped MockProvider echoes its argv
    await engine.providers.aclose()


async def test_a_requested_version_must_match_the_installed_one(make, languages: LanguageRegistry) -> None:
    engine, _ = make()
    installed = languages.get("python").version()
    assert installed is not None
    major_minor = ".".join(installed.split(".")[:2])
    for wanted in (None, "*", installed, major_minor, installed.split(".")[0]):
        assert (await engine.execute(req("print(1)", version=wanted))).status is Status.OK
    with pytest.raises(RequestError, match=r"python 2\.7 is not available; installed: " + re.escape(installed)):
        await engine.execute(req("print(1)", version="2.7"))
    with pytest.raises(RequestError):  # a prefix must end at a dot: 3.1 is not 3.11
        await engine.execute(req("print(1)", version=major_minor[:-1]))


async def test_files_named_like_execbox_s_own_are_refused_with_arguments(make) -> None:
    engine, _ = make()
    for name in ("__execbox_call.py", ARGS_FILE):
        with pytest.raises(InvalidFileError, match="reserved"):
            await engine.execute(req("def main(): return 1", files=[File(name=name, content="x")], arguments={}))


# --- the test command, per-request policy ------------------------------------------------------------------


async def test_test_command_runs_the_languages_test_step_after_compiling(make) -> None:
    engine, provider = make()
    r = await engine.execute(req(None, files=[File(name="test_a.py", content="")], command="test"))
    assert [s.argv for s in provider.calls] == [("python3", "-m", "unittest", "discover", "-v")]
    assert r.status is Status.OK
    engine, provider = make()
    await engine.execute(req(None, language="go", files=[File(name="main_test.go", content="")], command="test"))
    assert provider.calls[-1].argv == ("go", "test", "-installsuffix=nocgo", "-v", ".")


async def test_test_command_is_refused_where_the_language_has_none(make) -> None:
    engine, provider = make()
    with pytest.raises(RequestError, match="bash has no test command"):
        await engine.execute(req("true", language="bash", command="test"))
    assert provider.calls == []


async def test_a_per_request_policy_caps_below_the_engines(make) -> None:
    engine, provider = make()
    tight = Policy().capped(Limits(wall_time_s=2, memory_mb=64))
    await engine.execute(req("", limits=Limits(wall_time_s=100, memory_mb=1024)), tight)
    assert (provider.calls[-1].wall_time_s, provider.calls[-1].memory_mb) == (2, 64)
    await engine.execute(req("", limits=Limits(wall_time_s=100)))
    assert provider.calls[-1].wall_time_s == 100  # the engine's own policy is untouched


async def test_a_live_run_reads_input_sent_after_its_prompt_and_emits_as_it_goes() -> None:
    """Engine.execute(live=...) on the real local provider: the answer is written only once the prompt has
    been emitted, so the program can only have read it live; the emitted output is the result's."""
    live, events = LiveInput(), []

    async def emit(event: StageEvent) -> None:
        events.append(event)
        if event.kind == "data" and b"name? " in event.data:
            live.write(b"ada\n")

    request = ExecutionRequest(language="python", code='print("hi", input("name? "))')
    result = await Engine().execute(request, live=(live, emit))
    assert result.status is Status.OK and result.stdout == "name? hi ada\n"
    assert [e.kind for e in events][:1] == ["stage"] and events[-1].kind == "exit"
    assert b"".join(e.data for e in events if e.kind == "data") == result.stdout.encode()
