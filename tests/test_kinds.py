"""Provider kinds as data: third parties' through the entry-point group, missing dependencies named with their
install line (never an ImportError), settings schemas for forms with secrets write-only, capabilities."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from execbox.errors import ProviderUnavailable, RequestError
from execbox.models import ExecutionRequest, Limits, Policy
from execbox.providers import kinds as kinds_module
from execbox.providers.kinds import Capabilities, ProviderKind, kinds, secret_fields
from execbox.providers.mock import MockProvider
from execbox.providers.registry import ProviderRegistry, parse_instance
from execbox.providers.ssh.settings import SshSettings

THIRD_PARTY = ProviderKind("acme", "Acme's sandboxes", "execbox.providers.mock:from_settings",
                           capabilities=Capabilities(persistent=False, isolation="microvm"))


def entry_points_of(*points: tuple[str, str]) -> object:
    def entry_points(group: str) -> list[EntryPoint]:
        return [EntryPoint(name, value, group) for name, value in points] if group == "execbox.providers" else []
    return entry_points


def test_third_party_kinds_come_through_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kinds_module, "entry_points", entry_points_of(
        ("acme", f"{__name__}:THIRD_PARTY"),  # a ProviderKind
        ("legacy", "execbox.providers.mock:MockProvider"),  # a Provider class, taken without settings
        ("absent", "execbox_no_such_vendor_sdk.provider:KIND"),  # its package is not installed
        ("broken", f"{__name__}:no_such_attribute"),
        ("local", "somewhere.else:Evil")))  # an entry point never replaces a builtin kind
    found = kinds()
    assert found["acme"] is THIRD_PARTY and found["local"].factory == "execbox.providers.local:LocalProvider"
    assert found["legacy"].missing() is None and not found["legacy"].takes_settings
    assert found["absent"].missing() == ("needs execbox_no_such_vendor_sdk: pip install 'execbox[absent]' (or the "
                                         "package that provides execbox_no_such_vendor_sdk)")
    assert "fails to import (AttributeError" in (found["broken"].missing() or "")
    registry = ProviderRegistry(default="acme")
    assert isinstance(registry.get("acme"), MockProvider) and registry.get("acme").name == "acme"
    assert isinstance(registry.get("legacy"), MockProvider)
    assert registry.capabilities("legacy").limits == frozenset()  # declares nothing: taken at its weakest
    assert registry.capabilities("legacy").isolation == "none"
    assert registry.capabilities("acme").isolation == "microvm"
    with pytest.raises(ProviderUnavailable, match=r"provider 'absent' \(absent\) is unavailable: needs"):
        registry.get("absent")


def test_kinds_that_need_settings_have_no_implicit_instance() -> None:
    names = ProviderRegistry().names()
    assert {"local", "docker", "mock"} <= set(names) and not {"ssh", "remote"} & set(names)
    with pytest.raises(RequestError, match="unknown provider 'ssh'"):
        ProviderRegistry().get("ssh")


def test_a_settings_schema_drives_a_form_with_secrets_write_only() -> None:
    schema = kinds()["ssh"].schema()
    assert schema["properties"]["private_key"]["anyOf"][0] == {"format": "password", "type": "string",
                                                               "writeOnly": True}
    assert "description" in schema["properties"]["known_hosts"] and "known_hosts" in schema["required"]
    assert secret_fields(SshSettings) == {"private_key", "password"}
    assert secret_fields(kinds()["remote"].settings) == {"api_key"}
    assert secret_fields(kinds()["local"].settings) == set()


@pytest.mark.parametrize(("name", "kind", "settings", "error"), [
    ("Bad Name", "local", {}, "provider name 'Bad Name'"),
    ("x", "nokind", {}, "unknown provider kind 'nokind'"),
    ("x", "local", {"warm_pool": "many"}, r"provider 'x' \(local\): warm_pool: Input should be a valid integer"),
    ("x", "local", {"nope": 1}, r"provider 'x' \(local\): nope: Extra inputs are not permitted"),
    ("x", "remote", {}, r"provider 'x' \(remote\): url: Field required"),
    ("x", "remote", {"url": "http://u:pw@h:1"}, "url: Value error, the URL may not hold a user or password"),
    ("x", "local", {"first_uid": 0}, "first_uid: Input should be greater than or equal to 100000"),  # never root
])
def test_an_instance_from_plain_data_names_what_is_wrong(name: str, kind: str, settings: dict, error: str) -> None:
    with pytest.raises(RequestError, match=error):
        parse_instance(name, kind, settings)


def test_capabilities_say_why_a_provider_cannot_honour_a_request() -> None:
    caps = Capabilities(limits=frozenset({"wall_time_s"}), stdin=False, network_on=False, max_wall_time_s=60,
                        max_payload_bytes=100)
    limits = Policy().apply(None)
    fine = ExecutionRequest(language="python", code="print(1)")
    assert caps.unfit(limits, (), fine) is None  # the operator's defaults apply as well as it can
    assert caps.unfit(limits, {"memory_mb"}, fine) == "it cannot enforce memory_mb"
    assert caps.unfit(limits, (), fine.model_copy(update={"stdin": "x"})) == "it cannot pass stdin"
    assert caps.unfit(limits.model_copy(update={"network": True}), (), fine) == "it cannot give programs the network"
    assert caps.unfit(limits.model_copy(update={"wall_time_s": 90}), (), fine) == (
        "its longest run is 60 s (asked 90 s)")
    big = ExecutionRequest(language="python", code="x" * 101)
    assert caps.unfit(limits, (), big) == "it takes at most 100 bytes of code, files and stdin (101 given)"
    assert caps.unfit(limits, (), None, persistent=True, live=True) == (
        "it cannot run interactively or keep sandboxes")
    assert Capabilities().unfit(Limits(), {"memory_mb", "pids", "disk_mb"}, fine) is None


DETECTED = ProviderKind("acmecloud", "Acme's cloud", "execbox.providers.mock:from_settings", implicit=False,
                        detect=(("ACME_TOKEN_ID", "ACME_TOKEN_SECRET"), ("ACME_KEY",)))


def test_a_kind_configured_by_its_environment_has_an_instance_once_it_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kinds_module, "entry_points", entry_points_of(("acmecloud", f"{__name__}:DETECTED")))
    for var in ("ACME_TOKEN_ID", "ACME_TOKEN_SECRET", "ACME_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert "acmecloud" not in ProviderRegistry().names() and DETECTED.detected() is None
    monkeypatch.setenv("ACME_TOKEN_ID", "id")  # half of a group is not enough
    assert "acmecloud" not in ProviderRegistry().names()
    monkeypatch.setenv("ACME_TOKEN_SECRET", "secret")
    assert DETECTED.detected() == ("ACME_TOKEN_ID", "ACME_TOKEN_SECRET")
    registry = ProviderRegistry()
    assert "acmecloud" in registry.names() and registry.get("acmecloud").name == "acmecloud"


def test_every_cloud_kind_is_listed_with_its_extra_and_no_sdk_imported() -> None:
    cloud = {"e2b", "modal", "daytona", "cloudflare", "aliyun", "aws", "gcp", "azure"}
    found = kinds()
    assert cloud <= found.keys()
    for name in cloud:
        kind = found[name]
        assert not kind.implicit and kind.broken is None, name
        assert kind.settings.model_json_schema()["type"] == "object"
    # listing them imports no SDK (a fresh interpreter: this one may have imported them for other tests)
    probe = ("import sys; from execbox.providers.kinds import kinds; kinds(); print(sorted({'e2b', 'modal', "
             "'daytona', 'boto3', 'google.auth', 'azure.identity', 'agentrun', 'httpx'} & sys.modules.keys()))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
