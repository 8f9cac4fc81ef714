"""``httpx.Auth`` classes: static credentials, SigV4, and :class:`TokenAuth` for every kind that obtains tokens.

Every auth object registers the secret it puts on the wire with
:mod:`ingest.redact`, so the value is masked in logs and errors even when it
did not come through the config loader.

:class:`TokenAuth` owns the refresh: before a request when the token is
missing or about to expire, and once more when the API answers 401. With a
:class:`~ingest.credentials.CredentialStore` the refresh is single-flight
across processes (a PostgreSQL advisory lock per connector): the store is
re-read under the lock, the token is fetched only if it is still needed, and
the new token is committed before the request that uses it is sent.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import httpx
import structlog

from ingest.credentials._token import ConsentRequired, Grant, RefreshGrant, Token
from ingest.redact import register_secret

__all__ = ["BearerAuth", "ApiKeyAuth", "BasicAuth", "TokenAuth", "SigV4Auth", "sigv4_sign"]

log = structlog.get_logger("ingest.credentials")


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        register_secret(token)
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class BasicAuth(httpx.BasicAuth):
    """HTTP Basic (RFC 7617); registers the password and the encoded header as secrets."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        register_secret(password)
        register_secret(self._auth_header.partition(" ")[2])


class ApiKeyAuth(httpx.Auth):
    """An API key in any header, with an optional prefix, or in a query parameter; optionally a secret beside it.

    ``ApiKeyAuth(k, "X-API-Key")`` -> ``X-API-Key: k``;
    ``ApiKeyAuth(k, prefix="SSWS")`` -> ``Authorization: SSWS k``;
    ``ApiKeyAuth(k, prefix="Token token=")`` -> ``Authorization: Token token=k``;
    ``ApiKeyAuth(k, query_param="api_key")`` -> ``?api_key=k``;
    ``ApiKeyAuth(k, "X-API-Key", secret=s, secret_header="X-API-Secret")`` -> both headers.
    """

    def __init__(self, key: str, header: str = "Authorization", prefix: str = "",
                 query_param: str | None = None, *, secret: str | None = None,
                 secret_header: str = "X-API-Secret") -> None:
        register_secret(key)
        register_secret(secret)
        self._header = header
        if prefix.endswith("="):  # 'Token token=' -> 'Token token=<key>'
            self._value = f"{prefix.lstrip()}{key}"
        else:
            self._value = f"{prefix.strip()} {key}" if prefix.strip() else key
        self._key = key
        self._query_param = query_param
        self._secret, self._secret_header = secret, secret_header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._query_param:
            request.url = request.url.copy_merge_params({self._query_param: self._key})
        else:
            request.headers[self._header] = self._value
        if self._secret is not None:
            request.headers[self._secret_header] = self._secret
        yield request


def sigv4_sign(request: httpx.Request, credentials: Any, service: str, region: str) -> None:
    """Sign ``request`` in place with AWS Signature Version 4 (botocore's signer does the signing)."""
    from botocore.auth import SigV4Auth as _BotocoreSigV4
    from botocore.awsrequest import AWSRequest

    body = request.read()
    # Sign every header the request carries (botocore leaves out the ones proxies change, e.g. User-Agent).
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("authorization", "x-amz-date",
                                                                               "x-amz-security-token")}
    aws = AWSRequest(method=request.method, url=str(request.url), data=body, headers=headers)
    _BotocoreSigV4(credentials, service, region).add_auth(aws)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in aws.headers:
            request.headers[name] = aws.headers[name]


class SigV4Auth(httpx.Auth):
    """AWS Signature Version 4 with long-lived keys (and an optional session token)."""

    requires_request_body = True

    def __init__(self, access_key_id: str, secret_access_key: str, session_token: str | None,
                 service: str, region: str) -> None:
        from botocore.credentials import Credentials

        register_secret(secret_access_key)
        register_secret(session_token)
        self.credentials = Credentials(access_key_id, secret_access_key, session_token)
        self.service, self.region = service, region

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sigv4_sign(request, self.credentials, self.service, self.region)
        yield request


class TokenAuth(httpx.Auth):
    """A token from a :class:`~ingest.credentials._token.Grant`, fetched, cached, refreshed inside ``auth_flow``.

    Threads of one client share one token. ``bind(store, connector)`` makes the
    token persistent and its refresh single-flight across processes.
    """

    requires_request_body = True
    requires_response_body = True

    def __init__(self, grant: Grant, *, store: Any = None, connector: str | None = None) -> None:
        self.grant = grant
        self.token_url = grant.token_url  # the HTTP layer lets POSTs to it through its read-only guard
        self.store = store
        self.connector = connector
        self._token: Token | None = None
        self._lock = threading.RLock()

    def bind(self, store: Any, connector: str) -> TokenAuth:
        if self.store is None:
            self.store, self.connector = store, connector
            if getattr(self.grant, "connector", "") is None:
                self.grant.connector = connector  # named in "run `ingest auth NAME`"
        return self

    @property
    def token(self) -> Token | None:
        return self._token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token
        if token is None or not token.usable():
            token = yield from self._renew(request, stale=token, rejected=False)
        self.grant.apply(request, token)
        response = yield request
        if response.status_code == 401:
            log.info("token_rejected", connector=self.connector, kind=self.grant.kind)
            token = yield from self._renew(request, stale=token, rejected=True)
            self.grant.apply(request, token)
            yield request

    def _usable_store(self) -> Any:
        if self.store is None:
            if isinstance(self.grant, RefreshGrant):
                raise ConsentRequired(f"{self.connector or 'this connector'} keeps its consent in the credential "
                                      f"store, which this client has none of", connector=self.connector)
            return None
        problem = self.store.unavailable()
        if problem is None:
            return self.store
        if isinstance(self.grant, RefreshGrant):
            raise problem
        log.warning("token_cache_unavailable", connector=self.connector, reason=problem.message)
        return None

    def _renew(self, original: httpx.Request, *, stale: Token | None,
               rejected: bool) -> Generator[httpx.Request, httpx.Response, Token]:
        with self._lock:
            mine = self._token
            if mine is not None and mine is not stale and mine.usable():
                return mine  # another thread renewed it meanwhile
            store = self._usable_store()
            if store is None:
                token = yield from self._fetch(original, stale)
                self._token = token
                return token
            with store.locked(self.connector) as slot:
                held = slot.load(self.grant.kind, self.grant.binding)
                if held is not None and held.usable() and not (
                        rejected and stale is not None and held.access_token == stale.access_token):
                    self._token = held  # another process refreshed it (or an earlier run cached it)
                    return held
                token = yield from self._fetch(original, held)
                slot.save(self.grant.kind, self.grant.binding, token)  # committed before it is used
                log.info("token_refreshed", connector=self.connector, kind=self.grant.kind,
                         rotated=bool(held and held.refresh_token and token.refresh_token != held.refresh_token))
            self._token = token
            return token

    def _fetch(self, original: httpx.Request, current: Token | None) -> Generator[httpx.Request, httpx.Response, Token]:
        request = self.grant.request(current)
        # A request built here gets none of the client's defaults: carry the timeout over.
        timeout = original.extensions.get("timeout")
        if timeout is not None:
            request.extensions["timeout"] = timeout
        response = yield request
        return self.grant.parse(response, current)
