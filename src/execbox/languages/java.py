"""Java's fast path: when a plain ``javac`` compiles the sources and the class to run is known beforehand.

java.toml's general compile step (a javac driver) takes any file names and finds the class with ``main`` from
the compiled classes, at ~0.4 s of CPU more than javac alone. This check only chooses between the two: it
answers True when javac surely suffices (every public top-level type is in a file of its name, no package,
and the entry file's type named after it declares ``public static void main(String[])``), and False at any
doubt (a unicode escape, a package, an unbalanced brace, large sources). A wrong True costs a clear javac or
java error, never a wrong program run; it is about names only, nothing here is a security check.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

MAX_SCAN_BYTES = 256 * 1024  # larger sources take the general step (the scan runs on the server's loop)

_TOKEN = re.compile(r'''
    (?P<skip>\s+|//[^\n]*|/\*.*?\*/|"""(?:\\.|.)*?"""|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<word>[A-Za-z_$][\w$]*)
  | (?P<punct>\.\.\.|.)''', re.S | re.X)
_KINDS = {"class", "interface", "enum", "record"}


def _tokens(text: str) -> list[str]:
    return [m.group() for m in _TOKEN.finditer(text) if m.lastgroup != "skip"]


def _main_params(tokens: list[str], i: int) -> bool:
    """``tokens[i]`` is the ``(`` after ``main``: one parameter, a String array or varargs."""
    end = tokens.index(")", i) if ")" in tokens[i:] else len(tokens)
    params = tokens[i + 1:end]
    return "," not in params and "String" in params and ("[" in params or "..." in params)


def _types(text: str) -> list[tuple[set[str], str, bool]] | None:
    """The top-level types: (modifiers, name, declares main); None when the scan is unsure."""
    found: list[tuple[set[str], str, bool]] = []
    tokens = _tokens(text)
    depth = 0
    header: list[str] = []  # the tokens of a top-level declaration so far
    member: list[str] = []  # those of a member declaration in a type's body
    for i, t in enumerate(tokens):
        if t == "{":
            if depth == 0:
                kind = next((j for j, w in enumerate(header) if w in _KINDS), None)
                if kind is None or kind + 1 >= len(header):
                    return None
                found.append((set(header[:kind]), header[kind + 1], False))
                header = []
            depth += 1
            member = []
        elif t == "}":
            depth -= 1
            if depth < 0:
                return None
            member = []
        elif t == ";":
            if depth == 0:
                header = []
            elif depth == 1:
                member = []
        elif depth == 0:
            if t == "package":
                return None
            header.append(t)
        elif depth == 1:
            if (t == "(" and member[-2:] == ["void", "main"] and {"public", "static"} <= set(member)
                    and _main_params(tokens, i)):
                mods, name, _ = found[-1]
                found[-1] = (mods, name, True)
            member.append(t)
    return found if depth == 0 else None


def javac_suffices(files: Mapping[str, bytes], entry: str, sources: list[str]) -> bool:
    """True when ``javac -d . SOURCES`` compiles and ``java <the entry's stem>`` runs a main (see above)."""
    if "/" in entry or sum(len(files[s]) for s in sources) > MAX_SCAN_BYTES:
        return False
    stem = posixpath.splitext(entry)[0]
    for name in sources:
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError:
            return False
        if "\\u" in text:  # unicode escapes can spell any token
            return False
        types = _types(text)
        if types is None:
            return False
        file_stem = posixpath.splitext(posixpath.basename(name))[0]
        if any("public" in mods and type_name != file_stem for mods, type_name, _ in types):
            return False
        if name == entry and not any(type_name == stem and main for _, type_name, main in types):
            return False
    return entry in sources
