"""Authentication: pydantic config models that build ``httpx.Auth`` objects."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

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
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class ApiKeyAuth(httpx.Auth):
    """An API key in any header, with an optional prefix (``X-API-Key: k``, ``Authorization: SSWS k``)."""

    def __init__(self, key: str, header: str = "Authorization", prefix: str = "") -> None:
        self._header, self._value = header, f"{prefix} {key}".strip() if prefix else key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self._header] = self._value
        yield request


class OAuth2ClientCredentials(httpx.Auth):
    """OAuth 2.0 client credentials; fetches a token, refreshes it before expiry and once on a 401."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.token_url = token_url
        self._form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        if scope:
            self._form["scope"] = scope
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def _token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.token_url, data=self._form)

    def _store(self, response: httpx.Response) -> None:
        from ingest.errors import AuthError

        if response.status_code != 200:
            raise AuthError(f"token endpoint refused the client credentials (HTTP {response.status_code})")
        response.read()
        body = response.json()
        self._token = body["access_token"]
        self._expires = time.monotonic() + float(body.get("expires_in", 3600)) - 30

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._token is None or time.monotonic() >= self._expires:
            self._store((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            self._store((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


class _AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def httpx_auth(self) -> httpx.Auth:  # pragma: no cover - abstract
        raise NotImplementedError


class BearerTokenConfig(_AuthConfig):
    bearer_token: SecretStr = Field(description="API bearer token.")

    def httpx_auth(self) -> httpx.Auth:
        return BearerAuth(self.bearer_token.get_secret_value())


class BasicAuthConfig(_AuthConfig):
    username: str
    password: SecretStr

    def httpx_auth(self) -> httpx.Auth:
        return httpx.BasicAuth(self.username, self.password.get_secret_value())


class ApiKeyConfig(_AuthConfig):
    api_key: SecretStr
    header: str = "Authorization"
    prefix: str = ""

    def httpx_auth(self) -> httpx.Auth:
        return ApiKeyAuth(self.api_key.get_secret_value(), self.header, self.prefix)


class OAuth2ClientCredentialsConfig(_AuthConfig):
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None

    def httpx_auth(self) -> httpx.Auth:
        return OAuth2ClientCredentials(self.token_url, self.client_id, self.client_secret.get_secret_value(), self.scope)
