"""The one schema shared by the library, the CLI, (later) the HTTP API and config files.

Every model is frozen and rejects unknown fields; every unit is in the field name.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from execbox.errors import InvalidFileError, RequestError

MAX_FILES = 256
MAX_FILE_NAME_BYTES = 255
MAX_LABELS = 32
LabelKey = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]
LabelValue = Annotated[str, Field(max_length=256)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
_LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)
Seconds = Annotated[float, Field(gt=0, le=3600)]  # a time limit
MiB = Annotated[int, Field(ge=1, le=65536)]  # a size limit


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Model):
    """Hard limits for one execution. Fields left unset take the operator's defaults; a request can only
    tighten the operator's maxima, never widen them (see ``Policy``)."""

    model_config = ConfigDict(use_attribute_docstrings=True)  # each field's description is the string below it

    wall_time_s: Seconds = 10.0
    """Wall-clock time for the run step, in seconds; the whole process tree is killed."""
    cpu_time_s: Seconds = 10.0
    """CPU time (all processes together) for the run step, in seconds."""
    compile_wall_time_s: Seconds = 60.0
    """Wall-clock time for the compile step, in seconds."""
    memory_mb: Annotated[MiB, Field(ge=8)] = 512
    """Memory for all processes together, in MiB (cgroup; address-space rlimit otherwise)."""
    pids: Annotated[int, Field(ge=1, le=4096)] = 128
    """Processes and threads alive at once."""
    output_bytes: Annotated[int, Field(ge=1, le=256 * 1024 * 1024)] = 1024 * 1024
    """Bytes kept per output stream; past it the run is killed and marked truncated."""
    file_size_mb: MiB = 64
    """Largest single file a program may write, in MiB."""
    disk_mb: MiB = 256
    """Size of the writable workdir and /tmp together, in MiB."""
    open_files: Annotated[int, Field(ge=16, le=65536)] = 256
    """Open file descriptors per process."""
    network: bool = False
    """Give the sandbox the host's network. Off: loopback only."""

    @classmethod
    def with_timeout(cls, timeout_s: float | None, limits: Limits | None = None, **fields: Any) -> Limits | None:
        """What ``timeout`` means on every face (CLI, library, HTTP): the wall time, and the CPU time with it
        unless the caller sets CPU time itself (in ``limits`` or ``fields``). ``fields`` are other shorthands
        (``memory_mb=...``; None: not given) over ``limits``; only fields set are kept, so the rest take the
        operator's defaults. None when nothing is set. ValidationError for a bad value."""
        values: dict[str, Any] = limits.model_dump(include=limits.model_fields_set) if limits is not None else {}
        values.update({k: v for k, v in fields.items() if v is not None})
        if timeout_s is not None:
            values.setdefault("cpu_time_s", timeout_s)
            values["wall_time_s"] = timeout_s
        return cls(**values) if values else None


class Policy(_Model):
    """Operator policy: the defaults a request starts from and the maxima it can never exceed."""

    defaults: Limits = Field(default_factory=Limits)
    maxima: Limits = Field(default_factory=lambda: Limits(
        wall_time_s=300, cpu_time_s=300, compile_wall_time_s=300, memory_mb=4096, pids=1024,
        output_bytes=64 * 1024 * 1024, file_size_mb=1024, disk_mb=2048, open_files=4096, network=False))

    def apply(self, requested: Limits | None) -> Limits:
        """The limits to enforce: fields the request set explicitly, else the defaults, capped by the maxima."""
        values: dict[str, Any] = self.defaults.model_dump()
        if requested is not None:
            values.update({k: getattr(requested, k) for k in requested.model_fields_set})
        return Limits(**_capped(values, self.maxima))

    def capped(self, caps: Limits | None) -> Policy:
        """This policy with its maxima lowered to the fields ``caps`` sets explicitly (e.g. an API key's caps);
        never raised."""
        if caps is None or not caps.model_fields_set:
            return self
        lowered = _capped(self.maxima.model_dump(), caps, only=caps.model_fields_set)
        return Policy(defaults=self.defaults, maxima=Limits(**lowered))


def _capped(values: dict[str, Any], caps: Limits, only: set[str] | None = None) -> dict[str, Any]:
    """``values`` with each field (of ``only``, default all) at most ``caps``' (for booleans: and)."""
    out = dict(values)
    for name, cap in caps.model_dump().items():
        if only is None or name in only:
            out[name] = (out[name] and cap) if isinstance(cap, bool) else min(out[name], cap)
    return out


def check_file_name(name: str) -> str:
    """A safe relative path inside the workdir, or InvalidFileError."""
    if not name or "\x00" in name:
        raise InvalidFileError(f"file name {name!r} is empty or contains NUL")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise InvalidFileError(f"file name {name!r} is not valid UTF-8") from None
    if name.startswith("/") or "\\" in name:
        raise InvalidFileError(f"file name {name!r} must be a relative POSIX path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidFileError(f"file name {name!r} may not contain '..', '.' or empty segments")
    if any(len(p.encode()) > MAX_FILE_NAME_BYTES for p in parts) or len(parts) > 16:
        raise InvalidFileError(f"file name {name[:64]!r}... is too long or too deep")
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name):
        raise InvalidFileError(f"file name {name!r} contains control characters")
    return posixpath.normpath(name)


def check_cwd(cwd: str) -> str:
    """A working directory: '.' (the workdir; '' too) or a safe relative path inside it, or InvalidFileError."""
    return "." if cwd in ("", ".") else check_file_name(cwd)


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment variables: names non-empty without '='; names and values UTF-8 text without NUL.
    RequestError naming the first bad one."""
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or "=" in k or "\x00" in k + v:
            raise RequestError(f"invalid environment variable {k!r}")
        try:
            (k + v).encode()
        except UnicodeEncodeError:
            raise RequestError(f"environment variable {k!r} is not valid UTF-8 text (lone surrogate)") from None
    return dict(env)


def check_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A sandbox's labels (or a filter of them): at most MAX_LABELS, keys of letters, digits and ``._/-``
    (no ``=`` or ``:``, which separate a label written ``key=value``), values of at most 256 characters.
    RequestError naming the first bad one."""
    try:
        return _LABELS.validate_python(dict(labels or {}), strict=True)
    except (ValidationError, TypeError, ValueError) as e:
        why = e.errors(include_url=False)[0] if isinstance(e, ValidationError) else {"loc": (), "msg": str(e)}
        where = ".".join(map(str, why["loc"]))
        raise RequestError(f"invalid labels{f' ({where})' if where else ''}: {why['msg']}") from None


def parse_labels(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["key=value", ...]`` (``key:value`` is accepted too) -> checked labels; RequestError naming a bad one."""
    out: dict[str, str] = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)  # keys hold neither
        if cut <= 0:
            raise RequestError(f"label {item[:80]!r} is not KEY=VALUE (key:value is accepted too)")
        out[item[:cut]] = item[cut + 1:]
    return check_labels(out)


def _utf8(text: str, what: str) -> str:
    """``text`` when it can be encoded as UTF-8 (no lone surrogates), else ValueError naming ``what``."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (lone surrogate)") from None
    return text


class File(_Model):
    """A file written into the workdir before the program runs."""

    name: str = Field(description="Relative path inside the workdir, e.g. 'main.py' or 'pkg/util.py'.")
    content: str | bytes = Field(description="Text (UTF-8) or raw bytes.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        try:
            return check_file_name(v)
        except InvalidFileError as e:
            raise ValueError(str(e)) from None

    @field_validator("content")
    @classmethod
    def _text(cls, v: str | bytes) -> str | bytes:
        return _utf8(v, "file content") if isinstance(v, str) else v

    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


class ExecutionRequest(_Model):
    """What to run. Give ``code`` (written to the language's entry file) or ``files`` (or both)."""

    language: str = Field(description="Language name or alias, e.g. 'python', 'js', 'c++'.")
    code: str | None = Field(None, description="Source of the entry file.")
    files: list[File] = Field(default_factory=list, description="Extra files; with no code, the first "
                              "file (or `entry`) is the entry file.")
    entry: str | None = Field(None, description="Which file is the entry file (default: code's file or the "
                              "first file).")
    version: str | None = Field(None, description="Wanted version; '*' or None for the installed one.")
    stdin: str | bytes = Field("", description="Standard input of the run step.")
    args: list[str] = Field(default_factory=list, description="Command-line arguments of the program.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    arguments: dict[str, Any] | None = Field(
        None, description="Call the code's main(**arguments) and return its JSON value (python, javascript).")
    limits: Limits | None = Field(None, description="Limits; unset fields take the operator's defaults.")
    provider: str | None = Field(None, description="Provider to run on (default: the configured default, then "
                                 "the fallback chain); naming one pins it (no fallback unless `fallback` names some).")
    fallback: list[str] | None = Field(None, description="Providers to fall back to, in order, in place of the "
                                       "configured chain: tried only when the one before failed before the code "
                                       "was handed to it.", max_length=16)
    command: Literal["run", "test"] = Field(
        "run", description="'run': the compile step (if any), then the program; 'test': the language's test "
        "runner over the files, where the language defines one (it builds what it tests: no compile step).")

    @field_validator("stdin", "args", "env", "files", mode="before")
    @classmethod
    def _none_is_nothing(cls, v: Any, info: ValidationInfo) -> Any:
        """None where nothing is meant (no stdin, no arguments...), as subprocess-like APIs take it."""
        if v is None and info.field_name is not None:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)
        return v

    @field_validator("files")
    @classmethod
    def _file_count(cls, v: list[File]) -> list[File]:
        if len(v) > MAX_FILES:
            raise ValueError(f"at most {MAX_FILES} files")
        if len({f.name for f in v}) != len(v):
            raise ValueError("file names must be unique")
        return v

    @field_validator("entry")
    @classmethod
    def _entry_name(cls, v: str | None) -> str | None:
        return None if v is None else File._safe_name(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env(v)

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str]) -> list[str]:
        if any("\x00" in a for a in v):
            raise ValueError("arguments may not contain NUL")
        return v

    @model_validator(mode="after")
    def _has_code(self) -> ExecutionRequest:
        if self.code is None and not self.files:
            raise ValueError("give `code` or at least one file")
        texts = {"code": self.code, "stdin": self.stdin, "language": self.language}
        for what, text in texts.items():
            if isinstance(text, str):
                _utf8(text, what)
        for text in self.args:
            _utf8(text, "an argument")
        return self


class Status(enum.StrEnum):
    """Why a run stopped."""

    OK = "ok"
    RUNTIME_ERROR = "runtime_error"
    COMPILE_ERROR = "compile_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"
    INTERNAL_ERROR = "internal_error"


class StepResult(_Model):
    """The outcome of one step (e.g. compile)."""

    status: Status
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_time_s: float = 0.0
    cpu_time_s: float | None = None
    max_rss_mb: float | None = None
    message: str | None = Field(None, description="Why the step stopped, in words, when it did not end normally.")


class ProviderAttempt(_Model):
    """One provider tried on the way to a result (the one that ran it last)."""

    provider: str
    phase: Literal["route", "circuit", "start", "run"] = Field(
        description="route: passed over (it cannot honour the request); circuit: its breaker was open; start: "
                    "it failed before the code was handed to it; run: it was given the code.")
    error: str | None = Field(None, description="What went wrong, in words (none: it ran the code).")


class ExecutionResult(StepResult):
    """The outcome of one execution. ``status`` says why it stopped; user code failing is a result."""

    execution_id: str
    language: str
    version: str | None = None
    provider: str
    provider_attempts: list[ProviderAttempt] = Field(
        default_factory=list, description="The providers tried, in order, the one that ran it last.")
    compile: StepResult | None = Field(None, description="The compile step, when the language has one.")
    return_value: Any = Field(None, description="main(**arguments)'s JSON value, when arguments were given.")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def output(self) -> str:
        """stdout followed by stderr (Piston's `output`)."""
        return self.stdout + self.stderr


class FileInfo(_Model):
    """One entry of a sandbox directory listing. Symlinks are reported as such, never followed."""

    name: str = Field(description="The entry's name within the listed directory.")
    path: str = Field(description="Its path relative to the workdir.")
    kind: Literal["file", "dir", "symlink", "other"]
    size_bytes: int = Field(0, description="Size in bytes, for files.")


class ExecEvent(_Model):
    """One event of a streamed exec (``sandbox.stream``): output as it comes, then the result."""

    type: Literal["stdout", "stderr", "exit"]
    data: str = Field("", description="Output text (UTF-8, invalid bytes replaced), for stdout/stderr events.")
    result: ExecutionResult | None = Field(None, description="The exec's whole result, on the exit event.")
