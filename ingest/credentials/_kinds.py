"""Credential kinds: one pydantic model per kind, each building its ``httpx.Auth``.

A connector says which kinds it accepts with :func:`credentials`; the kind of
an ``auth:`` block follows from its fields, or from ``kind:`` where several
accepted kinds share fields::

    class JiraOAuth(OAuth2AuthorizationCode):            # per-connector defaults
        authorize_url: str = "https://auth.atlassian.com/authorize"
        token_url: str = "https://auth.atlassian.com/oauth/token"

    class Jira(Connector):
        Auth = credentials(UsernameApiKey, JiraOAuth)

    auth = self.auth.httpx_auth()                         # in the connector
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Union

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from ingest.credentials._auth import ApiKeyAuth, BasicAuth, BearerAuth, SigV4Auth, TokenAuth
from ingest.credentials._token import (
    AssumeRoleGrant,
    ClientCredentialsGrant,
    GitHubInstallationGrant,
    JwtBearerGrant,
    RefreshGrant,
    _ClientAuth,
)
from ingest.redact import register_secret

__all__ = [
    "KINDS",
    "Credential",
    "Credentials",
    "Basic",
    "ApiKey",
    "Bearer",
    "UsernameApiKey",
    "OAuth2ClientCredentials",
    "OAuth2AuthorizationCode",
    "ServiceAccount",
    "Aws",
    "GitHubApp",
    "credentials",
    "check_key_matches_certificate",
    "Secret",
]


def Secret(description: str = "", default: Any = ..., section: str = "general") -> Any:  # noqa: N802 - a field factory
    """A secret field: ``SecretStr``, ``writeOnly`` in the JSON schema (a form shows it locked, never back)."""
    return Field(default, description=description, json_schema_extra={"writeOnly": True, "x-section": section})


def Setting(default: Any = ..., description: str = "", section: str = "general", **kw: Any) -> Any:  # noqa: N802
    return Field(default, description=description, json_schema_extra={"x-section": section}, **kw)


def _scopes(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return v.replace(",", " ").split()
    return [str(s) for s in v]


class Credential(BaseModel):
    """Base of every kind: ``httpx_auth()`` builds the wire form; tokens it obtains go to ``store``."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str]

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        raise NotImplementedError

    @property
    def needs_consent(self) -> bool:
        return False

    def secrets(self) -> list[str]:
        out = []
        for name in type(self).model_fields:
            v = getattr(self, name)
            if isinstance(v, SecretStr):
                out.append(v.get_secret_value())
        return out


class Basic(Credential):
    """``auth: {username: bob, password: "${PASSWORD}"}``"""

    kind: ClassVar[str] = "basic"
    type: Literal["basic"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    username: str = Setting(description="User name.")
    password: SecretStr = Secret("Password.")

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return BasicAuth(self.username, self.password.get_secret_value())


class Bearer(Credential):
    """``auth: {bearer_token: "${TOKEN}"}``"""

    kind: ClassVar[str] = "bearer"
    type: Literal["bearer"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    bearer_token: SecretStr = Secret("API bearer token (Authorization: Bearer ...).")

    @field_validator("bearer_token")
    @classmethod
    def _not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("bearer_token is empty (is its environment variable set?)")
        return v

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return BearerAuth(self.bearer_token.get_secret_value().strip())


class ApiKey(Credential):
    """``auth: {api_key: "${KEY}", header: X-API-Key}``, ``prefix: SSWS``, ``query_param: api_key``, ``api_secret``."""

    kind: ClassVar[str] = "api_key"
    type: Literal["api_key"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    api_key: SecretStr = Secret("API key.")
    api_secret: SecretStr | None = Secret("API secret, for sources that want a key and a secret.", None)
    header: str = Setting("Authorization", "Header that carries the key.", "advanced", min_length=1)
    prefix: str = Setting("", "Text before the key in the header, e.g. 'SSWS' or 'Token token='.", "advanced")
    secret_header: str = Setting("X-API-Secret", "Header that carries api_secret.", "advanced", min_length=1)
    query_param: str | None = Setting(None, "Send the key as this query parameter instead of a header.", "advanced")

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return ApiKeyAuth(self.api_key.get_secret_value(), self.header, self.prefix, self.query_param,
                          secret=self.api_secret.get_secret_value() if self.api_secret else None,
                          secret_header=self.secret_header)


class UsernameApiKey(Credential):
    """``auth: {username: bob@acme.com, api_key: "${JIRA_TOKEN}"}``: HTTP Basic with an API token (Atlassian)."""

    kind: ClassVar[str] = "username_api_key"
    type: Literal["username_api_key"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    username: str = Setting(description="User name or e-mail.")
    api_key: SecretStr = Secret("API token.")

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return BasicAuth(self.username, self.api_key.get_secret_value())


_METHODS = {"post": "client_secret_post", "basic": "client_secret_basic"}


def check_key_matches_certificate(private_key_pem: str, certificate_pem: str) -> None:
    """ValueError (quoting neither) unless the PEM private key is the one the PEM certificate certifies."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.strip().encode())
    except ValueError:
        raise ValueError("certificate is not a PEM X.509 certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(private_key_pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("private_key is not an unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ValueError("private_key is not the key of certificate (their public keys differ): give the "
                         "certificate's own private key")


class OAuth2ClientCredentials(Credential):
    """``auth: {client_id, client_secret, token_url, scopes}``, or ``private_key`` + ``key_id`` (RFC 7523 assertion)."""

    kind: ClassVar[str] = "oauth2_client_credentials"
    type: Literal["oauth2_client_credentials"] | None = Field(None, alias="kind",
                                                              description="Credential kind (optional).")
    client_id: str = Setting(description="OAuth client id.")
    client_secret: SecretStr | None = Secret("OAuth client secret.", None)
    private_key: SecretStr | None = Secret("PEM private key for private_key_jwt (instead of a secret).", None)
    key_id: str | None = Setting(None, "kid of the private key, as registered with the provider.")
    certificate: str | None = Setting(None, "PEM X.509 certificate of the private key, when the provider knows the "
                                      "key by its certificate (Microsoft Entra): its thumbprints go in the "
                                      "assertion's header (x5t, x5t#S256).", "advanced")
    token_url: str = Setting(description="Token endpoint.", section="advanced")
    scopes: list[str] = Setting([], "Scopes to ask for.", "additional")
    auth_method: Literal["client_secret_post", "client_secret_basic", "private_key_jwt", "post", "basic"] | None = \
        Setting(None, "How the client authenticates (default: private_key_jwt with a key, else client_secret_post).",
                "advanced")
    algorithm: Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"] = Setting(
        "RS256", "Signing algorithm of the client assertion.", "advanced")
    extra: dict[str, str] = Setting({}, "Extra token request fields (e.g. audience).", "advanced")

    @model_validator(mode="before")
    @classmethod
    def _scope_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scope" in data and "scopes" not in data:
            data = {**data, "scopes": data["scope"]}
            del data["scope"]
        return data

    _split = field_validator("scopes", mode="before")(lambda cls, v: _scopes(v))

    @model_validator(mode="after")
    def _one_secret(self) -> OAuth2ClientCredentials:
        if (self.client_secret is None) == (self.private_key is None):
            raise ValueError("give client_secret, or private_key (+ key_id) for private_key_jwt")
        if self.private_key is not None and self.method != "private_key_jwt":
            raise ValueError("private_key goes with auth_method private_key_jwt")
        if self.certificate is not None:
            if self.private_key is None:
                raise ValueError("certificate goes with private_key (private_key_jwt)")
            check_key_matches_certificate(self.private_key.get_secret_value(), self.certificate)
        return self

    @property
    def method(self) -> str:
        if self.auth_method is None:
            return "private_key_jwt" if self.private_key is not None else "client_secret_post"
        return _METHODS.get(self.auth_method, self.auth_method)

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        client = _ClientAuth(self.client_id, self.client_secret.get_secret_value() if self.client_secret else None,
                             self.method, self.token_url,
                             self.private_key.get_secret_value() if self.private_key else None, self.key_id,
                             self.algorithm, self.certificate)
        grant = ClientCredentialsGrant(self.token_url, client, " ".join(self.scopes) or None, self.extra)
        return TokenAuth(grant, store=store, connector=connector)


class OAuth2AuthorizationCode(Credential):
    """``auth: {client_id, client_secret, authorize_url, token_url, scopes, redirect_uri}``; tokens from ``ingest auth``."""

    kind: ClassVar[str] = "oauth2_authorization_code"
    type: Literal["oauth2_authorization_code"] | None = Field(None, alias="kind",
                                                              description="Credential kind (optional).")
    client_id: str = Setting(description="OAuth client id.")
    client_secret: SecretStr | None = Secret("OAuth client secret (omit for a public client).", None)
    authorize_url: str = Setting(description="Authorization endpoint.", section="advanced")
    token_url: str = Setting(description="Token endpoint.", section="advanced")
    scopes: list[str] = Setting([], "Scopes to ask for (offline_access or the provider's equivalent for a refresh "
                                    "token).", "additional")
    redirect_uri: str = Setting("http://127.0.0.1:8765/callback", "Loopback redirect URI registered with the "
                                "provider (ingest auth listens on it).", "advanced")
    auth_method: Literal["client_secret_post", "client_secret_basic", "none"] | None = Setting(
        None, "How the client authenticates at the token endpoint (default: post with a secret, none without).",
        "advanced")
    authorize_params: dict[str, str] = Setting({}, "Extra authorization request parameters (e.g. audience, "
                                                   "prompt).", "advanced")

    _split = field_validator("scopes", mode="before")(lambda cls, v: _scopes(v))

    @property
    def needs_consent(self) -> bool:
        return True

    @property
    def method(self) -> str:
        if self.auth_method is not None:
            return self.auth_method
        return "client_secret_post" if self.client_secret is not None else "none"

    def client_auth(self) -> _ClientAuth:
        return _ClientAuth(self.client_id, self.client_secret.get_secret_value() if self.client_secret else None,
                           self.method, self.token_url)

    def grant(self, connector: str | None) -> RefreshGrant:
        return RefreshGrant(self.token_url, self.client_auth(), " ".join(self.scopes) or None, connector)

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return TokenAuth(self.grant(connector), store=store, connector=connector)


class ServiceAccount(Credential):
    """``auth: {service_account_json: "${file:sa.json}", subject: admin@acme.com, scopes: [...]}`` (Google)."""

    kind: ClassVar[str] = "service_account"
    type: Literal["service_account"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    service_account_json: SecretStr = Secret("The service account's JSON key file (usually ${file:...}).")
    subject: str | None = Setting(None, "User to act as (domain-wide delegation), e.g. an admin's e-mail.")
    scopes: list[str] = Setting([], "Scopes to ask for.", "additional")
    token_url: str | None = Setting(None, "Token endpoint (default: token_uri from the key file).", "advanced")

    _split = field_validator("scopes", mode="before")(lambda cls, v: _scopes(v))

    @field_validator("service_account_json")
    @classmethod
    def _key_file(cls, v: SecretStr) -> SecretStr:
        try:
            doc = json.loads(v.get_secret_value())
        except ValueError:
            raise ValueError("service_account_json is not JSON (point it at the key file with ${file:PATH})") \
                from None
        missing = [k for k in ("client_email", "private_key") if not isinstance(doc, dict) or not doc.get(k)]
        if missing:
            raise ValueError(f"service_account_json has no {', '.join(missing)} (is it a service account key?)")
        register_secret(doc["private_key"])
        return v

    @property
    def key(self) -> dict[str, Any]:
        return json.loads(self.service_account_json.get_secret_value())

    def secrets(self) -> list[str]:
        return [*super().secrets(), self.key["private_key"]]

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return TokenAuth(JwtBearerGrant(self.key, self.subject, self.scopes, self.token_url),
                         store=store, connector=connector)


class Aws(Credential):
    """``auth: {access_key_id, secret_access_key, session_token?, role_arn?, region}``: SigV4 (botocore)."""

    kind: ClassVar[str] = "aws"
    type: Literal["aws"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    access_key_id: str = Setting(description="Access key id.")
    secret_access_key: SecretStr = Secret("Secret access key.")
    session_token: SecretStr | None = Secret("Session token of temporary keys.", None)
    role_arn: str | None = Setting(None, "Role to assume (sts:AssumeRole) with these keys.", "additional")
    external_id: str | None = Setting(None, "External id the role's trust policy asks for.", "additional")
    region: str = Setting("us-east-1", "Region to sign for.", "additional")
    service: str = Setting("iam", "Service to sign for.", "advanced")
    sts_url: str | None = Setting(None, "STS endpoint (default: https://sts.<region>.amazonaws.com).", "advanced")
    session_name: str = Setting("ingest", "RoleSessionName of the assumed role.", "advanced")

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        base = SigV4Auth(self.access_key_id, self.secret_access_key.get_secret_value(),
                         self.session_token.get_secret_value() if self.session_token else None,
                         self.service, self.region)
        if not self.role_arn:
            return base
        grant = AssumeRoleGrant(self.sts_url or f"https://sts.{self.region}.amazonaws.com/", self.role_arn,
                                self.session_name, self.region, base.credentials, external_id=self.external_id)
        grant.service = self.service
        return TokenAuth(grant, store=store, connector=connector)


class GitHubApp(Credential):
    """``auth: {app_id: 12345, private_key: "${file:app.pem}", installation_id: 678}``."""

    kind: ClassVar[str] = "github_app"
    type: Literal["github_app"] | None = Field(None, alias="kind", description="Credential kind (optional).")
    app_id: str = Setting(description="GitHub App id.")
    private_key: SecretStr = Secret("The App's private key (PEM).")
    installation_id: str = Setting(description="Installation id of the App in the organisation.")
    api_url: str = Setting("https://api.github.com", "GitHub API URL (GitHub Enterprise: https://HOST/api/v3).",
                           "advanced")

    _str = field_validator("app_id", "installation_id", mode="before")(lambda cls, v: str(v))

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return TokenAuth(GitHubInstallationGrant(self.api_url, self.app_id, self.private_key.get_secret_value(),
                                                 self.installation_id), store=store, connector=connector)


KINDS: dict[str, type[Credential]] = {c.kind: c for c in (
    Basic, ApiKey, Bearer, UsernameApiKey, OAuth2ClientCredentials, OAuth2AuthorizationCode, ServiceAccount, Aws,
    GitHubApp)}

# Which field gives a kind away, most specific first.
_TELLS: list[tuple[str, str]] = [
    ("bearer_token", "bearer"),
    ("access_key_id", "aws"),
    ("service_account_json", "service_account"),
    ("installation_id", "github_app"),
    ("app_id", "github_app"),
    ("authorize_url", "oauth2_authorization_code"),
    ("redirect_uri", "oauth2_authorization_code"),
    ("client_id", "oauth2_client_credentials"),
    ("api_key", "api_key"),
    ("password", "basic"),
]


class Credentials(RootModel[Any]):
    """An ``auth:`` block that accepts several kinds; behaves like the credential it holds."""

    accepted: ClassVar[dict[str, type[Credential]]] = {}

    @property
    def credential(self) -> Credential:
        return self.root

    @property
    def kind(self) -> str:
        return self.root.kind

    @property
    def needs_consent(self) -> bool:
        return self.root.needs_consent

    def httpx_auth(self, store: Any = None, connector: str | None = None) -> httpx.Auth:
        return self.root.httpx_auth(store, connector)

    @classmethod
    def model_json_schema(cls, *args: Any, **kw: Any) -> dict[str, Any]:
        """One of the accepted kinds' objects (``oneOf``), itself an object as form renderers expect."""
        schema = super().model_json_schema(*args, **kw)
        schema.setdefault("type", "object")
        schema.setdefault("x-kinds", list(cls.accepted))
        return schema

    def __getattr__(self, name: str) -> Any:  # auth.username, auth.bearer_token, ...
        if name.startswith("_") or name in ("root",):
            raise AttributeError(name)
        return getattr(self.root, name)


def _infer(accepted: dict[str, type[Credential]]):
    def kind_of(value: Any) -> str | None:
        if isinstance(value, Credential):
            return value.kind
        if not isinstance(value, dict):
            return None
        if "kind" in value:
            return value["kind"] if value["kind"] in accepted else None
        keys = set(value)
        if "api_key" in keys and "username" in keys and "username_api_key" in accepted:
            return "username_api_key"
        for field, kind in _TELLS:
            if field in keys:
                if kind in accepted:
                    return kind
                if kind == "oauth2_client_credentials" and "oauth2_authorization_code" in accepted:
                    return "oauth2_authorization_code"
        if len(accepted) == 1:
            return next(iter(accepted))
        return None

    return kind_of


def credentials(*kinds: str | type[Credential], name: str = "Auth") -> type[Credentials]:
    """The ``Auth`` model of a connector that accepts these kinds (names, or kind subclasses with defaults)."""
    accepted: dict[str, type[Credential]] = {}
    for k in kinds:
        cls = KINDS[k] if isinstance(k, str) else k
        accepted[cls.kind] = cls
    known = ", ".join(accepted)
    union = Annotated[
        Union[tuple(Annotated[c, Tag(k)] for k, c in accepted.items())],  # noqa: UP007
        Discriminator(_infer(accepted), custom_error_type="credential_kind",
                      custom_error_message=f"cannot tell the credential kind from these fields: give the fields of "
                                           f"one of {known} (or `kind:` naming one of them)",
                      custom_error_context={"accepted": known}),
    ]
    model = type(name, (Credentials,), {"__annotations__": {"root": union}, "accepted": accepted,
                                        "__module__": __name__})
    return model
