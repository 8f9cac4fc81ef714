"""What a token endpoint hands back, and the token requests ingest makes (one class per grant).

A :class:`Grant` builds the token request (``request``) and reads the answer
(``parse``); :class:`ingest.credentials.TokenAuth` sends it from inside
``httpx.Auth.auth_flow`` so token requests travel the same client (TLS,
proxy, timeouts, retries) as the API calls. Every assertion is signed by
PyJWT; PKCE and the authorization URL come from authlib.
"""

from __future__ import annotations

import hashlib
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from ingest.errors import AuthError, ProtocolError, RateLimitedError, RetryableError
from ingest.redact import redact, redact_url, register_secret

__all__ = [
    "Token",
    "Grant",
    "ClientCredentialsGrant",
    "RefreshGrant",
    "AuthorizationCodeGrant",
    "JwtBearerGrant",
    "GitHubInstallationGrant",
    "AssumeRoleGrant",
    "ConsentRequired",
    "token_error",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class Token:
    """A credential ingest obtained itself. ``expires_at`` is epoch seconds (None: never expires)."""

    access_token: str
    expires_at: float | None = None
    refresh_token: str | None = None
    scope: str | None = None
    token_type: str = "Bearer"
    obtained_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. AWS temporary keys

    def __post_init__(self) -> None:
        register_secret(self.access_token)
        register_secret(self.refresh_token)
        for v in self.extra.values():
            if isinstance(v, str):
                register_secret(v)

    def usable(self, now: float | None = None) -> bool:
        """Not expired, with a margin of a tenth of its lifetime (30 s at most)."""
        if self.expires_at is None:
            return True
        now = time.time() if now is None else now
        lifetime = max(self.expires_at - self.obtained_at, 0.0)
        return now < self.expires_at - min(30.0, lifetime / 10)

    def to_payload(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Token:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def __repr__(self) -> str:  # never the token itself
        return f"Token(expires_at={self.expires_at}, scope={self.scope!r}, refresh={self.refresh_token is not None})"


class ConsentRequired(AuthError):
    """An authorization-code credential has no stored grant (or it was revoked): a person must consent."""


def _where(method: str, url: str, response: httpx.Response | None = None) -> dict[str, Any]:
    line = f"{method} {redact_url(url)}"
    if response is not None:
        line += f" -> {response.status_code}"
    return {"request": line, "status_code": response.status_code if response is not None else None}


def token_error(response: httpx.Response, what: str, url: str) -> Exception:
    """The error for a non-200 token answer: 5xx/429 retryable, the rest an AuthError quoting the OAuth error."""
    where = _where(response.request.method if response._request else "POST", url, response)
    code = response.status_code
    if code == 429:
        from ingest.http._client import retry_after_seconds

        return RateLimitedError(f"the token endpoint rate limited us ({what})",
                                retry_after=retry_after_seconds(response), **where)
    if code >= 500:
        return RetryableError(f"the token endpoint failed ({what})", **where)
    reason = ""
    oauth_error = None
    try:
        body = response.json()
        if isinstance(body, dict):
            oauth_error = body.get("error")
            if isinstance(oauth_error, dict):  # some APIs nest it
                oauth_error = oauth_error.get("code") or oauth_error.get("message")
            reason = " - ".join(str(body[k]) for k in ("error", "error_description", "message") if body.get(k))
    except ValueError:
        reason = response.text[:200] if response.text else ""
    err = AuthError(redact(f"the token endpoint refused the {what}" + (f": {reason}" if reason else "")), **where)
    err.oauth_error = oauth_error  # type: ignore[attr-defined]
    return err


def _parse_oauth(response: httpx.Response, url: str, what: str, previous: Token | None = None) -> Token:
    if response.status_code != 200:
        raise token_error(response, what, url)
    try:
        body = response.json()
        access = body["access_token"]
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("the token endpoint answered without an access_token", **_where("POST", url, response)) \
            from None
    if not isinstance(access, str) or not access:
        raise ProtocolError("the token endpoint answered without an access_token", **_where("POST", url, response))
    now = time.time()
    try:
        lifetime = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    refresh = body.get("refresh_token") or (previous.refresh_token if previous else None)
    scope = body.get("scope") or (previous.scope if previous else None)
    return Token(access_token=access, expires_at=now + lifetime, refresh_token=refresh, scope=scope,
                 token_type=str(body.get("token_type") or "Bearer"), obtained_at=now)


class Grant:
    """One way of getting a token. ``binding`` names the configuration a stored token belongs to."""

    kind: str = ""
    token_url: str = ""
    what: str = "credentials"

    @property
    def binding(self) -> str:
        return hashlib.sha256(f"{self.kind}|{self.token_url}|{self._identity()}".encode()).hexdigest()[:16]

    def _identity(self) -> str:
        return ""

    def request(self, current: Token | None) -> httpx.Request:
        raise NotImplementedError

    def parse(self, response: httpx.Response, current: Token | None) -> Token:
        return _parse_oauth(response, self.token_url, self.what, current)

    def apply(self, request: httpx.Request, token: Token) -> None:
        request.headers["Authorization"] = f"Bearer {token.access_token}"


def certificate_thumbprints(certificate_pem: str) -> dict[str, str]:
    """The JWS header parameters naming an X.509 certificate by thumbprint (RFC 7515 §4.1.7-8):
    ``x5t`` (base64url SHA-1 of the DER encoding) and ``x5t#S256`` (SHA-256), as Microsoft Entra
    reads them to find which uploaded certificate signed a client assertion."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(certificate_pem.encode())

    def b64(digest: bytes) -> str:
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    return {"x5t": b64(cert.fingerprint(hashes.SHA1())), "x5t#S256": b64(cert.fingerprint(hashes.SHA256()))}


class _ClientAuth:
    """How an OAuth client proves itself at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).

    With ``certificate`` (PEM) a private_key_jwt assertion names it by thumbprint in its header
    (``x5t``, ``x5t#S256``), and ``nbf`` is set: Microsoft Entra's certificate credentials."""

    def __init__(self, client_id: str, client_secret: str | None, method: str, token_url: str,
                 private_key: str | None = None, key_id: str | None = None, algorithm: str = "RS256",
                 certificate: str | None = None) -> None:
        self.client_id, self.client_secret, self.method = client_id, client_secret, method
        self.token_url, self.private_key, self.key_id, self.algorithm = token_url, private_key, key_id, algorithm
        self.header: dict[str, str] = {"kid": key_id} if key_id else {}
        if certificate:
            self.header.update(certificate_thumbprints(certificate))
        self.certificate = certificate
        register_secret(client_secret)
        register_secret(private_key)

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        if self.method == "private_key_jwt":
            now = int(time.time())
            claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url, "iat": now,
                      "exp": now + 300, "jti": uuid.uuid4().hex}
            if self.certificate:
                claims["nbf"] = now
            assertion = jwt.encode(claims, self.private_key, algorithm=self.algorithm,
                                   headers=self.header or None)
            register_secret(assertion)
            form.update(client_id=self.client_id, client_assertion_type=CLIENT_ASSERTION, client_assertion=assertion)
        elif self.method == "client_secret_basic" and self.client_secret is not None:
            basic = httpx.BasicAuth(_form_encode(self.client_id), _form_encode(self.client_secret))
            header = basic._auth_header  # httpx builds the RFC 7617 header
            register_secret(header.partition(" ")[2])
            headers["Authorization"] = header
        else:  # client_secret_post, or a public client (PKCE only)
            form["client_id"] = self.client_id
            if self.client_secret is not None:
                form["client_secret"] = self.client_secret


def _form_encode(value: str) -> str:
    from urllib.parse import quote_plus

    return quote_plus(value)  # RFC 6749 §2.3.1: form-encode before Basic


def _post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Request:
    return httpx.Request("POST", url, data=form, headers={"Accept": "application/json", **(headers or {})})


class ClientCredentialsGrant(Grant):
    """RFC 6749 §4.4: ``grant_type=client_credentials`` with a secret (basic/post) or a signed assertion."""

    kind = "oauth2_client_credentials"
    what = "client credentials"

    def __init__(self, token_url: str, client: _ClientAuth, scope: str | None, extra: dict[str, str]) -> None:
        self.token_url, self.client, self.scope, self.extra = token_url, client, scope, extra

    def _identity(self) -> str:
        return f"{self.client.client_id}|{self.scope}"

    def request(self, current: Token | None) -> httpx.Request:
        form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {}), **self.extra}
        headers: dict[str, str] = {}
        self.client.apply(form, headers)
        return _post(self.token_url, form, headers)


class RefreshGrant(Grant):
    """RFC 6749 §6 for an authorization-code grant: only a stored refresh token gets a new access token."""

    kind = "oauth2_authorization_code"
    what = "refresh token"

    def __init__(self, token_url: str, client: _ClientAuth, scope: str | None, connector: str | None) -> None:
        self.token_url, self.client, self.scope, self.connector = token_url, client, scope, connector

    def _identity(self) -> str:
        return self.client.client_id

    @property
    def name(self) -> str:
        return self.connector or "NAME"

    def request(self, current: Token | None) -> httpx.Request:
        if current is None or not current.refresh_token:
            raise ConsentRequired(f"{self.name} has no stored consent: run `ingest auth {self.name}`",
                                  connector=self.connector)
        form = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        headers: dict[str, str] = {}
        self.client.apply(form, headers)
        return _post(self.token_url, form, headers)

    def parse(self, response: httpx.Response, current: Token | None) -> Token:
        if response.status_code in (400, 401, 403):  # Atlassian refuses a spent refresh token with a 403
            err = token_error(response, self.what, self.token_url)
            if getattr(err, "oauth_error", None) == "invalid_grant":
                raise ConsentRequired(
                    f"the consent for {self.name} has expired or was revoked (invalid_grant): "
                    f"run `ingest auth {self.name}` again", connector=self.connector,
                    request=getattr(err, "request", None))
            raise err
        return super().parse(response, current)


class AuthorizationCodeGrant(RefreshGrant):
    """RFC 6749 §4.1.3 with PKCE (RFC 7636): the code from the redirect plus the verifier buy the first tokens.

    Stored under the same binding as :class:`RefreshGrant`, so later runs refresh what this obtained.
    """

    what = "authorization code"

    def __init__(self, token_url: str, client: _ClientAuth, scope: str | None, connector: str | None, *, code: str,
                 redirect_uri: str, code_verifier: str) -> None:
        super().__init__(token_url, client, scope, connector)
        self.code, self.redirect_uri, self.code_verifier = code, redirect_uri, code_verifier
        register_secret(code)
        register_secret(code_verifier)

    def request(self, current: Token | None) -> httpx.Request:
        form = {"grant_type": "authorization_code", "code": self.code, "redirect_uri": self.redirect_uri,
                "code_verifier": self.code_verifier}
        headers: dict[str, str] = {}
        self.client.apply(form, headers)
        return _post(self.token_url, form, headers)

    def parse(self, response: httpx.Response, current: Token | None) -> Token:
        if response.status_code != 200:
            raise token_error(response, self.what, self.token_url)
        return _parse_oauth(response, self.token_url, self.what, None)


class JwtBearerGrant(Grant):
    """RFC 7523 §2.1 (Google service accounts): a signed JWT with ``iss``, ``sub``, ``scope``, ``aud``."""

    kind = "service_account"
    what = "service account assertion"

    def __init__(self, key: dict[str, Any], subject: str | None, scopes: list[str], token_url: str | None) -> None:
        self.key = key
        self.token_url = token_url or key.get("token_uri") or "https://oauth2.googleapis.com/token"
        self.subject, self.scopes = subject, scopes

    def _identity(self) -> str:
        return f"{self.key.get('client_email')}|{self.subject}|{' '.join(self.scopes)}"

    def request(self, current: Token | None) -> httpx.Request:
        now = int(time.time())
        claims = {"iss": self.key["client_email"], "aud": self.token_url, "iat": now, "exp": now + 3600,
                  "scope": " ".join(self.scopes)}
        if self.subject:
            claims["sub"] = self.subject
        kid = self.key.get("private_key_id")
        assertion = jwt.encode(claims, self.key["private_key"], algorithm="RS256",
                               headers={"kid": kid} if kid else None)
        register_secret(assertion)
        return _post(self.token_url, {"grant_type": JWT_BEARER, "assertion": assertion})


class GitHubInstallationGrant(Grant):
    """A GitHub App: an RS256 app JWT (``iss`` = app id, 10 minutes at most) buys an installation token.

        POST {api_url}/app/installations/{installation_id}/access_tokens
        Authorization: Bearer <app JWT>
        -> 201 {"token": "ghs_...", "expires_at": "2026-01-01T00:00:00Z", "permissions": {...}}
    """

    kind = "github_app"
    what = "GitHub App key"

    def __init__(self, api_url: str, app_id: str, private_key: str, installation_id: str) -> None:
        self.token_url = f"{api_url.rstrip('/')}/app/installations/{installation_id}/access_tokens"
        self.app_id, self.private_key = app_id, private_key
        register_secret(private_key)

    def _identity(self) -> str:
        return self.app_id

    def request(self, current: Token | None) -> httpx.Request:
        now = int(time.time())
        app_jwt = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(self.app_id)}, self.private_key,
                             algorithm="RS256")
        register_secret(app_jwt)
        return httpx.Request("POST", self.token_url, headers={
            "Authorization": f"Bearer {app_jwt}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28"})

    def parse(self, response: httpx.Response, current: Token | None) -> Token:
        if response.status_code not in (200, 201):
            raise token_error(response, self.what, self.token_url)
        try:
            body = response.json()
            token = body["token"]
            expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ProtocolError("GitHub answered without an installation token",
                                **_where("POST", self.token_url, response)) from None
        perms = body.get("permissions") or {}
        return Token(access_token=token, expires_at=expires,
                     scope=" ".join(f"{k}:{v}" for k, v in sorted(perms.items())) or None)


class AssumeRoleGrant(Grant):
    """AWS STS ``AssumeRole``, signed (SigV4, by botocore) with the configured keys; the answer is temporary keys."""

    kind = "aws"
    what = "AWS keys (sts:AssumeRole)"

    def __init__(self, sts_url: str, role_arn: str, session_name: str, region: str, base: Any,
                 duration: int = 3600, external_id: str | None = None) -> None:
        self.token_url = sts_url
        self.role_arn, self.session_name, self.region, self.base = role_arn, session_name, region, base
        self.duration, self.external_id = duration, external_id

    def _identity(self) -> str:
        return f"{self.base.access_key}|{self.role_arn}"

    def request(self, current: Token | None) -> httpx.Request:
        from ingest.credentials._auth import sigv4_sign

        params = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": self.role_arn,
                  "RoleSessionName": self.session_name, "DurationSeconds": str(self.duration)}
        if self.external_id:
            params["ExternalId"] = self.external_id
        request = httpx.Request("POST", self.token_url, data=params,
                                headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        sigv4_sign(request, self.base, "sts", self.region)
        return request

    def parse(self, response: httpx.Response, current: Token | None) -> Token:
        if response.status_code != 200:
            err = token_error(response, self.what, self.token_url)
            code = _aws_error_code(response.text)
            if code and isinstance(err, AuthError):
                err = AuthError(f"STS refused AssumeRole of {self.role_arn}: {code}", request=err.request,
                                status_code=response.status_code)
            raise err
        try:
            root = ET.fromstring(response.content)
            ns = {"s": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
            find = (lambda p: root.find(".//s:" + p, ns)) if ns else (lambda p: root.find(".//" + p))
            key, secret, session = (find(t).text for t in ("AccessKeyId", "SecretAccessKey", "SessionToken"))
            expires = datetime.fromisoformat(find("Expiration").text.replace("Z", "+00:00")).timestamp()
        except (ET.ParseError, AttributeError, ValueError):
            raise ProtocolError("STS answered without credentials", **_where("POST", self.token_url, response)) \
                from None
        return Token(access_token=session, expires_at=expires, token_type="aws",
                     extra={"access_key_id": key, "secret_access_key": secret, "session_token": session})

    def apply(self, request: httpx.Request, token: Token) -> None:
        from botocore.credentials import Credentials

        from ingest.credentials._auth import sigv4_sign

        creds = Credentials(token.extra["access_key_id"], token.extra["secret_access_key"],
                            token.extra["session_token"])
        sigv4_sign(request, creds, self.service, self.region)

    service = "iam"


def _aws_error_code(text: str) -> str | None:
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Code") and el.text:
            return el.text
    return None


def host_of(url: str) -> str:
    return urlsplit(url).netloc
