"""Alibaba Cloud's FC Agent Sandbox: the e2b adapter on the region's E2B-compatible endpoint (see
aliyun_settings for why this is the service's own documented way in)."""

from __future__ import annotations

from execbox.errors import ProviderUnavailable
from execbox.providers.base import Provider
from execbox.providers.cloud import e2b, e2b_settings
from execbox.providers.cloud.aliyun_settings import Settings

_FIELDS = ("create_timeout_s", "extra_time_s", "sandbox_timeout_s", "template", "workdir")


def create(settings: Settings | None = None) -> Provider:
    s = settings or Settings()
    if s.api_key is None or s.region is None:
        raise ProviderUnavailable("the aliyun provider needs a sandbox API key and a region: set "
                                  "AGENTRUN_SANDBOX_API_KEY (Function Compute console -> Agent Sandbox -> API Key) "
                                  "and AGENTRUN_REGION (e.g. cn-hangzhou), or the provider's api_key and region")
    domain = f"{s.region}.e2b.fc.aliyuncs.com"
    return e2b.create(e2b_settings.Settings(
        api_key=s.api_key, domain=domain, api_url=s.api_url or f"https://api.{domain}", sandbox_url=s.sandbox_url,
        **{f: getattr(s, f) for f in _FIELDS}))
