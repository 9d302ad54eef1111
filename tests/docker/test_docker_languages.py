"""Every language the docker images cover passes the same per-language checks as the local provider
(the programs come from tests/test_languages.py's table)."""

from __future__ import annotations

import pytest

from execbox import Engine, ExecutionRequest, ExecutionResult, File, RequestError, Status
from execbox.languages import default_registry
from execbox.providers.docker import DockerProvider
from execbox.providers.docker.images import Catalog
from execbox.providers.registry import ProviderRegistry
from test_languages import ARGS, ARGS_OUT, JAVA_VARIANTS, SPECS, STDIN, UNICODE

CATALOG = Catalog.load()


def _covered(name: str) -> bool:
    """Every binary the language's steps start is provided by one of the images (a data question)."""
    lang = default_registry().get(name)
    steps = [s for s in (lang.compile, lang.run) if s is not None]
    first = steps[0].command[0]
    # typescript runs tsc from the host's /usr/lib/execbox: not in the node image
    extra = [a for s in steps for a in s.command[1:2] if a.startswith("/")]
    return CATALOG.for_binary(first) is not None and not extra


LANGS = sorted(n for n in SPECS if _covered(n))
COMPILED = [n for n in LANGS if SPECS[n].compile_error is not None]


def test_the_images_cover_the_required_languages() -> None:
    assert {"python", "javascript", "c", "cpp", "java", "bash"} <= set(LANGS)


async def _run(engine: Engine, language: str, code: str | None = None, **kw: object) -> ExecutionResult:
    files = kw.pop("files", None) or {}
    request = ExecutionRequest(language=language, code=code, provider="docker",
                               files=[File(name=k, content=v) for k, v in files.items()], **kw)  # type: ignore
    result = await engine.execute(request)
    assert result.provider == "docker"
    return result


def _ok(r: ExecutionResult, stdout: str) -> None:
    detail = f"status={r.status} message={r.message!r} stdout={r.stdout!r} stderr={r.stderr!r} compile={r.compile}"
    assert r.status is Status.OK, detail
    assert r.exit_code == 0, detail
    assert r.stdout == stdout, detail


@pytest.mark.parametrize("language", LANGS)
async def test_hello_world(docker_engine: Engine, language: str) -> None:
    _ok(await _run(docker_engine, language, SPECS[language].hello), "Hello, world!\n")


@pytest.mark.parametrize("language", LANGS)
async def test_stdin(docker_engine: Engine, language: str) -> None:
    _ok(await _run(docker_engine, language, SPECS[language].stdin, stdin=STDIN), STDIN)


@pytest.mark.parametrize("language", LANGS)
async def test_args(docker_engine: Engine, language: str) -> None:
    code = SPECS[language].args
    if code is None:  # the language takes no argv (sql): refused before any container is used
        with pytest.raises(RequestError, match="take no command-line arguments"):
            await _run(docker_engine, language, SPECS[language].hello, args=ARGS)
        return
    _ok(await _run(docker_engine, language, code, args=ARGS), ARGS_OUT)


@pytest.mark.parametrize("language", LANGS)
async def test_multi_file(docker_engine: Engine, language: str) -> None:
    m = SPECS[language].multi
    _ok(await _run(docker_engine, language, m.code, files=m.files), m.stdout)


@pytest.mark.parametrize("language", LANGS)
async def test_entry(docker_engine: Engine, language: str) -> None:
    e = SPECS[language].entry
    _ok(await _run(docker_engine, language, files=e.files, entry=e.entry), e.stdout)


@pytest.mark.parametrize("language", LANGS)
async def test_runtime_error(docker_engine: Engine, language: str) -> None:
    crash = SPECS[language].crash
    r = await _run(docker_engine, language, crash.code)
    assert r.status is Status.RUNTIME_ERROR, r
    assert r.stdout == crash.stdout
    assert (r.exit_code, r.signal) == (crash.exit_code, crash.signal), r
    assert crash.stderr in r.stderr


@pytest.mark.parametrize("language", COMPILED)
async def test_compile_error(docker_engine: Engine, language: str) -> None:
    compile_error = SPECS[language].compile_error
    assert compile_error is not None
    code, fragment = compile_error
    r = await _run(docker_engine, language, code)
    assert r.status is Status.COMPILE_ERROR, r
    assert r.compile is not None and fragment in r.compile.stderr + r.compile.stdout


@pytest.mark.parametrize("language", LANGS)
async def test_unicode(docker_engine: Engine, language: str) -> None:
    _ok(await _run(docker_engine, language, SPECS[language].unicode.replace("@U@", UNICODE)), UNICODE + "\n")


async def test_call_main_returns_a_value(docker_engine: Engine) -> None:
    r = await _run(docker_engine, "python", "def main(a, b):\n    return {'sum': a + b}\n", arguments={"a": 2, "b": 3})
    assert r.status is Status.OK and r.return_value == {"sum": 5}, r


async def test_a_language_without_an_image_is_a_clear_error(docker_engine: Engine) -> None:
    from execbox.errors import ProviderUnavailable

    with pytest.raises(ProviderUnavailable, match="no docker image provides 'go'"):
        await _run(docker_engine, "go", "package main\nfunc main() {}\n")


@pytest.mark.parametrize("variant", ["public class of another name", "package", "main in a second file"])
async def test_java_finds_the_class_to_run(docker_engine: Engine, variant: str) -> None:
    """java.toml's general compile step (a javac driver run by java's source launcher) works in the image."""
    files, stdout = JAVA_VARIANTS[variant]
    _ok(await _run(docker_engine, "java", files=files), stdout)


async def test_java_without_a_main_is_a_compile_error(docker_engine: Engine) -> None:
    r = await _run(docker_engine, "java", files={"test.java": "class A { static void helper() {} }\n"})
    assert r.status is Status.COMPILE_ERROR and r.compile is not None, r
    assert "no class has a method public static void main" in r.compile.stderr


async def test_a_chain_passes_a_language_without_an_image_on_to_the_next_provider(
        docker_provider: DockerProvider) -> None:
    # docker refuses at the start (no image provides go): nothing was handed over, so local may run it
    from tests.providers import local_provider

    local = local_provider("docker-chain", warm_pool=0, sandbox_pool=0)
    registry = ProviderRegistry(default="docker", instances={"docker": docker_provider, "local": local})
    try:
        r = await Engine(providers=registry, chain=["local"]).execute(ExecutionRequest(
            language="go", code='package main\nimport "fmt"\nfunc main() { fmt.Println("from go") }\n'))
        assert r.stdout == "from go\n" and r.provider == "local"
        assert r.provider_attempts[0].phase == "start" and "no docker image provides 'go'" in (
            r.provider_attempts[0].error or "")
    finally:
        await local.aclose()
