"""The native HTTP API's bodies. They translate to and from the library's one schema (ExecutionRequest,
ExecutionResult); nothing here decides limits or runs anything."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from execbox.errors import RequestError
from execbox.models import MAX_FILES, ExecutionRequest, ExecutionResult, File, Limits

SessionId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileIn(_Body):
    name: str = Field(description="Relative path inside the workdir, e.g. 'main.py' or 'pkg/util.py'.")
    content: str = Field(description="The file's content, encoded as `encoding` says.")
    encoding: Literal["utf8", "base64"] = Field("utf8", description="'utf8' text or 'base64' bytes.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return File._safe_name(v)

    def to_file(self) -> File:
        if self.encoding == "utf8":
            return File(name=self.name, content=self.content)
        try:
            return File(name=self.name, content=base64.b64decode(self.content, validate=True))
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"file {self.name!r}: invalid base64 content") from e


class ExecuteBody(_Body):
    """One execution. `timeout` and `memory_mb` are shorthands for the `limits` fields of the same meaning."""

    language: str = Field(max_length=64, description="Language name or alias: see GET /api/v1/execute/languages.")
    code: str | None = Field(None, description="Source of the entry file.")
    version: str | None = Field(None, max_length=64, description="Wanted version prefix, '*' or null for any.")
    stdin: str = Field("", description="Standard input of the program.")
    environment: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    args: list[str] = Field(default_factory=list, description="Command-line arguments of the program.")
    timeout: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        None, description="Wall and CPU time limit of the run, seconds (capped by the server's maxima).")
    memory_mb: Annotated[int, Field(ge=8, le=65536)] | None = Field(None, description="Memory limit, MiB.")
    limits: Limits | None = Field(None, description="Every limit; `timeout`/`memory_mb` override theirs.")
    files: list[FileIn] = Field(default_factory=list, max_length=MAX_FILES,
                                description="Extra files; with no code, the first one (or `entry`) is run.")
    entry: str | None = Field(None, description="Which file is the entry file.")
    arguments: dict[str, Any] | None = Field(
        None, description="Call the code's main(**arguments); its JSON value comes back in return_value.")
    provider: str | None = Field(None, max_length=64, description="Provider to run on (GET /api/v1/providers).")
    command: Literal["run", "test"] = Field("run", description="'run' the program or 'test' with the "
                                            "language's test runner.")
    session_id: SessionId | None = Field(
        None, description="Group executions: GET /api/v1/sessions/{session_id}/executions lists them.")

    def to_request(self) -> ExecutionRequest:
        """The library's request, or RequestError naming what is wrong."""
        limits: dict[str, Any] = self.limits.model_dump(include=self.limits.model_fields_set) if self.limits else {}
        if self.timeout is not None:
            limits.update(wall_time_s=self.timeout, cpu_time_s=self.timeout)
        if self.memory_mb is not None:
            limits["memory_mb"] = self.memory_mb
        try:
            return ExecutionRequest(
                language=self.language, code=self.code, files=[f.to_file() for f in self.files], entry=self.entry,
                version=self.version, stdin=self.stdin, args=self.args, env=self.environment,
                arguments=self.arguments, limits=Limits(**limits) if limits else None, provider=self.provider,
                command=self.command)
        except ValidationError as e:
            raise RequestError("; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}"
                                         for err in e.errors(include_url=False))) from None


class _SandboxRunBase(_Body):
    language: str | None = Field(None, max_length=64, description="Language name or alias (default: the "
                                 "sandbox's).")

    def to_request(self, language: str) -> ExecutionRequest:
        """The library's request, ``language`` (the sandbox's) unless the body names one; RequestError
        naming what is wrong, as for POST /api/v1/execute."""
        fields = {name: getattr(self, name) for name in self.model_fields_set if name != "language"}
        return ExecuteBody.model_validate({**fields, "language": self.language or language}).to_request()


# ExecuteBody's program fields (not its provider or session: the sandbox has its own), derived not rewritten
SandboxRunBody: type[_SandboxRunBase] = create_model(  # type: ignore[call-overload]
    "SandboxRunBody",
    __base__=_SandboxRunBase,
    __doc__="A program to compile and run in the sandbox, as POST /api/v1/execute runs one in a fresh sandbox: "
            "its files stay in the workdir; its limits are the sandbox's, tightened by `limits`/`timeout`.",
    **{name: (f.annotation, f) for name, f in ExecuteBody.model_fields.items()
       if name not in ("language", "provider", "session_id")},
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


class Queued(_Body):
    execution_id: str
    status: Literal["queued"] = "queued"


class JobStatus(_Body):
    execution_id: str
    status: Literal["queued", "running", "completed"]
    result: ExecuteResponse | None = None


class SessionExecutions(_Body):
    session_id: str
    executions: list[JobStatus]


class LanguageInfo(_Body):
    name: str
    aliases: list[str]
    extensions: list[str]
    version: str | None
    available: bool
    compiled: bool
    commands: list[str] = Field(description="Commands a request may ask for: 'run', and 'test' where defined.")


class ProviderInfo(_Body):
    name: str
    status: Literal["available", "unavailable"]
    is_default: bool
    message: str | None = None


class Providers(_Body):
    providers: list[ProviderInfo]


class ErrorBody(_Body):
    detail: Any = Field(description="What is wrong, in words (a list of field errors for 422).")
    supported: list[str] | None = Field(None, description="The supported languages, for an unknown one.")
