"""A host that is not the pinned one (another key for the same address: a man in the middle, a reinstalled
or swapped host) is refused by the ssh provider before it logs in or sends anything: no login, no agent,
nothing run. The sshd is real (tests/ssh/conftest.py); its log tells whether a login happened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.ssh.conftest import Sshd, agents, far_processes, keygen, registry, wait_until

from execbox import Engine, ExecutionRequest, Limits, Status
from execbox.errors import ProviderUnavailable
from execbox.providers.mock import MockProvider
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.routing import Router, RoutingSettings

REQUEST = ExecutionRequest(language="python", code="print('ran')", limits=Limits(wall_time_s=5, cpu_time_s=5))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    s = Sshd(tmp_path_factory.mktemp("sshd-keys")).start()
    yield s
    s.stop()


def _other_key(tmp: Path) -> str:
    return keygen(tmp / "impostor")[1]


@pytest.mark.parametrize("pinned", ["another key for the address", "the key, for another address", "no line"])
async def test_a_host_key_other_than_the_pinned_one_is_refused(server: Sshd, tmp_path: Path, pinned: str) -> None:
    known = {
        "another key for the address": f"[127.0.0.1]:{server.port} {_other_key(tmp_path)}\n",
        "the key, for another address": f"[127.0.0.2]:{server.port} {server.host_public}\n"
                                        f"localhost {server.host_public}\n",  # a name is not its address
        "no line": "# nothing pinned for this host\n",
    }[pinned]
    logins, before = server.accepted_logins(), set(agents())
    providers = registry(server, known_hosts=known)
    try:
        with pytest.raises(ProviderUnavailable, match="not the one pinned in known_hosts"):
            await Engine(providers=providers).execute(REQUEST)
    finally:
        await providers.aclose()
    assert server.accepted_logins() == logins, "it logged in to a host whose key is not pinned"
    assert set(agents()) <= before and not far_processes()


async def test_a_refused_host_fails_over_and_the_pinned_one_runs(server: Sshd, tmp_path: Path) -> None:
    """The refusal is a failure before the hand-over (the next provider runs it); with the right pin the
    same host logs in and runs the code (so the log check above can see a login)."""
    mock = MockProvider()
    providers = ProviderRegistry(instances={"mock": mock}, configs={"ssh-t": parse_instance(
        "ssh-t", "ssh", server.settings(known_hosts=f"[127.0.0.1]:{server.port} {_other_key(tmp_path)}\n"))},
        default="ssh-t")
    engine = Engine(providers=providers, router=Router(providers, chain=["ssh-t", "mock"],
                                                       settings=RoutingSettings(retries=0)))
    try:
        r = await engine.execute(REQUEST)
    finally:
        await providers.aclose()
    assert r.provider == "mock" and "not the one pinned" in (r.provider_attempts[0].error or "")

    logins = server.accepted_logins()
    providers = registry(server)
    try:
        r = await Engine(providers=providers).execute(REQUEST)
    finally:
        await providers.aclose()
    assert r.status is Status.OK and r.stdout == "ran\n", r
    assert wait_until(lambda: server.accepted_logins() == logins + 1, 5)
    assert wait_until(lambda: not agents())
