"""The cloud providers' kinds, as data: each vendor's settings module holds its ``KIND`` (settings model,
capabilities, the extra that installs its SDK, the environment variables that configure it)."""

from __future__ import annotations

from execbox.providers.cloud import (
    aliyun_settings,
    aws_settings,
    azure_settings,
    cloudflare_settings,
    daytona_settings,
    e2b_settings,
    gcp_settings,
    modal_settings,
)
from execbox.providers.kinds import ProviderKind

CLOUD_KINDS: tuple[ProviderKind, ...] = tuple(m.KIND for m in (
    e2b_settings, modal_settings, daytona_settings, cloudflare_settings, aliyun_settings,
    aws_settings, gcp_settings, azure_settings))
