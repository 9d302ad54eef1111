"""The stateful code interpreter over HTTP: POST /api/v1/sandboxes/{id}/run_code.

One Python cell in the sandbox's IPython kernel (started by the first call; variables persist between
calls). The answer is the library's CellResult; binary outputs (image/png...) are base64 text. The cell
failing, timing out or killing its kernel is a 200 with a `status`, as a program failing is for exec.
Ownership as for every sandbox route: another key's sandbox is a 404.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter

from execbox.interpreter import CellResult
from execbox.server.deps import PrincipalDep, ServiceDep
from execbox.server.routes.native import ERRORS
from execbox.server.routes.sandboxes import NOT_FOUND, PREFIX, _get
from execbox.wire import RunCodeBody

log = logging.getLogger("execbox.server")
router = APIRouter(prefix=PREFIX, tags=["sandboxes"], responses={**ERRORS, **NOT_FOUND})


@router.post("/{sandbox_id}/run_code", response_model=CellResult)
async def run_code(sandbox_id: str, body: RunCodeBody, service: ServiceDep, principal: PrincipalDep) -> CellResult:
    """Run a Python cell in the sandbox's kernel and wait for its result: its value (`text`), rich outputs
    (`outputs`: one {mime type: data} bundle per display, image/png as base64), stdout, stderr and the
    exception as data (`error`). A cell past its timeout is interrupted (`status: timeout`); a kernel that
    died (`status: kernel_died`) is replaced by the next call (`restarted: true`)."""
    sb = _get(service, principal, sandbox_id)
    async with service.capacity.slot():
        result = await sb.run_code(body.code, timeout_s=body.timeout)
    log.info("sandbox run_code", extra={"fields": {
        "sandbox_id": sb.id, "key": principal.name, "status": result.status.value,
        "execution_count": result.execution_count, "duration_s": result.duration_s, "restarted": result.restarted}})
    return result
