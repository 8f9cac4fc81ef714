"""The shared HTTP layer every connector fetches through.

    http = ctx.http_client(settings.base_url, auth=settings_auth.httpx_auth())
    for user in http.records("/users", paginator=LinkHeaderPaginator(), selector=None):
        yield map_user(user)

- ``HttpClient`` (``_client``): timeouts, User-Agent, TLS/CA bundle/proxy,
  request-rate and concurrency limits, retries with backoff and jitter that
  honour ``Retry-After`` and rate-limit headers, one classification of every
  response into the ``ingest.errors`` tree, the read-only guard, redaction;
  ``paginate`` fetches pages concurrently when the paginator can plan them.
- Paginators (``_paginators``): offset, page number, cursor, next URL, RFC 8288
  ``Link``, SCIM; loop detection in the base class; ``make_paginator`` by name.
- Auth (``_auth``): bearer, basic, API key (any header, prefix, or query
  parameter), OAuth 2.0 client credentials; config models with ``SecretStr``.
- ``CancelToken`` (``_cancel``): the run's cancellation (Ctrl-C, shutdown,
  timeout); every wait and request of a client built with it stops with it.
- ``Fetcher`` (``_fetcher``): the one concurrent-fetch primitive (bounded,
  ordered or interleaved, cancellable); paging ahead and the ``for_each``
  fan-out of :mod:`ingest.streams` use it.
- ``is_read_only`` (``_readonly``): GET/HEAD, or a request a connector class
  declares in ``read_only_requests``; the guard and the conformance kit read it.
- ``HttpSettings`` (``_settings``): what every HTTP connector's settings include.
- ``Transport`` (``_transport``): the wire under the client without a proxy, HTTP/1.1 over kept-alive
  ``http.client`` connections, failing with the httpx exceptions httpcore raises.
"""

from ingest.http._auth import (
    ApiKeyAuth,
    ApiKeyConfig,
    BasicAuthConfig,
    BearerAuth,
    BearerTokenConfig,
    OAuth2ClientCredentials,
    OAuth2ClientCredentialsConfig,
)
from ingest.http._cancel import CancelToken, current_token, using_token
from ingest.http._client import HttpClient, RateLimiter, retry_after_seconds
from ingest.http._fetcher import Fetcher
from ingest.http._paginators import (
    PAGINATORS,
    CursorPaginator,
    LinkHeaderPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    PageRequest,
    Paginator,
    ScimPaginator,
    SinglePage,
    json_path,
    make_paginator,
)
from ingest.http._readonly import READ_METHODS, compile_read_only, is_read_only
from ingest.http._settings import HttpSettings, HttpStats

__all__ = [
    "ApiKeyAuth",
    "ApiKeyConfig",
    "BasicAuthConfig",
    "BearerAuth",
    "BearerTokenConfig",
    "CancelToken",
    "CursorPaginator",
    "Fetcher",
    "HttpClient",
    "HttpSettings",
    "HttpStats",
    "LinkHeaderPaginator",
    "NextUrlPaginator",
    "OAuth2ClientCredentials",
    "OAuth2ClientCredentialsConfig",
    "OffsetPaginator",
    "PAGINATORS",
    "PageNumberPaginator",
    "PageRequest",
    "Paginator",
    "READ_METHODS",
    "RateLimiter",
    "ScimPaginator",
    "SinglePage",
    "compile_read_only",
    "current_token",
    "is_read_only",
    "json_path",
    "make_paginator",
    "retry_after_seconds",
    "using_token",
]
