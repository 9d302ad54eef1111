"""execbox: run untrusted code in many languages, with hard limits, on pluggable isolation providers.

    import execbox
    result = execbox.run("print(1)", language="python", limits=execbox.Limits(wall_time_s=5))
    result.status, result.stdout
"""

from execbox.api import aexecute_code, arun, execute_code, run
from execbox.engine import Engine
from execbox.errors import (
    ExecboxError,
    ExecutionFailed,
    InvalidFileError,
    IsolationError,
    ProviderUnavailable,
    RequestError,
    SandboxError,
    UnknownLanguageError,
)
from execbox.languages import Language, LanguageRegistry
from execbox.models import ExecutionRequest, ExecutionResult, File, Limits, Policy, Status, StepResult

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "ExecboxError",
    "ExecutionFailed",
    "ExecutionRequest",
    "ExecutionResult",
    "File",
    "InvalidFileError",
    "IsolationError",
    "Language",
    "LanguageRegistry",
    "Limits",
    "Policy",
    "ProviderUnavailable",
    "RequestError",
    "SandboxError",
    "Status",
    "StepResult",
    "UnknownLanguageError",
    "__version__",
    "aexecute_code",
    "arun",
    "execute_code",
    "run",
]
