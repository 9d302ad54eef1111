"""Admission by time: a burst waits its turn and completes; a request whose slot does not free within
``queue_timeout_s`` gets a 503 with Retry-After and a message that counts what runs and waits truly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest
from tests.server.conftest import KEY, Server
from tests.server.test_sandboxes import API, sse

import execbox
from execbox.errors import AtCapacity, CapacityError
from execbox.server.limits import Capacity

PY = {"language": "python"}


def metric(c: httpx.Client, name: str) -> float:
    """A sample of /metrics (``name`` with its labels, if any); 0 when absent (a gauge never set)."""
    line = next((ln for ln in c.get("/metrics").text.splitlines() if ln.startswith(name + " ")), f"{name} 0")
    return float(line.split()[-1])


def wait_for(c: httpx.Client, name: str, value: float, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(c, name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


def test_a_burst_of_100_at_default_settings_all_succeed(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server()  # default settings: 2 x cores run at once, the others wait their turn

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=s.url, headers={"X-API-Key": KEY}, timeout=120,
                                     limits=httpx.Limits(max_connections=None)) as c:
            return await asyncio.gather(*(c.post("/api/v1/execute", json={**PY, "code": f"print({i})"})
                                          for i in range(100)))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 100, [r.text for r in responses if r.status_code != 200]
    assert [r.json()["output"] for r in responses] == [f"{i}\n" for i in range(100)]
    with s.client() as c:
        assert metric(c, "sandbox_queued_requests") == 0


def test_a_request_waiting_past_the_queue_timeout_is_a_503_that_counts_truly(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server(env={"EXECBOX_MAX_CONCURRENCY": "2", "EXECBOX_QUEUE_TIMEOUT_S": "1"})
    hold = {**PY, "code": "import time; time.sleep(6); print('held')"}  # under the default 10 s wall time
    with s.client() as c, concurrent.futures.ThreadPoolExecutor(2) as pool:
        holder = pool.submit(c.post, "/api/v1/execute", json=hold)  # running: a request and an async job
        job = c.post("/api/v1/execute/async", json=hold).json()["execution_id"]
        wait_for(c, 'sandbox_active_containers{provider="local"}', 2)
        batch = pool.submit(c.post, "/api/v1/execute/batch", json=[{**PY, "code": f"print({i})"} for i in range(2)])
        wait_for(c, "sandbox_queued_requests", 2)  # waiting: the batch's items (they wait their turn, untimed)
        r = c.post("/api/v1/execute", json={**PY, "code": "print(1)"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert r.json()["detail"] == "no execution slot became free within 1s (2 running, 2 waiting, 2 at once)"
        assert holder.result().json()["output"] == "held\n"  # the runs holding the slots were not disturbed
        assert [x["output"] for x in batch.result().json()] == ["0\n", "1\n"]
        assert c.get(f"/api/v1/execute/status/{job}").json()["result"]["output"] == "held\n"
        assert metric(c, "sandbox_queued_requests") == 0
        assert c.post("/api/v1/execute", json={**PY, "code": "print(2)"}).json()["output"] == "2\n"


def test_a_sandbox_command_waits_at_most_the_queue_timeout_too(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_QUEUE_TIMEOUT_S": "1"})
    hold = {**PY, "code": "import time; time.sleep(6); print('held')"}
    refused = "no execution slot became free within 1s (1 running, 0 waiting, 1 at once)"
    with s.client() as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        sid = c.post(API, json={"language": "bash"}).json()["id"]
        holder = pool.submit(c.post, "/api/v1/execute", json=hold)
        wait_for(c, 'sandbox_active_containers{provider="local"}', 1)
        r = c.post(f"{API}/{sid}/exec", json={"command": "echo hi"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and r.json()["detail"] == refused
        with c.stream("POST", f"{API}/{sid}/exec/stream", json={"command": "echo hi"}) as r:
            assert r.status_code == 200  # the stream's headers go at once: the refusal is its one event
            assert list(sse(r.iter_lines())) == [("error", {"detail": refused})]
        assert holder.result().json()["output"] == "held\n"
        assert c.post(f"{API}/{sid}/exec", json={"command": "echo hi"}).json()["output"] == "hi\n"
        c.delete(f"{API}/{sid}")


def test_a_full_waiting_room_refuses_at_once_with_the_counts(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server(env={"EXECBOX_MAX_CONCURRENCY": "1", "EXECBOX_MAX_QUEUE": "1",
                                 "EXECBOX_QUEUE_TIMEOUT_S": "60"})
    hold = {**PY, "code": "import time; time.sleep(3); print('held')"}
    with s.client() as c, concurrent.futures.ThreadPoolExecutor(2) as pool, \
            execbox.connect(s.url, KEY) as remote:
        holder = pool.submit(c.post, "/api/v1/execute", json=hold)
        wait_for(c, 'sandbox_active_containers{provider="local"}', 1)
        waiter = pool.submit(c.post, "/api/v1/execute", json={**PY, "code": "print('waited')"})
        wait_for(c, "sandbox_queued_requests", 1)
        r = c.post("/api/v1/execute", json={**PY, "code": "print(1)"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.text
        assert r.json()["detail"] == ("the server is at capacity (1 running, 1 waiting, 1 at once; at most 1 may "
                                      "wait)")
        with pytest.raises(AtCapacity) as refused:  # the remote client: a CapacityError saying when to retry
            remote.run("print(1)")
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        assert isinstance(refused.value, CapacityError)
        assert holder.result().json()["output"] == "held\n"
        assert waiter.result().json()["output"] == "waited\n"  # it waited in line and ran


def test_a_rate_limit_is_a_capacity_error_with_retry_after(make_server) -> None:  # type: ignore[no-untyped-def]
    s: Server = make_server(env={"EXECBOX_RATE_LIMIT_PER_MIN": "6"})  # one request, then one every 10 s
    with execbox.connect(s.url, KEY) as remote:
        assert remote.run("print(1)").stdout == "1\n"
        with pytest.raises(CapacityError) as refused:
            remote.run("print(1)")
        assert refused.value.retry_after_s is not None and 1 <= refused.value.retry_after_s <= 10


# --- the slot pool itself, in one event loop

async def settle() -> None:
    for _ in range(5):  # a handed slot's waiter resumes within a step or two
        await asyncio.sleep(0)


def test_a_freed_slot_goes_to_the_first_in_line_and_counts_stay_exact() -> None:
    async def main() -> None:
        cap = Capacity(running=2, queued=100, wait_s=30)
        order: list[int] = []
        done = [asyncio.Event() for _ in range(6)]

        async def run(i: int) -> None:
            async with cap.slot():
                order.append(i)
                await done[i].wait()

        tasks = [asyncio.create_task(run(i)) for i in range(6)]
        await settle()
        assert (cap.running, cap.waiting, order) == (2, 4, [0, 1])
        for i in range(6):
            done[i].set()
            await settle()
            left = 6 - (i + 1)
            assert (cap.running, cap.waiting) == (min(2, left), max(0, left - 2)), i
        await asyncio.gather(*tasks)
        assert order == list(range(6))  # first come, first served

    asyncio.run(main())


def test_a_waiter_cancelled_as_it_is_handed_a_slot_passes_it_on() -> None:
    async def main() -> None:
        cap = Capacity(running=1, queued=10, wait_s=30)
        got: list[str] = []

        async def run(name: str) -> None:
            async with cap.slot():
                got.append(name)

        async with cap.slot():
            second, third = asyncio.create_task(run("second")), asyncio.create_task(run("third"))
            await settle()
            assert (cap.running, cap.waiting) == (1, 2)
        second.cancel()  # in the same step as the slot was handed to it: before it resumes
        await asyncio.wait_for(asyncio.gather(second, third, return_exceptions=True), 10)  # (a slot lost: hangs)
        assert second.cancelled() and got == ["third"] and (cap.running, cap.waiting) == (0, 0)

    asyncio.run(main())


def test_an_untimed_wait_outlasts_the_queue_timeout_and_a_timed_one_does_not() -> None:
    async def main() -> None:
        cap = Capacity(running=1, queued=10, wait_s=0.05)
        async with cap.slot():
            untimed = asyncio.create_task(cap.slot(counted=False, timed=False).__aenter__())
            with pytest.raises(AtCapacity, match=r"within 0.05s \(1 running, 1 waiting, 1 at once\)"):
                async with cap.slot():
                    pass
            await asyncio.sleep(0.1)
            assert not untimed.done() and cap.waiting == 1
        await untimed  # handed the slot
        assert (cap.running, cap.waiting) == (1, 0)

    asyncio.run(main())
