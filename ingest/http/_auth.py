"""Authentication: pydantic config models that build ``httpx.Auth`` objects.

Every auth object registers the secret it puts on the wire with
:mod:`ingest.redact`, so the value is masked in logs and errors even when it
did not come through the config loader.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Generator
from typing import Literal
from urllib.parse import quote_plus

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ingest.redact import redact, register_secret

__all__ = [
    "BearerAuth",
    "ApiKeyAuth",
    "OAuth2ClientCredentials",
    "BearerTokenConfig",
    "BasicAuthConfig",
    "ApiKeyConfig",
    "OAuth2ClientCredentialsConfig",
]


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        register_secret(token)
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class ApiKeyAuth(httpx.Auth):
    """An API key in any header, with an optional prefix, or in a query parameter.

    ``ApiKeyAuth(k, "X-API-Key")`` -> ``X-API-Key: k``;
    ``ApiKeyAuth(k, prefix="SSWS")`` -> ``Authorization: SSWS k``;
    ``ApiKeyAuth(k, query_param="api_key")`` -> ``?api_key=k``.
    """

    def __init__(self, key: str, header: str = "Authorization", prefix: str = "",
                 query_param: str | None = None) -> None:
        register_secret(key)
        self._header = header
        self._value = f"{prefix.strip()} {key}" if prefix.strip() else key
        self._key = key
        self._query_param = query_param

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._query_param:
            request.url = request.url.copy_merge_params({self._query_param: self._key})
        else:
            request.headers[self._header] = self._value
        yield request


class OAuth2ClientCredentials(httpx.Auth):
    """OAuth 2.0 client credentials grant (RFC 6749 §4.4).

    Fetches a token before the first request, refreshes it shortly before
    ``expires_in`` runs out, and once more when the API answers 401 (a token
    revoked early). Threads of one client share one token. The client
    authenticates with ``client_secret_post`` (form fields, the default) or
    ``client_secret_basic`` (``auth_method="basic"``). The token request is::

        POST <token_url>
        grant_type=client_credentials&client_id=..&client_secret=..&scope=..

    and the answer ``{"access_token": "..", "token_type": "Bearer", "expires_in": 3600}``.
    """

    requires_response_body = True

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None, *,
                 auth_method: Literal["post", "basic"] = "post", extra: dict[str, str] | None = None) -> None:
        register_secret(client_secret)
        self.token_url = token_url
        self._form: dict[str, str] = {"grant_type": "client_credentials"}
        self._headers = {"Accept": "application/json"}
        if auth_method == "basic":
            pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
            basic = base64.b64encode(pair).decode()
            register_secret(basic)
            self._headers["Authorization"] = f"Basic {basic}"
        else:
            self._form.update(client_id=client_id, client_secret=client_secret)
        if scope:
            self._form["scope"] = scope
        self._form.update(extra or {})
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def _token_request(self, original: httpx.Request) -> httpx.Request:
        # A request built here gets none of the client's defaults: carry the timeout over.
        return httpx.Request("POST", self.token_url, data=self._form, headers=self._headers,
                             extensions={k: v for k, v in original.extensions.items() if k == "timeout"})

    def _store(self, response: httpx.Response) -> None:
        from ingest.errors import AuthError, ProtocolError, RateLimitedError, RetryableError

        where = {"request": f"POST {self.token_url} -> {response.status_code}", "status_code": response.status_code}
        code = response.status_code
        if code != 200:
            if code == 429:
                raise RateLimitedError("the token endpoint rate limited us", **where)
            if code >= 500:
                raise RetryableError("the token endpoint failed", **where)
            reason = ""
            try:
                body = response.json()
                reason = ": " + " - ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
            except (ValueError, AttributeError):
                pass
            raise AuthError(redact(f"the token endpoint refused the client credentials{reason}"), **where)
        try:
            body = response.json()
            token = body["access_token"]
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("the token endpoint answered without an access_token", **where) from None
        if not isinstance(token, str) or not token:
            raise ProtocolError("the token endpoint answered without an access_token", **where)
        register_secret(token)
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = token
        self._expires = time.monotonic() + lifetime - min(30.0, lifetime / 10)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._store((yield self._token_request(request)))
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            with self._lock:
                if self._token == token:  # no other thread refreshed it meanwhile
                    self._store((yield self._token_request(request)))
                token = self._token
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


class _AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def httpx_auth(self) -> httpx.Auth:  # pragma: no cover - abstract
        raise NotImplementedError


class BearerTokenConfig(_AuthConfig):
    """``auth: {bearer_token: "${TOKEN}"}``"""

    bearer_token: SecretStr = Field(description="API bearer token.")

    def httpx_auth(self) -> httpx.Auth:
        return BearerAuth(self.bearer_token.get_secret_value())


class BasicAuthConfig(_AuthConfig):
    """``auth: {username: bob, password: "${PASSWORD}"}`` (also username + API token, as Jira uses)."""

    username: str
    password: SecretStr

    def httpx_auth(self) -> httpx.Auth:
        password = self.password.get_secret_value()
        register_secret(password)
        register_secret(base64.b64encode(f"{self.username}:{password}".encode()).decode())
        return httpx.BasicAuth(self.username, password)


class ApiKeyConfig(_AuthConfig):
    """``auth: {api_key: "${KEY}", header: X-API-Key}``, ``prefix: SSWS``, or ``query_param: api_key``."""

    api_key: SecretStr
    header: str = Field("Authorization", min_length=1, description="Header that carries the key.")
    prefix: str = Field("", description="Text before the key in the header, e.g. 'SSWS' or 'Token'.")
    query_param: str | None = Field(None, description="Send the key as this query parameter instead of a header.")

    def httpx_auth(self) -> httpx.Auth:
        return ApiKeyAuth(self.api_key.get_secret_value(), self.header, self.prefix, self.query_param)


class OAuth2ClientCredentialsConfig(_AuthConfig):
    """``auth: {token_url: ..., client_id: ..., client_secret: "${SECRET}", scope: ...}``"""

    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    auth_method: Literal["post", "basic"] = Field(
        "post", description="How the client authenticates: form fields (post) or HTTP Basic (basic).")
    extra: dict[str, str] = Field(default_factory=dict, description="Extra token request fields (e.g. audience).")

    def httpx_auth(self) -> httpx.Auth:
        return OAuth2ClientCredentials(self.token_url, self.client_id, self.client_secret.get_secret_value(),
                                       self.scope, auth_method=self.auth_method, extra=self.extra)
