"""Loopback stand-ins for the function services' far side (tests only): the handler's answer to a call, and a
threaded HTTP server on 127.0.0.1 whose routes the Lambda and Cloud Run fakes give.

``handler_answer`` is the ONE place the far side's handler is: execbox's own handler
(execbox.providers.cloud.handler) answering in this process, with ``EXECBOX_HANDLER_RESET=0``: outside a
function service the handler refuses to run anything unless told whether to reset, and its reset
(``kill(-1)``, emptying /tmp) must never run on a shared test host. It runs its own event loop: the servers
call it from their threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from execbox.engine import Engine
from execbox.models import ExecutionRequest, Limits, Policy
from execbox.providers.cloud.handler import Handler
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings

NET = Limits(network=True)  # the function kinds cannot cut programs off the network (their deployment's egress)
QUICK = Limits(network=True, wall_time_s=1, compile_wall_time_s=1)  # for read timeouts: 1 + 1 + extra 1 s


def engine(kind: str, settings: dict[str, Any], chain: tuple[str, ...] = ()) -> Engine:
    """An engine whose default provider is an instance of ``kind`` named after it, under a policy that
    allows the network; the router's own retry of a refusing provider (nothing handed over) is off, so each
    test sees exactly the calls it caused."""
    reg = ProviderRegistry(default=kind, configs={kind: parse_instance(kind, kind, settings)})
    maxima = Policy().maxima.model_copy(update={"network": True})
    return Engine(providers=reg, policy=Policy(maxima=maxima), router=Router(reg, chain, RoutingSettings(retries=0)))


def req(code: str, limits: Limits = NET, **kw: Any) -> ExecutionRequest:
    return ExecutionRequest(language="python", code=code, limits=limits, **kw)


def handler_answer(call: Mapping[str, Any]) -> dict[str, Any]:
    """The handler's answer to ``call`` (a decoded HandlerCall): execbox's own handler, run here (see the
    module), each program in a fresh workdir under the handler's limits."""
    # a thread of its own: the azure fake transport calls it from inside the client's event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(_far_side().run(dict(call)))).result()


@functools.cache
def _far_side() -> Handler:
    # no reset here (kill(-1) and emptying /tmp are for a function service's environment, never this host)
    return Handler(env={"EXECBOX_HANDLER_RESET": "0"})


def refusal(kind: str, detail: str, code_run: bool, retry_after_s: float | None = None) -> dict[str, Any]:
    """A handler's error answer (function.HandlerError's shape)."""
    return {"error": {"kind": kind, "detail": detail, "code_run": code_run, "retry_after_s": retry_after_s}}


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200, **headers: str) -> Reply:
        return cls(status, json.dumps(doc).encode(), {"Content-Type": "application/json", **headers})


DROP = "drop"  # close the connection without answering (after the whole request was read)
HANG = "hang"  # answer nothing until the server stops (the caller's read timeout ends it)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Route = Callable[[Seen], Reply | str]


class LoopbackServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 answering every request with ``route(seen)``; ``seen`` lists
    what came, in order (the tests count the calls that arrived)."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.seen: list[Seen] = []
        self._release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                            self.rfile.read(size))
                fake.seen.append(seen)
                reply = fake.route(seen)
                if reply == DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                if reply == HANG:
                    fake._release.wait(30)
                    self.close_connection = True
                    return
                assert isinstance(reply, Reply)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_POST = do_GET = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def calls(self, path_part: str) -> list[Seen]:
        return [s for s in self.seen if path_part in s.path]
