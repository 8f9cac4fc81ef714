"""Settings and credentials of the ``aws_iam`` connector."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.credentials import Aws

__all__ = ["AwsAuth", "AwsIamSettings"]


class AwsIamSettings(BaseModel):
    """Where IAM is and how to page it."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field("us-east-1", min_length=1, description="Region to sign for (IAM is global; "
                        "us-east-1 in the commercial partition, e.g. cn-north-1 or us-gov-west-1 elsewhere).")
    endpoint_url: str | None = Field(None, description="IAM endpoint, for a partition, a VPC endpoint or a "
                                     "test server; default: the region's.")
    sts_endpoint_url: str | None = Field(None, description="STS endpoint for assume-role when the credential "
                                         "names none (auth.sts_url); default: the region's.")
    page_size: int = Field(1000, ge=1, le=1000, description="MaxItems per page (IAM caps it at 1000 and may "
                           "return fewer; paging follows IsTruncated/Marker).")
    credential_report: bool = Field(True, description="Read password and access-key last use from the "
                                    "credential report (needs iam:GenerateCredentialReport, "
                                    "iam:GetCredentialReport).")
    credential_report_wait: float = Field(120.0, ge=0, description="Seconds to wait for a credential report "
                                          "being generated.")
    max_retries: int = Field(5, ge=0, le=50, description="Retries of a throttled or failed call (botocore "
                             "standard retry mode: exponential backoff with jitter).")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for a response.")
    connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection.")

    @field_validator("endpoint_url", "sts_endpoint_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://iam.amazonaws.com")
        return v.rstrip("/")


AwsAuth = Aws
"""The shared ``aws`` credential kind: ``access_key_id``, ``secret_access_key``, ``session_token``,
``role_arn`` (+ ``external_id``, ``session_name``, ``sts_url``) and ``region`` (of STS)."""
