"""Authentication for the HTTP layer: the credential kinds live in :mod:`ingest.credentials`.

These names stay importable from ``ingest.http`` for connectors written against them.
"""

from __future__ import annotations

from typing import Literal

from ingest.credentials import ApiKey as ApiKeyConfig
from ingest.credentials import ApiKeyAuth, BearerAuth, TokenAuth
from ingest.credentials import Basic as BasicAuthConfig
from ingest.credentials import Bearer as BearerTokenConfig
from ingest.credentials import OAuth2ClientCredentials as OAuth2ClientCredentialsConfig

__all__ = [
    "BearerAuth",
    "ApiKeyAuth",
    "OAuth2ClientCredentials",
    "BearerTokenConfig",
    "BasicAuthConfig",
    "ApiKeyConfig",
    "OAuth2ClientCredentialsConfig",
]


class OAuth2ClientCredentials(TokenAuth):
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4) with a client secret, by form (post) or HTTP Basic."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None, *,
                 auth_method: Literal["post", "basic"] = "post", extra: dict[str, str] | None = None) -> None:
        config = OAuth2ClientCredentialsConfig(token_url=token_url, client_id=client_id, client_secret=client_secret,
                                               scopes=scope, auth_method=auth_method, extra=extra or {})
        super().__init__(config.httpx_auth().grant)
