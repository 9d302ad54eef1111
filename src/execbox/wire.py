"""The native HTTP API's wire schema: every body and answer of /api/v1 (execute, sandboxes, exec, files,
run_code), and the one table of HTTP statuses and execbox's exceptions. The server validates requests and
shapes answers with these models, the remote client (execbox.client) serialises its requests with them and
parses the answers: one definition for both sides.

The bodies translate to and from the library's one schema (ExecutionRequest, ExecutionResult), whose fields
they take rather than repeat; nothing here decides limits or runs anything. Bodies reject unknown fields;
answers ignore them (a client keeps working against a newer server). pydantic only: no web stack.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic.fields import FieldInfo

from execbox.errors import (
    AtCapacity,
    AuthenticationError,
    CapacityError,
    ExecboxError,
    NotFoundError,
    OutcomeUnknown,
    ProviderUnavailable,
    RequestError,
    SandboxError,
)
from execbox.models import (
    MAX_FILES,
    ExecutionRequest,
    ExecutionResult,
    File,
    FileInfo,
    Labels,
    Limits,
    ProviderAttempt,
    check_cwd,
    check_env,
    check_labels,
)
from execbox.providers.kinds import Capabilities

SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
Name = Annotated[str, Field(max_length=64)]
Timeout = Annotated[float, Field(gt=0, le=3600)]
TIMEOUT_HELP = ("Time limit, seconds: the wall time, and the CPU time with it unless `limits.cpu_time_s` is "
                "given (Limits.with_timeout)")


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def _text(v: str, what: str) -> str:
    """UTF-8 text without NUL (what argv, environments and paths can carry)."""
    try:
        v.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (lone surrogate)") from None
    if "\0" in v:
        raise ValueError(f"{what} contains NUL")
    return v


def as_text(data: str | bytes | None, what: str) -> str:
    """``data`` as JSON text: bytes must be UTF-8 (RequestError otherwise), None is none."""
    if data is None or isinstance(data, str):
        return data or ""
    try:
        return bytes(data).decode()
    except UnicodeDecodeError:
        raise RequestError(f"{what} given as bytes must be UTF-8 text over HTTP") from None


def field_errors(e: ValidationError) -> str:
    """A ValidationError in words: each field's path and message."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors(include_url=False))


if TYPE_CHECKING:
    from execbox.routing import Breaker


# ---------------------------------------------------------------------------------------------- execute

class FileIn(_Body):
    name: str = Field(description="Relative path inside the workdir, e.g. 'main.py' or 'pkg/util.py'.")
    content: str = Field(description="The file's content, encoded as `encoding` says.")
    encoding: Literal["utf8", "base64"] = Field("utf8", description="'utf8' text or 'base64' bytes.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return File._safe_name(v)

    @classmethod
    def of(cls, f: File) -> FileIn:
        if isinstance(f.content, str):
            return cls(name=f.name, content=f.content)
        return cls(name=f.name, content=base64.b64encode(f.content).decode(), encoding="base64")

    def to_file(self) -> File:
        if self.encoding == "utf8":
            return File(name=self.name, content=self.content)
        try:
            return File(name=self.name, content=base64.b64decode(self.content, validate=True))
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"file {self.name!r}: invalid base64 content") from e


def _request_field(name: str, **http: Any) -> tuple[Any, FieldInfo]:
    """ExecutionRequest's field ``name``, with what HTTP adds (a length bound, a description)."""
    f = ExecutionRequest.model_fields[name]
    return f.annotation, FieldInfo.merge_field_infos(f, Field(**http)) if http else f


# The fields an execution has on every face, taken from the library's request, not written again; HTTP
# bounds the names' lengths.
_SHARED = ("language", "code", "entry", "version", "args", "arguments", "provider", "fallback", "command",
           "limits")
_HTTP: dict[str, dict[str, Any]] = {
    "language": {"max_length": 64, "description": "Language name or alias: see GET /api/v1/execute/languages."},
    "version": {"max_length": 64},
    "provider": {"max_length": 64, "description": "Provider to run on (GET /api/v1/providers)."},
    "limits": {"description": "Every limit; unset fields take the server's defaults; `timeout` and `memory_mb` "
                              "override theirs."},
}
_ExecuteShared: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_ExecuteShared", __base__=_Body, **{n: _request_field(n, **_HTTP.get(n, {})) for n in _SHARED})


class ExecuteBody(_ExecuteShared):
    """One execution: ExecutionRequest's fields over JSON (files with an encoding, stdin as text), and
    `timeout` and `memory_mb`, shorthands for the `limits` fields of the same meaning."""

    files: list[FileIn] = Field(default_factory=list, max_length=MAX_FILES,
                                description="Extra files; with no code, the first one (or `entry`) is run.")
    stdin: str = Field("", description="Standard input of the program.")
    env: dict[str, str] = Field(default_factory=dict, validation_alias=AliasChoices("env", "environment"),
                                description="Extra environment variables (`environment` is accepted too).")
    timeout: Timeout | None = Field(None, description=TIMEOUT_HELP + " (capped by the server's maxima).")
    memory_mb: Annotated[int, Field(ge=8, le=65536)] | None = Field(None, description="Memory limit, MiB.")
    session_id: SessionId | None = Field(
        None, description="Group executions: GET /api/v1/sessions/{session_id}/executions lists them.")

    @classmethod
    def of(cls, request: ExecutionRequest) -> ExecuteBody:
        """The body of ``request`` (RequestError for what JSON cannot carry)."""
        shared = {n: getattr(request, n) for n in _SHARED}
        try:
            return cls(**shared, files=[FileIn.of(f) for f in request.files], env=request.env,
                       stdin=as_text(request.stdin, "stdin"))
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None

    def to_request(self) -> ExecutionRequest:
        """The library's request, or RequestError naming what is wrong."""
        shared = {n: getattr(self, n) for n in _SHARED}
        limits = shared.pop("limits")
        try:
            return ExecutionRequest(
                **shared, files=[f.to_file() for f in self.files], stdin=self.stdin, env=self.env,
                limits=Limits.with_timeout(self.timeout, limits, memory_mb=self.memory_mb))
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None


class _SandboxRunBase(_Body):
    language: str | None = Field(None, max_length=64, description="Language name or alias (default: the "
                                 "sandbox's).")

    def to_request(self, language: str) -> ExecutionRequest:
        """The library's request, ``language`` (the sandbox's) unless the body names one; RequestError
        naming what is wrong, as for POST /api/v1/execute."""
        fields = {name: getattr(self, name) for name in self.model_fields_set if name != "language"}
        return ExecuteBody.model_validate({**fields, "language": self.language or language}).to_request()


# ExecuteBody's program fields (not its providers or session: the sandbox has its own), derived not rewritten
SandboxRunBody: type[_SandboxRunBase] = create_model(  # type: ignore[call-overload]
    "SandboxRunBody",
    __base__=_SandboxRunBase,
    __doc__="A program to compile and run in the sandbox, as POST /api/v1/execute runs one in a fresh sandbox: "
            "its files stay in the workdir; its limits are the sandbox's, tightened by `limits`/`timeout`.",
    **{name: (f.annotation, f) for name, f in ExecuteBody.model_fields.items()
       if name not in ("language", "provider", "fallback", "session_id")},
)


# Every ExecutionResult field, plus the seed API's four: one model, derived rather than written twice.
ExecuteResponse: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ExecuteResponse",
    __config__=ConfigDict(frozen=True),
    __doc__="The result of one execution: `success`, `output` (stdout), `error` (stderr or the reason it "
            "stopped, null when none) and `execution_time` (seconds), then every field of ExecutionResult.",
    success=(bool, Field(description="status is 'ok'.")),
    output=(str, Field(description="The program's stdout.")),
    error=(str | None, Field(description="stderr, or why the run stopped, or null.")),
    execution_time=(float, Field(description="Wall time of the run step, seconds.")),
    **{name: (f.annotation, f) for name, f in ExecutionResult.model_fields.items()},
)


def execute_response(result: ExecutionResult) -> dict[str, Any]:
    error = result.stderr or result.message or None
    return {"success": result.ok, "output": result.stdout, "error": error, "execution_time": result.wall_time_s,
            **result.model_dump(mode="json")}


def parse_result(body: Any) -> ExecutionResult:
    """The ExecutionResult inside an execute-shaped answer (it adds success/output/error/execution_time)."""
    return ExecutionResult.model_validate({k: v for k, v in body.items() if k in ExecutionResult.model_fields})


class Queued(_Answer):
    execution_id: str
    status: Literal["queued"] = "queued"


class JobStatus(_Answer):
    execution_id: str
    status: Literal["queued", "running", "completed"]
    result: ExecuteResponse | None = None


class SessionExecutions(_Answer):
    session_id: str
    executions: list[JobStatus]


class LanguageInfo(_Answer):
    name: str
    aliases: list[str]
    extensions: list[str]
    version: str | None
    available: bool
    compiled: bool
    commands: list[str] = Field(description="Commands a request may ask for: 'run', and 'test' where defined.")


class BreakerInfo(_Answer):
    state: Literal["closed", "open", "half_open"] = Field(
        description="closed: in use; open: skipped after repeated faults; half_open: one probe may go through.")
    faults: int = Field(0, description="Provider faults in a row.")
    retry_in_s: float | None = Field(None, description="Seconds until an open circuit lets a probe through.")
    last_error: str | None = Field(None, description="The last fault, in words.")

    @classmethod
    def of(cls, b: Breaker) -> BreakerInfo:
        return cls(state=b.state.value, faults=b.faults, retry_in_s=b.retry_in_s(), last_error=b.last_error)


class ProviderInfo(_Answer):
    name: str
    kind: str = Field(description="Its kind (local, docker, ssh, remote, ...): several instances may share one.")
    status: Literal["available", "unavailable"]
    is_default: bool
    chain_position: int | None = Field(None, description="Its place in the fallback chain (0: the default).")
    message: str | None = Field(None, description="Why it is unavailable, with the fix.")
    breaker: BreakerInfo
    capabilities: Capabilities


class Providers(_Answer):
    providers: list[ProviderInfo]


class ErrorBody(_Answer):
    detail: Any = Field(description="What is wrong, in words (a list of field errors for 422).")
    supported: list[str] | None = Field(None, description="The supported languages, for an unknown one.")
    provider_attempts: list[ProviderAttempt] | None = Field(
        None, description="When no provider could run it: each one tried and how it failed.")


# ---------------------------------------------------------------------------------------------- sandboxes

LABEL_HELP = ("A label filter `key=value` (`key:value` is accepted too); repeat for several: a sandbox matches "
              "when it has them all.")


class CreateBody(_Body):
    """A new sandbox. Its limits are each exec's defaults and the sandbox's caps (memory and pids of everything
    alive in it at once, disk of its workdir), capped by the server's maxima and the key's caps."""

    language: Name = Field("python", description="Language (its environment and runtime).")
    labels: Labels = Field(default_factory=dict, description="Labels to find it again: GET ?label=key=value.")
    ttl_s: Annotated[float, Field(gt=0, le=365 * 86400)] | None = Field(
        None, description="Idle seconds before it is destroyed (default and maximum: the server's settings).")
    max_lifetime_s: Annotated[float, Field(gt=0, le=365 * 86400)] | None = Field(
        None, description="Hard maximum age, seconds, used or not (default and maximum: the server's "
                          "sandbox_max_lifetime_s).")
    limits: Limits | None = Field(None, description="Limits of every exec and caps of the sandbox.")
    provider: Name | None = Field(None, description="Provider (GET /api/v1/providers); pinned: no fallback "
                                  "unless `fallback` names some.")
    fallback: list[Name] | None = Field(None, max_length=16, description="Providers to try next, in order, "
                                        "when the one before cannot start the sandbox (in place of the chain).")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of every exec.")

    _env = field_validator("env")(check_env)

    @classmethod
    def of(cls, language: str, labels: Any, ttl_s: float | None, max_lifetime_s: float | None,
           limits: Limits | None, provider: str | None, env: Any, fallback: Any = None) -> CreateBody:
        """A client's body from the library's arguments (RequestError as the library's checks say)."""
        try:
            return cls(language=language, labels=check_labels(labels), ttl_s=ttl_s, max_lifetime_s=max_lifetime_s,
                       limits=limits, provider=provider, env=check_env(env or {}),
                       fallback=None if fallback is None else list(fallback))
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None


class SandboxInfo(_Answer):
    id: str
    language: str
    provider: str
    labels: dict[str, str]
    created_at: float = Field(description="Unix time of creation, seconds.")
    last_used_at: float = Field(description="Unix time of the last operation's start or end, seconds.")
    ttl_s: float = Field(description="Idle seconds before it is destroyed.")
    idle_expires_at: float = Field(description="Unix time it is destroyed if nothing uses it before.")
    max_lifetime_s: float = Field(description="Hard maximum age, seconds.")
    expires_at: float = Field(description="Unix time it is destroyed at the latest, used or not.")
    limits: Limits = Field(description="Each exec's defaults and the sandbox's caps.")


class SandboxList(_Answer):
    sandboxes: list[SandboxInfo]


Command = (Annotated[str, Field(min_length=1, max_length=1 << 20)]
           | Annotated[list[Annotated[str, Field(max_length=1 << 20)]], Field(min_length=1, max_length=4096)])


class ExecBody(_Body):
    """One command in the sandbox. `timeout` is a shorthand for `limits.wall_time_s` and (unless `limits`
    sets it) `cpu_time_s`."""

    command: Command = Field(description="A shell command (run by /bin/sh -c) or an argv list.")
    stdin: str = Field("", description="Standard input of the command.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: str = Field(".", max_length=4096, description="Working directory, relative to the workdir.")
    timeout: Timeout | None = Field(None, description=TIMEOUT_HELP + " (capped by the sandbox's).")
    limits: Limits | None = Field(None, description="Limits of this command; they can only tighten the sandbox's.")

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("empty command")
            return _text(v, "command")
        return [_text(a, "an argument") for a in v]

    @field_validator("stdin")
    @classmethod
    def _stdin(cls, v: str) -> str:
        try:
            v.encode()
        except UnicodeEncodeError:
            raise ValueError("stdin is not valid UTF-8 text (lone surrogate)") from None
        return v

    _env = field_validator("env")(check_env)

    @classmethod
    def of(cls, command: str | list[str], stdin: str | bytes | None, env: Any, cwd: str,
           limits: Limits | None) -> ExecBody:
        """A client's body from the library's arguments (RequestError as the library's checks say)."""
        try:
            return cls(command=command, stdin=as_text(stdin, "stdin"), env=check_env(env or {}),
                       cwd=check_cwd(cwd), limits=limits)
        except ValidationError as e:
            raise RequestError(field_errors(e)) from None

    def exec_limits(self) -> Limits | None:
        return Limits.with_timeout(self.timeout, self.limits)

    def check_cwd(self) -> None:
        """InvalidFileError (a 400, as for a file's path) for a cwd outside the workdir."""
        check_cwd(self.cwd)


class OutputData(_Answer):
    """The data of a streamed exec's `stdout` and `stderr` events."""

    data: str


class Written(_Answer):
    path: str
    size_bytes: int


class Listing(_Answer):
    dir: str
    entries: list[FileInfo]


class RunCodeBody(_Body):
    """One Python cell. `timeout` is the cell's wall time (default and maximum: the sandbox's wall_time_s)."""

    code: str = Field(max_length=1 << 22, description="Python source of the cell (IPython syntax: %magics too).")
    timeout: Timeout | None = Field(
        None, description="Seconds before the cell is interrupted (then its kernel killed if it does not stop).")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        return _text(v, "code")


# ---------------------------------------------------------------------------------------------- errors

# execbox's exceptions and HTTP statuses, one table for both sides. The server answers an exception with the
# status of the first row it is an instance of; the client raises, for a status, the class of the first row
# with that status (among the rows that say Retry-After, when the answer has one). Rows the server never
# reaches (a class listed before with another status) are the client's alone.
ERROR_STATUS: list[tuple[type[ExecboxError], int, bool]] = [  # (exception, status, answered with Retry-After)
    (NotFoundError, 404, False),  # no such sandbox (or another key's) or file
    (AuthenticationError, 401, False),
    (AuthenticationError, 403, False),
    (RequestError, 400, False),
    (RequestError, 413, False),  # a body over the server's maximum
    (RequestError, 422, False),  # a body not of the schema
    (AtCapacity, 503, True),  # no execution slot freed in time (or the waiting room is full): retry later
    (CapacityError, 429, True),  # a count reached (live sandboxes, a key's rate or jobs): wait or destroy one
    (OutcomeUnknown, 502, False),  # the provider failed after the code was handed to it: never retried
    (ProviderUnavailable, 503, False),  # the provider is down: retrying (or another provider) may help
    (SandboxError, 500, False),
    (ExecboxError, 500, False),
]
RETRY_AFTER_S = 5  # of a CapacityError that does not say (``retry_after_s``)
# On an error answer of POST /api/v1/execute: "no" says the code was not run (the error came before the hand-over
# to a provider). A 5xx without it (a proxy's, or OutcomeUnknown) may have run: a front never sends it again.
CODE_RUN_HEADER = "Execbox-Code-Run"


def status_of(exc: ExecboxError) -> tuple[int, int | None]:
    """The server's answer to ``exc``: its HTTP status and Retry-After seconds (None: no header)."""
    _, status, retry = next(row for row in ERROR_STATUS if isinstance(exc, row[0]))
    if not retry:
        return status, None
    seconds = getattr(exc, "retry_after_s", None)
    return status, max(1, math.ceil(seconds)) if seconds is not None else RETRY_AFTER_S


def error_of(status: int, retry_after: bool) -> type[ExecboxError] | None:
    """The client's exception class for an HTTP error status (None: not in the table)."""
    rows = [row for row in ERROR_STATUS if row[1] == status]
    row = next((r for r in rows if r[2] == retry_after), rows[0] if rows else None)
    return None if row is None else row[0]
