"""Interactive runs need live input, which docker instances do not take yet: a clear RequestError up front,
never a run that ignores what the client types."""

from __future__ import annotations

import pytest

from execbox import Engine, ExecutionRequest, RequestError
from execbox.engine import StageEvent
from execbox.providers.base import LiveInput


async def test_an_interactive_run_on_docker_is_a_clear_request_error(docker_engine: Engine) -> None:
    events: list[StageEvent] = []

    async def emit(event: StageEvent) -> None:
        events.append(event)

    with pytest.raises(RequestError, match="cannot run interactively"):
        await docker_engine.execute(ExecutionRequest(language="python", code="print(input())"),
                                    live=(LiveInput(), emit))
    assert events == []  # refused before anything ran
