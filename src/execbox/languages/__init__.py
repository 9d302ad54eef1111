"""Languages are data: one TOML file each, shipped in ``builtin/`` and extendable without code.

A user adds or overrides a language by dropping ``NAME.toml`` into ``$EXECBOX_LANGUAGES_DIR`` (default
``~/.config/execbox/languages``). Commands are argv lists with placeholders:

    {entry}       the entry file, e.g. main.py
    {entry_stem}  the entry file without its extension, e.g. Main (for java's class name)
    {sources}     every submitted file with one of the language's extensions (expands to several args)
    {args}        the program's arguments (expands to several args)

A language may ship support files (``[files]``, e.g. java's javac driver) written beside the program's, and a
``[fast]`` compile step taken instead of ``compile`` when a named check (``FAST_CHECKS``) says it suffices.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from execbox.errors import UnknownLanguageError
from execbox.languages import java

TOOL_PATH = "/usr/bin:/bin"  # where the sandbox finds toolchains (its root binds /usr)

# name -> (files, entry, sources) -> whether a language's fast compile step suffices for them
FAST_CHECKS: dict[str, Callable[[Mapping[str, bytes], str, list[str]], bool]] = {"java": java.javac_suffices}


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    command: list[str] = Field(min_length=1, description="argv with placeholders")
    output_bytes: int | None = Field(None, description="Output kept for this step (default: the limit's).")


class FastPath(BaseModel):
    """A cheaper compile step, taken instead of ``compile`` when the language's check says the files allow it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    check: str = Field(description=f"The check's name: one of {sorted(FAST_CHECKS)}.")
    compile: Step
    files: dict[str, str] = Field({}, description="Files written when it is taken ({entry_stem} expanded).")

    @field_validator("check")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in FAST_CHECKS:
            raise ValueError(f"unknown check {v!r}; known: {sorted(FAST_CHECKS)}")
        return v


class CallMain(BaseModel):
    """How to call ``main(**arguments)`` and return its JSON value (RAGFlow's execute_code contract)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    file: str
    source: str = Field(description="Driver source; {{code}} is the user's code, {{entry_json}} the entry "
                        "file name as a JSON string. It reads .execbox_args.json, writes .execbox_return.json.")


class Language(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    aliases: list[str] = []
    extensions: list[str]
    entry: str = Field(description="Default entry file name.")
    requires: list[str] = Field(description="Binaries (names on PATH, or absolute paths) it needs.")
    version_command: list[str]
    version_pattern: str = r"(\d+\.\d+(?:\.\d+)?)"
    env: dict[str, str] = {}
    compile: Step | None = None
    fast: FastPath | None = None
    run: Step
    test: Step | None = None
    call_main: CallMain | None = None
    files: dict[str, str] = Field({}, description="Support files written beside the program's, e.g. a driver "
                                  "the compile step runs; their names are reserved, and not among {sources}.")

    def missing(self) -> list[str]:
        """Required binaries not installed here."""
        return [b for b in self.requires
                if not (os.access(b, os.X_OK) if b.startswith("/") else shutil.which(b, path=TOOL_PATH))]

    @property
    def available(self) -> bool:
        return not self.missing()

    def version(self) -> str | None:
        return _probe_version(tuple(self.version_command), self.version_pattern) if self.available else None

    def expand(self, step: Step, entry: str, sources: Sequence[str], args: Sequence[str]) -> tuple[str, ...]:
        stem = posixpath.splitext(entry)[0]
        out: list[str] = []
        for part in step.command:
            if part == "{sources}":
                out += sources
            elif part == "{args}":
                out += args
            else:
                out.append(part.replace("{entry_stem}", stem).replace("{entry}", entry))
        return tuple(out)

    def sources(self, names: Iterable[str]) -> list[str]:
        exts = tuple(f".{e}" for e in self.extensions)
        return sorted(n for n in names if n.endswith(exts) and n not in self.files)

    def build(self, files: Mapping[str, bytes], entry: str) -> tuple[Step | None, dict[str, bytes]]:
        """The compile step for the program ``files`` (the fast one when its check allows) and the support
        files to write beside them."""
        support = {name: text.encode() for name, text in self.files.items()}
        fast = self.fast
        if fast is None or not FAST_CHECKS[fast.check](files, entry, self.sources(files)):
            return self.compile, support
        stem = posixpath.splitext(entry)[0]
        return fast.compile, {**support, **{n: t.replace("{entry_stem}", stem).encode() for n, t in fast.files.items()}}

    def reserved(self) -> set[str]:
        """File names a program cannot use: the language's support files (call_main's are checked apart)."""
        return set(self.files) | (set(self.fast.files) if self.fast else set())

    def driver(self, code: str, entry: str) -> str:
        assert self.call_main is not None
        return self.call_main.source.replace("{{code}}", code).replace("{{entry_json}}", json.dumps(entry))


@functools.cache
def _probe_version(command: tuple[str, ...], pattern: str) -> str | None:
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=20,
                           env={"PATH": TOOL_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, p.stdout + p.stderr)
    return m.group(1) if m else None


def user_dir() -> Path:
    return Path(os.environ.get("EXECBOX_LANGUAGES_DIR") or Path.home() / ".config" / "execbox" / "languages")


class LanguageRegistry:
    """Name or alias (case-insensitive) -> Language. User definitions override built-ins of the same name."""

    def __init__(self, languages: Iterable[Language]) -> None:
        self.languages: dict[str, Language] = {}
        for lang in languages:
            self.languages[lang.name] = lang
        self._index: dict[str, str] = {}
        for lang in self.languages.values():
            for alias in lang.aliases:
                self._index.setdefault(alias.lower(), lang.name)
        for lang in self.languages.values():  # names win over aliases
            self._index[lang.name.lower()] = lang.name

    @classmethod
    def load(cls, extra_dirs: Iterable[Path] = ()) -> LanguageRegistry:
        builtin = sorted(resources.files(__package__).joinpath("builtin").iterdir(), key=lambda f: f.name)
        langs = [_parse(f.read_text(), f.name) for f in builtin if f.name.endswith(".toml")]
        for d in [user_dir(), *extra_dirs]:
            if d.is_dir():
                langs += [_parse(f.read_text(), str(f)) for f in sorted(d.glob("*.toml"))]
        return cls(langs)

    def get(self, name: str) -> Language:
        key = self._index.get(name.strip().lower())
        if key is None:
            raise UnknownLanguageError(name, self.names())
        return self.languages[key]

    def by_extension(self, ext: str) -> Language | None:
        ext = ext.lstrip(".").lower()
        return next((lang for lang in self.languages.values() if ext in lang.extensions), None)

    def names(self) -> list[str]:
        return sorted(self.languages)

    def __iter__(self) -> Iterator[Language]:
        return iter(self.languages[n] for n in self.names())


def _parse(text: str, origin: str) -> Language:
    try:
        return Language.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError) as e:
        raise ValueError(f"invalid language definition {origin}: {e}") from e


@functools.cache
def default_registry() -> LanguageRegistry:
    return LanguageRegistry.load()
