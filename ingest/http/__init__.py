"""The shared HTTP layer every connector fetches through."""

from ingest.http._auth import (
    ApiKeyAuth,
    ApiKeyConfig,
    BasicAuthConfig,
    BearerAuth,
    BearerTokenConfig,
    OAuth2ClientCredentials,
    OAuth2ClientCredentialsConfig,
)
from ingest.http._client import HttpClient, RateLimiter, retry_after_seconds
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
from ingest.http._settings import HttpSettings, HttpStats

__all__ = [
    "ApiKeyAuth",
    "ApiKeyConfig",
    "BasicAuthConfig",
    "BearerAuth",
    "BearerTokenConfig",
    "CursorPaginator",
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
    "RateLimiter",
    "ScimPaginator",
    "SinglePage",
    "json_path",
    "make_paginator",
    "retry_after_seconds",
]
