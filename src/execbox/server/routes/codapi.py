"""Codapi drop-in: POST /v1/exec ``{sandbox, command, files}`` -> ``{id, ok, duration, stdout, stderr}``.

Sandboxes are the languages (names and aliases); commands are ``run`` everywhere and ``test`` where the
language defines one. The file named ``""`` is the sandbox's entry file. Errors keep the result shape
(``ok: false``, the reason in ``stderr``), as Codapi's do.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from execbox.errors import RequestError, UnknownLanguageError
from execbox.models import MAX_FILES, ExecutionRequest, File
from execbox.server.deps import PrincipalDep, ServiceDep

PREFIX = "/v1/"


class CodapiResult(BaseModel):
    id: str = Field(description="sandbox_command_random")
    ok: bool
    duration: int = Field(description="milliseconds")
    stdout: str
    stderr: str


def error_shape(message: str, extra: Any) -> dict[str, Any]:
    return {"id": f"error_{secrets.token_hex(4)}", "ok": False, "duration": 0, "stdout": "", "stderr": message}


router = APIRouter(tags=["codapi"], responses={
    code: {"model": CodapiResult, "description": "Codapi's result with ok=false and the reason in stderr."}
    for code in (400, 401, 404, 413, 429, 500, 503)})


class CodapiExec(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"sandbox": "python", "command": "run", "files": {"": "print('hello')"}}]})
    sandbox: str = Field(max_length=64)
    command: Literal["run", "test"] = "run"
    version: str | None = Field(None, max_length=64)
    files: dict[str, str] = Field(default_factory=dict, max_length=MAX_FILES)
    stdin: str = ""


@router.post("/v1/exec", response_model=CodapiResult)
async def exec_(body: CodapiExec, service: ServiceDep, principal: PrincipalDep) -> CodapiResult:
    """Run a sandbox's command over the files."""
    service.admit(principal)
    try:
        lang = service.engine.languages.get(body.sandbox)
    except UnknownLanguageError as e:  # Codapi answers an unknown sandbox with 404
        raise HTTPException(404, str(e)) from None
    code = body.files.get("")
    try:
        files = [File(name=n, content=c) for n, c in body.files.items() if n != ""]
        request = ExecutionRequest(language=lang.name, version=body.version, code=code, files=files,
                                   stdin=body.stdin, command=body.command)
    except ValidationError as e:
        raise RequestError("; ".join(err["msg"] for err in e.errors(include_url=False))) from None
    service.check(request, principal)
    result = await service.execute(principal, request)
    stderr = result.stderr
    if not result.ok and result.message and result.message not in stderr:
        stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + f"({result.message})"
    if result.compile is not None and result.compile.status != "ok":
        stderr = result.compile.stdout + result.compile.stderr + stderr
    return CodapiResult(id=f"{lang.name}_{body.command}_{secrets.token_hex(4)}", ok=result.ok,
                        duration=round((result.wall_time_s + (result.compile.wall_time_s if result.compile else 0))
                                       * 1000), stdout=result.stdout, stderr=stderr)
