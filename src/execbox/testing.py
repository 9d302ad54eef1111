"""Testing code that uses execbox, without running anything: the mock provider and what goes with it.

    from execbox import testing

    def test_my_grader():
        with testing.mocked(lambda spec, files: testing.outcome(stdout=b"42\\n")) as provider:
            assert my_grader("print(42)") == "pass"        # calls execbox.run / execbox.Sandbox inside
        assert provider.calls[-1].argv == ("python3", "main.py")

``mocked(handler)`` makes the library's entry points (``execbox.run``/``arun``/``execute_code``, and
``execbox.Sandbox``/``AsyncSandbox``/``run_many`` without ``manager=``) run on a ``MockProvider`` for the block:
each process the engine would start goes to ``handler(spec, files)`` (default ``echo``: its argv and stdin
back as stdout), which returns the ProcessOutcome; ``provider.calls`` are the ExecSpecs it was given and
``provider.instances`` the instances (their ``files``). ``mock_engine``/``mock_manager`` give the same for
code that takes an Engine or a SandboxManager (``AsyncSandbox.create(..., manager=testing.mock_manager())``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from execbox import api
from execbox import sandbox as sandbox_module
from execbox.engine import Engine
from execbox.languages import LanguageRegistry
from execbox.providers.base import ExecSpec, ProcessOutcome, StopReason
from execbox.providers.mock import Handler, MockInstance, MockProvider, echo
from execbox.providers.registry import ProviderRegistry
from execbox.sandbox import SandboxManager


def outcome(stdout: bytes = b"", stderr: bytes = b"", exit_code: int = 0, *, signal: int | None = None,
            stopped_by: StopReason | None = None, wall_time_s: float = 0.0) -> ProcessOutcome:
    """A ProcessOutcome for a handler to return: what the process printed and how it ended."""
    return ProcessOutcome(exit_code=exit_code, signal=signal, stdout=stdout, stderr=stderr, stdout_truncated=False,
                          stderr_truncated=False, wall_time_s=wall_time_s, cpu_time_s=wall_time_s, max_rss_mb=0.0,
                          stopped_by=stopped_by)


def mock_engine(handler: Handler = echo, *, languages: LanguageRegistry | None = None) -> Engine:
    """An Engine whose one provider (``engine.providers.get()``) is a new MockProvider(handler)."""
    provider = MockProvider(handler)
    return Engine(providers=ProviderRegistry(instances={provider.name: provider}, default=provider.name),
                  languages=languages)


def mock_manager(handler: Handler = echo, **settings: float) -> SandboxManager:
    """A SandboxManager on ``mock_engine(handler)`` (``settings``: SandboxManager's, e.g. max_sandboxes)."""
    return SandboxManager(mock_engine(handler), **settings)  # type: ignore[arg-type]


@contextlib.contextmanager
def mocked(handler: Handler = echo) -> Iterator[MockProvider]:
    """For the block, the library's default engine and sandbox manager are mock ones (see the module's
    docstring); the provider is yielded."""
    from unittest import mock  # not with execbox: it takes longer to import than execbox does

    manager = mock_manager(handler)
    provider = manager.engine.providers.get()
    assert isinstance(provider, MockProvider)
    # the library's defaults are these two module globals; swapped here, in one place, for the block only
    with mock.patch.object(api, "default_engine", lambda: manager.engine), \
            mock.patch.object(sandbox_module, "_default", manager):
        yield provider


__all__ = ["ExecSpec", "Handler", "MockInstance", "MockProvider", "ProcessOutcome", "StopReason", "echo",
           "mock_engine", "mock_manager", "mocked", "outcome"]
