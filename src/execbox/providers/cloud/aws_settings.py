"""The aws provider's settings and kind: an AWS Lambda function running execbox's handler."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from execbox.providers.cloud.credentials import env_text
from execbox.providers.cloud.function_kind import FunctionSettings, MiB, capabilities

# Lambda's synchronous invoke takes a 6 MB payload (6291456 bytes, the API's limit) and runs up to 900 s.
LAMBDA_PAYLOAD_BYTES = 6 * MiB
LAMBDA_MAX_S = 900.0


class Settings(FunctionSettings):
    """An AWS Lambda function running execbox's handler (see docs/providers-functions.md to deploy it)."""

    function_name: str | None = Field(default_factory=env_text("EXECBOX_LAMBDA_FUNCTION"), min_length=1,
                                      max_length=256)
    """The function's name or ARN (default: EXECBOX_LAMBDA_FUNCTION)."""
    qualifier: str | None = Field(None, min_length=1, max_length=128)
    """A version or alias to invoke (default: $LATEST)."""
    region: str | None = Field(default_factory=env_text("AWS_REGION", "AWS_DEFAULT_REGION"))
    """The AWS region (default: AWS_REGION or AWS_DEFAULT_REGION, else the profile's; an ARN names its own)."""
    access_key_id: str | None = None
    """An access key ID (default: boto3's chain: AWS_* variables, the profile, the instance's or task's role)."""
    secret_access_key: SecretStr | None = None
    """The secret of access_key_id."""
    session_token: SecretStr | None = None
    """A session token, for temporary credentials."""
    profile: str | None = None
    """A profile of ~/.aws/config to take the credentials and region from (default: AWS_PROFILE or default)."""
    endpoint_url: str | None = None
    """Another Lambda endpoint (LocalStack, tests); default: the region's."""
    connect_timeout_s: float = Field(5.0, gt=0, le=300)
    """Seconds to wait for a connection to Lambda."""
    extra_time_s: float = Field(30.0, ge=1, le=900)
    """Seconds allowed on top of a run's own wall times for the answer (a cold start, the network)."""


# The kind, as data (execbox.providers.kinds makes the ProviderKind): no SDK is imported to list it.
KIND: dict[str, Any] = {
    "name": "aws", "summary": "an AWS Lambda function running execbox's handler (Firecracker micro-VMs)",
    "factory": "execbox.providers.cloud.aws:create",
    "capabilities": capabilities(LAMBDA_MAX_S, LAMBDA_PAYLOAD_BYTES, "microvm"),
    "requires": ("boto3",), "install": "pip install 'execbox[aws]'",
    "detect": (("EXECBOX_LAMBDA_FUNCTION",),),
}
