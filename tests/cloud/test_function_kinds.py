"""What the function kinds (aws, gcp, azure) declare, as the router reads it."""

from __future__ import annotations

import pytest

from execbox.models import ExecutionRequest, Limits, Policy
from execbox.providers.kinds import kinds


@pytest.mark.parametrize(("name", "max_s", "isolation"), [("aws", 900, "microvm"), ("gcp", 3600, "container"),
                                                          ("azure", 1800, "container")])
def test_the_router_keeps_from_them_what_they_cannot_honour(name: str, max_s: float, isolation: str) -> None:
    kind = kinds()[name]
    caps = kind.capabilities
    assert kind.missing() is None and (caps.max_wall_time_s, caps.isolation) == (max_s, isolation)
    request = ExecutionRequest(language="python", code="print(1)")
    # the program's egress is the deployment's: a run asking for no network is never sent to them
    assert "cut programs off the network" in (caps.unfit(Policy().apply(None), (), request) or "")
    assert caps.unfit(Limits(network=True), (), request) is None
    assert "keep sandboxes" in (caps.unfit(Limits(network=True), persistent=True) or "")
    assert "pids" in (caps.unfit(Limits(network=True, pids=8), ("pids",)) or "")  # not the handler's to enforce
    assert "disk_mb" in (caps.unfit(Limits(network=True), ("disk_mb",)) or "")
    assert caps.unfit(Limits(network=True, memory_mb=256), ("memory_mb", "wall_time_s")) is None
    if max_s < 3600:  # Limits' own maximum
        assert "longest run" in (caps.unfit(Limits(network=True, wall_time_s=max_s + 1)) or "")
    assert not caps.streaming and not caps.live_input


@pytest.mark.parametrize(("name", "settings"), [
    ("aws", {"function_name": "execbox-handler", "region": "eu-west-1"}),
    ("gcp", {"url": "https://execbox-handler-abc123-ew.a.run.app"}),
    ("azure", {"url": "https://execbox-handler.example.azurecontainerapps.io"})])
def test_an_instance_deployed_without_egress_takes_runs_that_keep_the_network_off(
        name: str, settings: dict[str, str]) -> None:
    from execbox.providers.registry import ProviderRegistry, parse_instance

    request = ExecutionRequest(language="python", code="print(1)")
    registry = ProviderRegistry(configs={
        "open": parse_instance("open", name, settings), "sealed": parse_instance("sealed", name,
                                                                                 {**settings, "egress": "none"})})
    offline, online = Policy().apply(None), Limits(network=True)
    assert "cut programs off" in (registry.capabilities("open").unfit(offline, (), request) or "")
    assert registry.capabilities("open").unfit(online, (), request) is None
    assert registry.capabilities("sealed").unfit(offline, (), request) is None
    assert "give programs the network" in (registry.capabilities("sealed").unfit(online, (), request) or "")
    assert kinds()[name].capabilities.network_on  # the kind's own declaration is unchanged
