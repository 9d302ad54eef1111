"""execbox's exceptions: one root, a few categories meant to be caught.

User code failing is never an exception: it is an ``ExecutionResult`` with a status. These are raised when the
request is unusable or when the sandbox itself fails.

    ExecboxError
    ├── RequestError            the request cannot be run as given (a client's mistake)
    │   ├── UnknownLanguageError
    │   ├── InvalidFileError    a submitted file name or content is unsafe or too large
    │   ├── NotFoundError       no such sandbox (destroyed, expired, another owner's) or no such file
    │   └── AuthenticationError an execbox server refused the API key (remote client)
    ├── CapacityError           a maximum is reached; ``retry_after_s`` says when trying again may succeed
    │   ├── RateLimited         the API key's rate limit (HTTP 429)
    │   └── AtCapacity          no execution slot freed in time, or the server's queue is full (HTTP 503)
    ├── ExecutionFailed         raised by ``check=True``; carries the ``ExecutionResult``
    └── SandboxError            the sandbox failed; not the program's fault
        ├── ProviderUnavailable the provider cannot run here (missing bwrap, engine down, ...)
        │   ├── ServerUnreachable   no execbox server answers at the client's URL (remote client)
        │   └── CircuitOpen     the provider's circuit breaker is open after repeated faults
        ├── OutcomeUnknown      the provider failed after the code was handed to it: never retried
        └── IsolationError      a requested restriction cannot be enforced; we refuse rather than run weaker
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from execbox.models import ExecutionResult


class ExecboxError(Exception):
    """Root of every exception execbox raises."""


class RequestError(ExecboxError, ValueError):
    """The request cannot be run as given."""


class UnknownLanguageError(RequestError):
    def __init__(self, language: str, supported: list[str]) -> None:
        self.language = language
        self.supported = supported
        super().__init__(f"unknown language {language!r}; supported: {', '.join(supported)}")


class InvalidFileError(RequestError):
    """A submitted file has an unsafe name (absolute, '..', NUL, ...) or is too large."""


class NotFoundError(RequestError):
    """No such sandbox (destroyed, expired, or another owner's), or no such file in it."""


class AuthenticationError(RequestError):
    """An execbox server refused the API key: missing, unknown or revoked (HTTP 401/403)."""


class CapacityError(ExecboxError):
    """A maximum is reached (live sandboxes per owner or in all, a server's slots or rate limit); nothing was
    started. ``retry_after_s``: when trying again may succeed (None: unknown, e.g. until a sandbox is destroyed)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(CapacityError):
    """An execbox server's rate limit of the API key is exceeded (HTTP 429)."""


class AtCapacity(CapacityError):
    """An execbox server is too busy to start it now: no execution slot freed within its ``queue_timeout_s``,
    or its waiting room or job queue is full (HTTP 503)."""


class ExecutionFailed(ExecboxError):
    """Raised by ``run(..., check=True)`` when the program did not finish with status ``ok``."""

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result
        super().__init__(f"execution {result.execution_id} ended with status {result.status.value}"
                         + (f": {result.message}" if result.message else ""))


class SandboxError(ExecboxError):
    """The sandbox failed (the host's fault, not the program's)."""


class ProviderUnavailable(SandboxError):
    """The provider cannot run on this host or is not reachable."""


class ServerUnreachable(ProviderUnavailable):
    """No execbox server answers at the client's URL (connection refused, unknown host, connect timeout)."""


class CircuitOpen(ProviderUnavailable):
    """The provider had too many faults in a row: nothing is sent to it until its cool-down ends."""


class OutcomeUnknown(SandboxError):
    """The provider failed after the user's code was handed to it (a connection lost mid-run, a server that
    died): the code may have run, once. execbox never runs it again on its own."""


class IsolationError(SandboxError):
    """A requested restriction cannot be enforced on this host."""
