"""Credentials: every kind of login a source asks for, the encrypted token store, and the consent flow.

- Kinds (``_kinds``): pydantic models, one per kind in PRODUCT.md (``basic``,
  ``api_key``, ``bearer``, ``username_api_key``, ``oauth2_client_credentials``,
  ``oauth2_authorization_code``, ``service_account``, ``aws``, ``github_app``);
  secrets are ``SecretStr`` and ``writeOnly`` in the schema. ``credentials(...)``
  makes a connector's ``Auth`` model: the kind follows from the fields, or ``kind:``.
- Auth (``_auth``): ``httpx.Auth`` classes; :class:`TokenAuth` fetches, caches
  and refreshes tokens inside ``auth_flow`` (on expiry, and once on a 401).
- Grants (``_token``): the token requests (client credentials with a secret or an
  RFC 7523 assertion, refresh with rotation, JWT bearer, GitHub App, STS AssumeRole).
- Store (``_store``): ``ingest.credentials``, AES-GCM, single-flight refresh across processes.
- Consent (``_consent``): ``ingest auth NAME``; diagnosis of failed checks (``_diagnose``).
"""

from ingest.credentials._auth import ApiKeyAuth, BasicAuth, BearerAuth, SigV4Auth, TokenAuth, sigv4_sign
from ingest.credentials._kinds import (
    KINDS,
    ApiKey,
    Aws,
    Basic,
    Bearer,
    Credential,
    Credentials,
    GitHubApp,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    ServiceAccount,
    UsernameApiKey,
    check_key_matches_certificate,
    credentials,
)
from ingest.credentials._store import KEY_ENV, CredentialStore, StoredCredential, load_secret_key
from ingest.credentials._token import ConsentRequired, Grant, Token

__all__ = [
    "KEY_ENV",
    "KINDS",
    "ApiKey",
    "ApiKeyAuth",
    "Aws",
    "Basic",
    "BasicAuth",
    "Bearer",
    "BearerAuth",
    "ConsentRequired",
    "Credential",
    "CredentialStore",
    "Credentials",
    "GitHubApp",
    "Grant",
    "OAuth2AuthorizationCode",
    "OAuth2ClientCredentials",
    "ServiceAccount",
    "SigV4Auth",
    "StoredCredential",
    "Token",
    "TokenAuth",
    "UsernameApiKey",
    "check_key_matches_certificate",
    "credentials",
    "load_secret_key",
    "sigv4_sign",
]
