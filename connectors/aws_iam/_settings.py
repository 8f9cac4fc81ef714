"""Settings and credentials of the ``aws_iam`` connector."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["AwsAuth", "AwsIamSettings"]


class AwsIamSettings(BaseModel):
    """Where IAM is and how to page it."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field("us-east-1", min_length=1, description="Region to sign for (IAM is global; "
                        "us-east-1 in the commercial partition, e.g. cn-north-1 or us-gov-west-1 elsewhere).")
    endpoint_url: str | None = Field(None, description="IAM endpoint, for a partition, a VPC endpoint or a "
                                     "test server; default: the region's.")
    sts_endpoint_url: str | None = Field(None, description="STS endpoint for assume-role; default: the region's.")
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


class AwsAuth(BaseModel):
    """Access keys (optionally temporary), optionally assuming a role; without keys, botocore's
    default chain (environment, shared config, instance or container role)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(None, pattern="^aws$", description="Credential kind (always aws).")
    access_key_id: str | None = Field(None, description="Access key id (AKIA... or ASIA...).")
    secret_access_key: SecretStr | None = Field(None, json_schema_extra={"writeOnly": True},
                                                description="Secret access key.")
    session_token: SecretStr | None = Field(None, json_schema_extra={"writeOnly": True},
                                            description="Session token of temporary credentials.")
    role_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+",
                                 description="Role to assume (sts:AssumeRole) before reading IAM.")
    external_id: str | None = Field(None, description="ExternalId the role's trust policy asks for.")
    role_session_name: str = Field("ingest", pattern=r"^[\w+=,.@-]{2,64}$",
                                   description="Session name of the assumed role (shows in CloudTrail).")
    region: str | None = Field(None, description="Region of the STS endpoint used to assume the role.")

    @model_validator(mode="after")
    def _pair(self) -> AwsAuth:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give access_key_id and secret_access_key together (or neither, to use the "
                             "default AWS credential chain)")
        if self.secret_access_key is not None and not self.secret_access_key.get_secret_value().strip():
            raise ValueError("secret_access_key is empty (is its environment variable set?)")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self
