"""POST /api/v1/execute with an Idempotency-Key: one run per key (per API key), against a real server; and the
store's bounds (keys, bytes, TTL, what is forgotten) in process."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from starlette.exceptions import HTTPException
from tests.server.conftest import KEY, Server

from execbox import AtCapacity, OutcomeUnknown, RateLimited, Status
from execbox.models import ExecutionResult
from execbox.server.idempotency import Idempotency

RANDOM = {"language": "python", "code": "import random, time; time.sleep(0.5); print(random.random())"}


def executions(server: Server) -> float:
    """Executions the server finished (sandbox_executions_total, all labels)."""
    with server.client() as c:
        lines = c.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("sandbox_executions_total{"))


def post(c: httpx.Client, body: dict[str, Any], key: str) -> httpx.Response:
    return c.post("/api/v1/execute", json=body, headers={"Idempotency-Key": key})


def test_a_repeat_gets_the_stored_result(server: Server, client: httpx.Client) -> None:
    key = uuid.uuid4().hex
    before = executions(server)
    first, again = post(client, RANDOM, key), post(client, RANDOM, key)
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "ok"
    assert first.json() == again.json()  # the same random number, the same execution_id
    assert executions(server) == before + 1
    other = post(client, RANDOM, uuid.uuid4().hex)  # another key: another run
    assert other.json()["stdout"] != first.json()["stdout"]
    assert other.json()["execution_id"] != first.json()["execution_id"]


async def test_concurrent_repeats_wait_for_the_one_run(server: Server) -> None:
    key = uuid.uuid4().hex
    before = executions(server)
    async with httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as c:
        answers = await asyncio.gather(*(c.post("/api/v1/execute", json=RANDOM, headers={"Idempotency-Key": key})
                                         for _ in range(5)))
    bodies = [a.json() for a in answers]
    assert all(a.status_code == 200 for a in answers) and bodies[0]["status"] == "ok"
    assert all(b == bodies[0] for b in bodies)
    assert executions(server) == before + 1


def test_a_key_reused_with_another_body_is_a_422(client: httpx.Client) -> None:
    key = uuid.uuid4().hex
    assert post(client, {"language": "python", "code": "print(1)"}, key).status_code == 200
    # the same body written in another order is the same body
    assert post(client, {"code": "print(1)", "language": "python"}, key).status_code == 200
    r = post(client, {"language": "python", "code": "print(2)"}, key)
    assert r.status_code == 422
    assert "another request body" in r.json()["detail"]
    for bad in ("", "k" * 129):
        assert post(client, {"language": "python", "code": "print(1)"}, bad).status_code == 422


def test_keys_are_per_api_key(make_server: Any) -> None:
    other = "other-key-" + "y" * 24
    server = make_server(env={"EXECBOX_API_KEY": f"{KEY},{other}"})
    key = uuid.uuid4().hex
    with server.client() as mine, server.client(other) as theirs:
        a, b = post(mine, RANDOM, key).json(), post(theirs, RANDOM, key).json()
    assert a["status"] == b["status"] == "ok"
    assert a["execution_id"] != b["execution_id"] and a["stdout"] != b["stdout"]


# --------------------------------------------------------------------------------------------- the store

def result(stdout: str = "") -> ExecutionResult:
    return ExecutionResult(execution_id=uuid.uuid4().hex, language="python", provider="mock", status=Status.OK,
                           stdout=stdout)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_finished_keys_expire_after_the_ttl() -> None:
    clock = Clock()
    store = Idempotency(ttl_s=10, clock=clock)
    first = await store.run("k", "a", "d", lambda: asyncio.sleep(0, result()))
    clock.now = 9
    assert await store.run("k", "a", "d", lambda: asyncio.sleep(0, result())) is first
    clock.now = 11
    assert await store.run("k", "a", "d", lambda: asyncio.sleep(0, result())) is not first


async def test_the_oldest_finished_keys_go_first_and_running_ones_never() -> None:
    store = Idempotency(ttl_s=3600, max_keys=2)
    gate = asyncio.Event()

    async def held() -> ExecutionResult:
        await gate.wait()
        return result()

    a = await store.run("k", "a", "d", lambda: asyncio.sleep(0, result()))
    b = asyncio.ensure_future(store.run("k", "b", "d", held))
    await asyncio.sleep(0)
    await store.run("k", "c", "d", lambda: asyncio.sleep(0, result()))  # "a" goes to make room, not "b"
    assert await store.run("k", "a", "d", lambda: asyncio.sleep(0, result())) is not a  # run anew ("c" goes)
    e = asyncio.ensure_future(store.run("k", "e", "d", held))  # "a" goes: two running fill it
    await asyncio.sleep(0)
    with pytest.raises(AtCapacity):
        await store.run("k", "f", "d", lambda: asyncio.sleep(0, result()))
    gate.set()
    assert (await b).execution_id != (await e).execution_id
    assert await store.run("k", "b", "d", held) is await b  # kept once finished


async def test_output_over_the_byte_budget_is_dropped_oldest_first() -> None:
    store = Idempotency(ttl_s=3600, max_bytes=10_000)
    first = await store.run("k", "a", "d", lambda: asyncio.sleep(0, result("x" * 6000)))
    await store.run("k", "b", "d", lambda: asyncio.sleep(0, result("y" * 6000)))
    assert len(store) == 1
    assert await store.run("k", "a", "d", lambda: asyncio.sleep(0, result())) is not first


async def test_refusals_are_forgotten_and_unknown_outcomes_kept() -> None:
    store = Idempotency(ttl_s=3600)
    calls = 0

    async def refused() -> ExecutionResult:
        nonlocal calls
        calls += 1
        raise RateLimited("slow down", 1)

    async def lost() -> ExecutionResult:
        nonlocal calls
        calls += 1
        raise OutcomeUnknown("the provider died mid-run")

    for _ in range(2):
        with pytest.raises(RateLimited):
            await store.run("k", "a", "d", refused)
    assert calls == 2  # nothing ran: the repeat may run it
    for _ in range(2):
        with pytest.raises(OutcomeUnknown):
            await store.run("k", "b", "d", lost)
    assert calls == 3  # it may have run: never again
    with pytest.raises(HTTPException) as caught:
        await store.run("k", "b", "other", lost)
    assert caught.value.status_code == 422
