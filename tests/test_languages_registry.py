"""Languages are data: every builtin TOML parses, names are unique, users add and override without code."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from execbox.errors import UnknownLanguageError
from execbox.languages import Language, LanguageRegistry, Step, user_dir

BUILTIN_DIR = resources.files("execbox.languages").joinpath("builtin")
BUILTIN_FILES = sorted(f.name for f in BUILTIN_DIR.iterdir() if f.name.endswith(".toml"))
PLACEHOLDERS = {"{entry}", "{entry_stem}", "{sources}", "{args}"}

TOY = """
name = "toy"
aliases = ["toylang", "TL"]
extensions = ["toy"]
entry = "main.toy"
requires = []
version_command = ["true"]

[run]
command = ["toy", "{entry}", "{args}"]
"""


@pytest.fixture
def no_user_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "user-languages"
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", str(d))
    return d


@pytest.fixture
def builtin(no_user_dir: Path) -> LanguageRegistry:
    return LanguageRegistry.load()


def test_builtin_files_are_the_expected_set() -> None:
    assert BUILTIN_FILES == [
        "bash.toml",
        "c.toml",
        "cpp.toml",
        "csharp.toml",
        "go.toml",
        "java.toml",
        "javascript.toml",
        "php.toml",
        "python.toml",
        "ruby.toml",
        "rust.toml",
        "sql.toml",
        "typescript.toml",
    ]


@pytest.mark.parametrize("filename", BUILTIN_FILES)
def test_every_builtin_parses(filename: str) -> None:
    data = tomllib.loads(BUILTIN_DIR.joinpath(filename).read_text())
    lang = Language.model_validate(data)
    assert f"{lang.name}.toml" == filename  # the file is named after the language
    assert lang.run.command
    assert lang.entry.endswith(tuple(f".{e}" for e in lang.extensions)), lang.entry
    assert lang.version_command and lang.requires
    for step in (lang.compile, lang.run, lang.test):
        if step is not None:
            for part in step.command:
                # a whole-argument list placeholder is never glued to other text
                assert part in ("{sources}", "{args}") or ("{sources}" not in part and "{args}" not in part)
    if lang.call_main is not None:
        assert "{{code}}" in lang.call_main.source or "{{entry_json}}" in lang.call_main.source
        assert (
            ".execbox_args.json" in lang.call_main.source and ".execbox_return.json" in lang.call_main.source
        )


def test_registry_loads_every_builtin(builtin: LanguageRegistry) -> None:
    assert builtin.names() == [f.removesuffix(".toml") for f in BUILTIN_FILES]
    assert [lang.name for lang in builtin] == builtin.names()
    assert (
        list(builtin.languages) == builtin.names()
    )  # loaded in a stable (sorted) order, not the directory's


def test_names_and_aliases_unique_across_languages(builtin: LanguageRegistry) -> None:
    seen: dict[str, str] = {}
    for lang in builtin:
        for key in [lang.name, *lang.aliases]:
            k = key.lower()
            assert k not in seen, f"{key!r} of {lang.name} is also {seen.get(k)}"
            seen[k] = lang.name
    for key, name in seen.items():
        assert builtin.get(key).name == name


def test_extensions_unique_across_languages(builtin: LanguageRegistry) -> None:
    exts = [e for lang in builtin for e in lang.extensions]
    assert len(exts) == len(set(exts))


def test_get_is_case_and_space_insensitive(builtin: LanguageRegistry) -> None:
    assert builtin.get("Python").name == "python"
    assert builtin.get("  JS ").name == "javascript"
    assert builtin.get("C++").name == "cpp"
    assert builtin.get("c#").name == "csharp"


def test_unknown_language_lists_supported(builtin: LanguageRegistry) -> None:
    with pytest.raises(UnknownLanguageError) as ei:
        builtin.get("brainfuck")
    assert ei.value.supported == builtin.names()
    assert str(ei.value).endswith("supported: " + ", ".join(builtin.names()))


def test_by_extension(builtin: LanguageRegistry) -> None:
    by = builtin.by_extension
    assert (by("py").name, by(".py").name, by(".PY").name) == ("python", "python", "python")
    assert by("cc").name == "cpp"
    assert by("mjs").name == "javascript"
    assert by("ts").name == "typescript"
    assert by("rs").name == "rust"
    assert by("java").name == "java"
    assert by("exe") is None
    assert by("") is None


def test_user_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EXECBOX_LANGUAGES_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert user_dir() == tmp_path / ".config" / "execbox" / "languages"
    monkeypatch.setenv("EXECBOX_LANGUAGES_DIR", "/somewhere/else")
    assert user_dir() == Path("/somewhere/else")


def test_missing_user_dir_is_fine(no_user_dir: Path) -> None:
    assert not no_user_dir.exists()
    assert "python" in LanguageRegistry.load().names()


def test_custom_language_from_user_dir(no_user_dir: Path) -> None:
    no_user_dir.mkdir()
    (no_user_dir / "toy.toml").write_text(TOY)
    (no_user_dir / "README.md").write_text("not a language")
    reg = LanguageRegistry.load()
    toy = reg.get("toylang")
    assert toy.name == "toy"
    assert reg.get("tl") is toy
    assert reg.by_extension("toy") is toy
    assert "toy" in reg.names() and "python" in reg.names()
    assert toy.expand(toy.run, "main.toy", ["main.toy"], ["1", "2"]) == ("toy", "main.toy", "1", "2")


def test_user_language_overrides_builtin_of_the_same_name(no_user_dir: Path) -> None:
    no_user_dir.mkdir()
    (no_user_dir / "python.toml").write_text("""
name = "python"
aliases = ["mypy3"]
extensions = ["py"]
entry = "app.py"
requires = ["pypy3"]
version_command = ["pypy3", "--version"]
[run]
command = ["pypy3", "-u", "{entry}", "{args}"]
""")
    reg = LanguageRegistry.load()
    py = reg.get("python")
    assert py.entry == "app.py"
    assert py.run.command == ["pypy3", "-u", "{entry}", "{args}"]
    assert py.call_main is None
    assert reg.get("mypy3") is py
    with pytest.raises(UnknownLanguageError):
        reg.get("py3")  # the builtin's aliases went with it
    assert reg.names().count("python") == 1
    assert len(reg.names()) == len(BUILTIN_FILES)


def test_extra_dirs_override_the_user_dir(no_user_dir: Path, tmp_path: Path) -> None:
    no_user_dir.mkdir()
    (no_user_dir / "toy.toml").write_text(TOY)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "toy.toml").write_text(TOY.replace('entry = "main.toy"', 'entry = "other.toy"'))
    assert LanguageRegistry.load(extra_dirs=[extra]).get("toy").entry == "other.toy"
    assert LanguageRegistry.load().get("toy").entry == "main.toy"


def test_alias_never_shadows_a_name() -> None:
    a = Language(
        name="a",
        aliases=["b"],
        extensions=["a"],
        entry="m.a",
        requires=[],
        version_command=["true"],
        run=Step(command=["a"]),
    )
    b = Language(
        name="b",
        extensions=["b"],
        entry="m.b",
        requires=[],
        version_command=["true"],
        run=Step(command=["b"]),
    )
    for order in ([a, b], [b, a]):
        reg = LanguageRegistry(order)
        assert reg.get("b") is b
        assert reg.get("a") is a


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("name = \n", "Invalid value"),  # not TOML
        ('name = "x"\n', "Field required"),  # TOML, not a language
        (TOY + "unknown_key = 1\n", "unknown_key"),  # extra="forbid"
        (TOY.replace('command = ["toy", "{entry}", "{args}"]', "command = []"), "command"),
    ],
)
def test_invalid_definition_names_the_file(no_user_dir: Path, text: str, detail: str) -> None:
    no_user_dir.mkdir()
    bad = no_user_dir / "broken.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match="invalid language definition") as ei:
        LanguageRegistry.load()
    assert str(bad) in str(ei.value)
    assert detail in str(ei.value)
    assert ei.value.__cause__ is not None


def test_language_model_is_strict() -> None:
    data = tomllib.loads(TOY)
    with pytest.raises(ValueError):
        Language.model_validate({**data, "run": {"command": ["x"], "extra": 1}})
    with pytest.raises(ValueError):
        Language.model_validate({k: v for k, v in data.items() if k != "run"})


def test_missing_and_available(no_user_dir: Path) -> None:
    lang = Language.model_validate(
        {**tomllib.loads(TOY), "requires": ["sh", "/definitely/not/here", "no-such-binary-xyz"]}
    )
    assert lang.missing() == ["/definitely/not/here", "no-such-binary-xyz"]
    assert lang.available is False
    assert lang.version() is None  # never probed when not installed


def test_sources_are_sorted_and_filtered() -> None:
    lang = Language.model_validate({**tomllib.loads(TOY), "extensions": ["toy", "ty"]})
    assert lang.sources(["z.toy", "a.ty", "b.txt", "dir/c.toy", "toy"]) == ["a.ty", "dir/c.toy", "z.toy"]
