"""`execbox agent`: the far end of the ssh provider (started by it over SSH, not by people)."""

from __future__ import annotations

from typing import Annotated

import typer


def agent(
    first_uid: Annotated[int | None, typer.Option(help="The first uid of this host's sandboxes (default: the "
                                                  "local provider's).", show_default=False)] = None,
    uid_count: Annotated[int | None, typer.Option(help="How many uids from --first-uid.", show_default=False)] = None,
    runtime_dir: Annotated[str | None, typer.Option(help="The local provider's runtime dir (default: "
                                                    "/run/execbox).", show_default=False)] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Seconds without a byte from the other side (its "
                                                       "heartbeats) after which the connection is taken for lost.",
                                                       show_default=False)] = None,
) -> None:
    """Serve another execbox's ssh provider on stdin/stdout (JSON lines) with this host's local provider.

    The ssh provider runs `execbox agent` on the host it logs in to; the code then runs in execbox's
    sandboxes here, under the limits enforced here. It refuses when this host cannot isolate (check with
    `execbox doctor`). When stdin ends (the connection is gone) every sandbox it started is killed.
    """
    from execbox.providers.ssh.agent import AgentOptions, serve

    raise typer.Exit(serve(AgentOptions(first_uid=first_uid, uid_count=uid_count, runtime_dir=runtime_dir,
                                           idle_timeout_s=idle_timeout)))
