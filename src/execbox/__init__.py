"""execbox: run untrusted code in many languages, with hard limits, on pluggable isolation providers.

    import execbox
    result = execbox.run("print(1)", language="python", limits=execbox.Limits(wall_time_s=5))
    result.status, result.stdout

``Sandbox``/``AsyncSandbox``: persistent sandboxes (``execbox.protocol`` is their API); ``connect``/``Client``
and ``aconnect``/``AsyncClient``: the same API and ``run`` on an execbox server; ``execbox.testing``: the mock
provider, to test code that uses execbox without running anything.
"""

from execbox import testing
from execbox.api import aexecute_code, arun, execute_code, run
from execbox.batch import arun_many, run_many
from execbox.client import AsyncClient, Client, aconnect, connect
from execbox.engine import Engine
from execbox.errors import (
    AtCapacity,
    AuthenticationError,
    CapacityError,
    CircuitOpen,
    ExecboxError,
    ExecutionFailed,
    InvalidFileError,
    IsolationError,
    NotFoundError,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    RequestError,
    SandboxError,
    ServerUnreachable,
    UnknownLanguageError,
)
from execbox.interpreter import CellError, CellResult, CellStatus
from execbox.languages import Language, LanguageRegistry
from execbox.models import (
    ExecEvent,
    ExecutionRequest,
    ExecutionResult,
    File,
    FileInfo,
    Limits,
    Policy,
    Status,
    StepResult,
)
from execbox.sandbox import AsyncSandbox, Sandbox

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncSandbox",
    "AtCapacity",
    "AuthenticationError",
    "CapacityError",
    "CellError",
    "CellResult",
    "CellStatus",
    "CircuitOpen",
    "Client",
    "Engine",
    "ExecEvent",
    "ExecboxError",
    "ExecutionFailed",
    "ExecutionRequest",
    "ExecutionResult",
    "File",
    "FileInfo",
    "InvalidFileError",
    "IsolationError",
    "Language",
    "LanguageRegistry",
    "Limits",
    "NotFoundError",
    "OutcomeUnknown",
    "Policy",
    "ProviderUnavailable",
    "RateLimited",
    "RequestError",
    "Sandbox",
    "SandboxError",
    "ServerUnreachable",
    "Status",
    "StepResult",
    "UnknownLanguageError",
    "__version__",
    "aconnect",
    "aexecute_code",
    "arun",
    "arun_many",
    "connect",
    "execute_code",
    "run",
    "run_many",
    "testing",
]
