"""The aliyun kind's settings: Alibaba Cloud's FC Agent Sandbox (云沙箱), whose data plane is E2B's API.

Alibaba documents no data-plane SDK of its own for it: its sandboxes are driven with the E2B SDK pointed at
the region's endpoint (https://api.<region>.e2b.fc.aliyuncs.com, domain <region>.e2b.fc.aliyuncs.com; see
help.aliyun.com/zh/functioncompute/e2b-sdk-integration-parameter-description). agentrun-sdk's own sandbox
client passes its answers through undocumented, so this kind is the E2B adapter on Alibaba's endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr

from execbox.providers.cloud.caps import LINE_LIMITS, Egress, with_egress
from execbox.providers.cloud.credentials import env_secret, env_text
from execbox.providers.cloud.service import ServiceSettings

if TYPE_CHECKING:
    from execbox.providers.kinds import Capabilities

Region = Literal["cn-beijing", "cn-shanghai", "cn-hangzhou", "cn-shenzhen", "cn-hongkong", "ap-southeast-1",
                 "us-east-1", "us-west-1"]  # the regions Alibaba lists for the sandbox's E2B endpoint


class Settings(ServiceSettings):
    """An Alibaba Cloud account's FC Agent Sandbox in one region: each execbox instance is one sandbox."""

    api_key: SecretStr | None = Field(default_factory=env_secret("AGENTRUN_SANDBOX_API_KEY"))
    """The sandbox API key made in the Function Compute console (e2b_...; default: AGENTRUN_SANDBOX_API_KEY)."""
    region: Region | None = Field(default_factory=env_text("AGENTRUN_REGION", "ALIBABA_CLOUD_REGION_ID"),
                                  validate_default=True)  # a region from the environment is checked too
    """The region of the sandboxes and their template (default: AGENTRUN_REGION or ALIBABA_CLOUD_REGION_ID)."""
    template: str = Field("base", min_length=1)
    """The sandbox template (base, code-interpreter-v1, or one of the account's); it must have /bin/sh and
    coreutils, plus the languages' toolchains execbox runs in it."""
    workdir: str = Field("/home/user/execbox", pattern=r"^/")
    """The absolute directory in the sandbox that programs and their files go in (made at creation)."""
    egress: Egress = "open"
    """The network the template's deployment gives programs: "open" (the default: only runs that ask for the
    network are sent) or "none" (the operator's word that the sandboxes have no egress, e.g. a VPC without a
    NAT gateway: only runs that keep it off are). execbox still asks for no internet at each creation, but
    does not rely on the service honouring it (not verified against a live account)."""
    api_url: str | None = None
    """Another API base URL than the region's (a proxy, a test double)."""
    sandbox_url: str | None = None
    """Another base URL for every sandbox's envd than the region's (a test double)."""

    def capabilities(self, declared: Capabilities) -> Capabilities:
        """The kind's capabilities with this deployment's network (execbox.providers.kinds.InstanceCapabilities)."""
        return with_egress(declared, self.egress)


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "aliyun",
    "summary": "Alibaba Cloud FC Agent Sandbox (its E2B-compatible endpoint, through the e2b SDK)",
    "factory": "execbox.providers.cloud.aliyun:create",
    # like e2b's: the shell line's limits; memory, CPUs and disk are the template's. The network is the
    # deployment's (the egress setting); isolation the weaker of its runtimes (a sandboxed container or a
    # micro-VM), as execbox cannot tell which a template uses.
    "capabilities": {"stdin": True, "env": True, "files_in": True, "files_out": True, "streaming": False,
                     "persistent": True, "network_off": False, "network_on": True, "limits": LINE_LIMITS,
                     "isolation": "container"},
    "requires": ("e2b",),
    "install": "pip install 'execbox[aliyun]'",
    "detect": (("AGENTRUN_SANDBOX_API_KEY", "AGENTRUN_REGION"),),
}
