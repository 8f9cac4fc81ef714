"""The HTTP client: public surface, read-only guard, auth kinds, limits, TLS and proxy."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

import ingest.http
from ingest.connector import ConnectorContext
from ingest.errors import AuthError, ConfigError, FatalError, ReadOnlyViolation, RetryableError
from ingest.http import (
    ApiKeyConfig,
    BasicAuthConfig,
    BearerAuth,
    BearerTokenConfig,
    CursorPaginator,
    HttpClient,
    HttpSettings,
    HttpStats,
    OAuth2ClientCredentialsConfig,
    RateLimiter,
)
from tests.servers.fake_api import FakeApi, Fault, ForwardProxy, Reply, fake_api, self_signed_cert  # noqa: F401


@pytest.fixture
def other_api() -> Iterator[FakeApi]:
    """A second server on another port: another origin."""
    with FakeApi() as api:
        yield api


def client(api: FakeApi, *, auth: httpx.Auth | None = None, **kw: Any) -> HttpClient:
    settings = {k: kw.pop(k) for k in list(kw) if k in HttpSettings.model_fields}
    return HttpClient(api.base_url, settings=HttpSettings(backoff_initial=0.01, backoff_max=0.05, **settings),
                      connector="acme", auth=auth, **kw)


def test_exported_members() -> None:
    """The public names of ingest.http are exactly these (a change here is an API change)."""
    assert ingest.http.__all__ == [
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
    for name in ingest.http.__all__:
        member = getattr(ingest.http, name)
        if hasattr(member, "__module__"):
            # the auth names are the credential layer's, re-exported for connectors written against ingest.http;
            # json_path lives with the page decoding a staging worker imports without the HTTP layer
            assert member.__module__.startswith(("ingest.http", "ingest.credentials", "ingest.pages")), name


class TestRequests:
    def test_user_agent_accept_and_extra_headers_are_sent(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/me", {"id": 1})
        with client(fake_api, headers={"X-Tenant": "t1"}) as http:
            assert http.get_json("/me") == {"id": 1}
        seen = fake_api.requests[0]
        assert seen.header("User-Agent").startswith("ingest/")
        assert seen.header("Accept") == "application/json"
        assert seen.header("X-Tenant") == "t1"

    def test_params_merge_with_a_query_already_in_the_path(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/users", [])
        with client(fake_api) as http:
            http.get_json("/users?filter=active", params={"page": 2})
        assert fake_api.requests[0].query == {"filter": "active", "page": "2"}

    def test_paths_stay_under_the_base_url(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/scim/v2/Users", [])
        http = HttpClient(fake_api.url("/scim/v2"))
        with http:
            http.get_json("/Users")
            assert http.url("/Users") == fake_api.url("/scim/v2/Users")
        assert fake_api.requests[0].path == "/scim/v2/Users"

    def test_cookies_a_source_sets_are_sent_back(self, fake_api: FakeApi) -> None:
        """A load balancer's affinity cookie, say: kept from the answer that sets it, sent with every later
        request, including after answers that set none (those are not run through the cookie jar)."""
        fake_api.add_json("/login", {}, headers={"Set-Cookie": "affinity=node-7; Path=/"})
        fake_api.add_json("/users", [])
        with client(fake_api) as http:
            http.get_json("/users")
            http.get_json("/login")
            http.get_json("/users")
            http.get_json("/users")
        assert [r.header("Cookie") for r in fake_api.requests] == [None, None, "affinity=node-7", "affinity=node-7"]

    def test_a_204_has_no_body(self, fake_api: FakeApi) -> None:
        fake_api.route("/ping", lambda _r: Reply(204))
        with client(fake_api) as http:
            assert http.get_json("/ping") is None

    def test_same_host_redirects_are_followed(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/old", None, status=301, headers={"Location": "/new"})
        fake_api.add_json("/new", {"ok": True})
        with client(fake_api) as http:
            assert http.get_json("/old") == {"ok": True}

    def test_a_redirect_to_another_host_is_refused(self, fake_api: FakeApi) -> None:
        """An API key header would follow a cross-host redirect, so the client does not follow it."""
        fake_api.add_json("/old", None, status=302, headers={"Location": f"http://localhost:{fake_api.port}/new"})
        fake_api.add_json("/new", {"ok": True})
        with client(fake_api) as http, pytest.raises(FatalError, match="redirect to another origin"):
            http.get_json("/old")
        assert [r.path for r in fake_api.requests] == ["/old"]

    def test_the_connector_context_builds_a_client_with_its_settings_and_stats(self, fake_api: FakeApi) -> None:
        class Settings(HttpSettings):
            base_url: str

        fake_api.add_json("/me", {})
        ctx = ConnectorContext("acme", settings=Settings(base_url=fake_api.base_url, max_retries=0),
                               auth=BearerTokenConfig(bearer_token="tok-12345"))
        with ctx.http_client(ctx.settings.base_url, auth=ctx.auth.httpx_auth()) as http:
            http.get_json("/me")
            assert http.settings.max_retries == 0 and http.connector == "acme"
        assert ctx.stats.requests == 1
        assert fake_api.requests[0].header("Authorization") == "Bearer tok-12345"


class TestReadOnlyGuard:
    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def test_writes_are_refused_before_they_reach_the_server(self, fake_api: FakeApi, method: str) -> None:
        fake_api.add_json("/users", {}, method=method)
        with client(fake_api) as http:
            with pytest.raises(ReadOnlyViolation, match=f"refused {method} .*/users: ingest never writes"):
                http.request(method, "/users", json={"userName": "x"})
            assert http.stats.requests == 0
        assert fake_api.requests == []

    def test_post_json_to_an_undeclared_path_is_refused(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/search", {"hits": []}, method="POST")
        with client(fake_api) as http, pytest.raises(ReadOnlyViolation):
            http.post_json("/search", {"q": "x"})
        assert fake_api.requests == []

    def test_post_to_a_declared_read_only_request_is_allowed(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/api/search", {"hits": [1]}, method="POST")
        fake_api.add_json("/api/users", {}, method="POST")
        http = HttpClient(fake_api.url("/api"), read_only_requests=(("POST", r"/api/search$"),))
        with http:
            assert http.post_json("/search", {"q": "x"}, params={"limit": 5}) == {"hits": [1]}
            with pytest.raises(ReadOnlyViolation):
                http.post_json("/users", {"userName": "x"})
        assert [(r.method, r.path, r.json()) for r in fake_api.requests] == [("POST", "/api/search", {"q": "x"})]

    def test_the_guard_honours_the_connector_class_declaration(self, fake_api: FakeApi, other_api: FakeApi) -> None:
        """One declaration: ``Connector.read_only_requests`` reaches ``ctx.http_client``'s guard (method, path and
        body), the kit's check reads the same one; anything else, or the same request on another origin, is
        refused before it is sent."""
        from ingest.connector import Connector
        from ingest.testing import is_declared_read_only

        class Searching(Connector):
            type = name = "searching"
            read_only_requests = (("POST", r"/api/search$", r'"q":'),)

        for api in (fake_api, other_api):
            api.add_json("/api/search", {"hits": [1]}, method="POST")
        ctx = ConnectorContext("acme", settings=HttpSettings(max_retries=0), auth=BearerTokenConfig(bearer_token="t"))
        Searching(ctx)
        with ctx.http_client(fake_api.url("/api")) as http:
            assert http.post_json("/search", {"q": "x"}) == {"hits": [1]}
            for method, body in (("POST", {"delete": "x"}), ("PUT", {"q": "x"})):
                with pytest.raises(ReadOnlyViolation, match=f"refused {method} .*read_only_requests"):
                    http.request(method, "/search", json=body)
            with pytest.raises(FatalError, match="not on the origin of base_url"):
                http.post_json(other_api.url("/api/search"), {"q": "x"})
        assert [(r.method, r.path) for r in fake_api.requests] == [("POST", "/api/search")]
        assert other_api.requests == []
        assert is_declared_read_only(Searching, "POST", "/api/search", b'{"q": "x"}')
        assert not is_declared_read_only(Searching, "POST", "/api/search", b'{"delete": "x"}')

    def test_a_malformed_declaration_fails_when_the_class_is_defined(self) -> None:
        from ingest.connector import Connector

        with pytest.raises(ValueError, match=r"read_only_requests entry \('POST',\): expected \(method, path"):
            type("Bad", (Connector,), {"read_only_requests": (("POST",),)})
        with pytest.raises(ValueError, match=r"read_only_requests entry \('POST', '\('\)"):
            type("Bad", (Connector,), {"read_only_requests": (("POST", "("),)})

    def test_get_and_head_are_allowed(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/users", [])
        fake_api.add_json("/users", [], method="HEAD")
        with client(fake_api) as http:
            assert http.request("HEAD", "/users").status_code == 200
            assert http.request("get", "/users").status_code == 200

    def test_the_oauth_token_url_is_allowed(self, fake_api: FakeApi) -> None:
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.add_json("/users", [])
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        with client(fake_api, auth=auth) as http:
            assert http.get_json("/users") == []
        assert [r.method for r in fake_api.requests] == ["POST", "GET"]


class TestAuth:
    def test_bearer(self, fake_api: FakeApi) -> None:
        fake_api.require_bearer("tok-abcdef")
        fake_api.add_json("/me", {"id": 1})
        with client(fake_api, auth=BearerTokenConfig(bearer_token="tok-abcdef").httpx_auth()) as http:
            assert http.get_json("/me") == {"id": 1}
        assert fake_api.requests[0].header("Authorization") == "Bearer tok-abcdef"

    def test_wrong_bearer_is_an_auth_error(self, fake_api: FakeApi) -> None:
        fake_api.require_bearer("right-token")
        fake_api.add_json("/me", {})
        with client(fake_api, auth=BearerAuth("wrong-token")) as http, pytest.raises(AuthError):
            http.get_json("/me")
        assert len(fake_api.requests) == 1

    def test_basic(self, fake_api: FakeApi) -> None:
        fake_api.require_basic("bob@example.com", "api-token-1")
        fake_api.add_json("/me", {"id": 1})
        auth = BasicAuthConfig(username="bob@example.com", password="api-token-1").httpx_auth()
        with client(fake_api, auth=auth) as http:
            assert http.get_json("/me") == {"id": 1}

    @pytest.mark.parametrize("config, header, value", [
        ({"api_key": "k-123456"}, "Authorization", "k-123456"),
        ({"api_key": "k-123456", "prefix": "SSWS"}, "Authorization", "SSWS k-123456"),
        ({"api_key": "k-123456", "header": "X-API-Key"}, "X-API-Key", "k-123456"),
        ({"api_key": "k-123456", "header": "Authorization", "prefix": "Token"}, "Authorization", "Token k-123456"),
    ])
    def test_api_key_in_any_header_with_any_prefix(self, fake_api: FakeApi, config: dict, header: str,
                                                   value: str) -> None:
        fake_api.require_header(header, value)
        fake_api.add_json("/me", {"id": 1})
        with client(fake_api, auth=ApiKeyConfig(**config).httpx_auth()) as http:
            assert http.get_json("/me") == {"id": 1}

    def test_api_key_in_the_query_string(self, fake_api: FakeApi) -> None:
        fake_api.serve_records("/users", [{"id": i} for i in range(5)], style="cursor")
        auth = ApiKeyConfig(api_key="k-123456", query_param="api_key").httpx_auth()
        with client(fake_api, auth=auth) as http:
            got = list(http.records("/users", paginator=CursorPaginator(), selector="data", params={"limit": 2}))
        assert len(got) == 5
        assert all(r.query["api_key"] == "k-123456" for r in fake_api.requests)
        assert all(r.header("Authorization") is None for r in fake_api.requests)

    @pytest.mark.parametrize("method", ["post", "basic"])
    def test_oauth2_client_credentials_fetches_one_token_for_many_requests(self, fake_api: FakeApi,
                                                                          method: str) -> None:
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.serve_records("/users", [{"id": i} for i in range(10)], style="offset")
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1", scope="users.read",
                                             auth_method=method).httpx_auth()
        from ingest.http import OffsetPaginator

        with client(fake_api, auth=auth) as http:
            assert len(list(http.records("/users", paginator=OffsetPaginator(limit=3), selector="items"))) == 10
        assert len(fake_api.tokens_issued) == 1
        token_request = fake_api.requests_to("/oauth2/token")[0]
        assert token_request.form()["grant_type"] == "client_credentials"
        assert token_request.form()["scope"] == "users.read"
        assert ("client_secret" in token_request.form()) == (method == "post")
        api_calls = fake_api.requests_to("/users")
        assert {r.header("Authorization") for r in api_calls} == {f"Bearer {fake_api.tokens_issued[0]}"}

    def test_oauth2_refreshes_once_on_401(self, fake_api: FakeApi) -> None:
        """A token revoked early: the API's 401 triggers one new token and one resend."""
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.add_json("/me", {"id": 1})
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        with client(fake_api, auth=auth) as http:
            http.get_json("/me")
            fake_api.script([Fault.unauthorized()], path="/me")
            assert http.get_json("/me") == {"id": 1}
        assert len(fake_api.tokens_issued) == 2
        assert [r.path for r in fake_api.requests] == ["/oauth2/token", "/me", "/me", "/oauth2/token", "/me"]

    def test_oauth2_refreshes_an_expired_token(self, fake_api: FakeApi, monkeypatch) -> None:
        """A token is reused while it is valid and replaced once its lifetime has passed
        (the clock is the test's, so a loaded machine cannot expire it early)."""
        import ingest.credentials._token as token_module

        clock = [time.time()]
        monkeypatch.setattr(token_module, "time", SimpleNamespace(time=lambda: clock[0]))
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1", expires_in=60)
        fake_api.add_json("/me", {"id": 1})
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        with client(fake_api, auth=auth) as http:
            http.get_json("/me")
            clock[0] += 50  # within the lifetime (less its 6 s safety margin)
            http.get_json("/me")
            assert len(fake_api.tokens_issued) == 1
            clock[0] += 11  # past expires_in
            http.get_json("/me")
        assert len(fake_api.tokens_issued) == 2

    def test_oauth2_bad_client_secret_is_an_auth_error_without_retries(self, fake_api: FakeApi) -> None:
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.add_json("/me", {"id": 1})
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="wrong-secret").httpx_auth()
        with client(fake_api, auth=auth) as http, pytest.raises(AuthError, match="invalid_client") as e:
            http.get_json("/me")
        assert "wrong-secret" not in str(e.value)
        assert [r.path for r in fake_api.requests] == ["/oauth2/token"]

    def test_oauth2_token_endpoint_outage_is_retried(self, fake_api: FakeApi) -> None:
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.add_json("/me", {"id": 1})
        fake_api.script([Fault.error(503)], path="/oauth2/token")
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        with client(fake_api, auth=auth) as http:
            assert http.get_json("/me") == {"id": 1}
            assert http.stats.retries == 1

    def test_oauth2_threads_share_one_token(self, fake_api: FakeApi) -> None:
        fake_api.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        fake_api.add_json("/me", {"id": 1})
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        with client(fake_api, auth=auth, max_concurrency=4) as http:
            threads = [threading.Thread(target=http.get_json, args=("/me",)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        assert len(fake_api.tokens_issued) == 1
        assert len(fake_api.requests_to("/me")) == 8


class TestLimits:
    def test_requests_per_second_is_honoured(self, fake_api: FakeApi) -> None:
        """N requests at R per second take at least (N - 1) / R seconds."""
        fake_api.add_json("/me", {})
        n, rate = 11, 20.0
        with client(fake_api, requests_per_second=rate) as http:
            for _ in range(n):
                http.get_json("/me")
        span = fake_api.requests[-1].at - fake_api.requests[0].at
        assert span >= (n - 1) / rate * 0.9

    def test_requests_per_second_holds_across_threads(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/me", {})
        with client(fake_api, requests_per_second=25.0, max_concurrency=4) as http:
            threads = [threading.Thread(target=http.get_json, args=("/me",)) for _ in range(11)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        at = sorted(r.at for r in fake_api.requests)
        assert at[-1] - at[0] >= 10 / 25.0 * 0.9

    def test_max_concurrency_bounds_requests_in_flight(self) -> None:
        """Ten threads on one client: the server never sees more than max_concurrency at once."""
        with FakeApi(latency=0.15) as api:
            api.add_json("/me", {})
            with client(api, max_concurrency=2) as http:
                threads = [threading.Thread(target=http.get_json, args=("/me",)) for _ in range(10)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(10)
            assert len(api.requests) == 10
            assert api.max_in_flight == 2

    def test_without_a_rate_limit_the_limiter_does_not_wait(self) -> None:
        limiter = RateLimiter(None)
        assert sum(limiter.acquire() for _ in range(100)) == 0  # acquire returns the seconds it waited

    def test_stats_are_thread_safe(self) -> None:
        stats = HttpStats()

        def bump() -> None:
            for _ in range(1000):
                stats.add("requests")

        threads = [threading.Thread(target=bump) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stats.as_dict() == {"requests": 8000, "retries": 0, "throttled": 0}


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


class TestTls:
    def test_verification_is_on_by_default_and_fails_clearly(self, cert: tuple[Path, Path]) -> None:
        with FakeApi(tls=cert) as api:
            api.add_json("/me", {"id": 1})
            with client(api) as http, pytest.raises(FatalError, match="TLS certificate verification failed") as e:
                http.get_json("/me")
            assert "ca_bundle" in str(e.value)
            assert not isinstance(e.value, RetryableError)
            assert http.stats.requests == 1 and http.stats.retries == 0
            assert api.requests == []

    def test_a_ca_bundle_makes_the_certificate_trusted(self, cert: tuple[Path, Path]) -> None:
        with FakeApi(tls=cert) as api:
            api.add_json("/me", {"id": 1})
            with client(api, ca_bundle=str(cert[0])) as http:
                assert http.get_json("/me") == {"id": 1}
            assert api.base_url.startswith("https://127.0.0.1:")

    def test_verification_can_be_turned_off(self, cert: tuple[Path, Path]) -> None:
        with FakeApi(tls=cert) as api:
            api.add_json("/me", {"id": 1})
            with client(api, verify_ssl=False) as http:
                assert http.get_json("/me") == {"id": 1}

    def test_a_missing_ca_bundle_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="ca_bundle .* cannot be loaded"):
            HttpClient("https://127.0.0.1:1", settings=HttpSettings(ca_bundle=str(tmp_path / "nope.pem")))


class TestProxy:
    def test_requests_go_through_the_proxy(self, fake_api: FakeApi) -> None:
        fake_api.serve_records("/users", [{"id": i} for i in range(6)], style="link", page_size=4)
        from ingest.http import LinkHeaderPaginator

        with ForwardProxy() as proxy:
            with client(fake_api, proxy=proxy.url) as http:
                got = list(http.records("/users", paginator=LinkHeaderPaginator()))
            assert got == [{"id": i} for i in range(6)]
            assert proxy.seen == [fake_api.url("/users"), fake_api.url("/users?page=2&per_page=4")]
        assert len(fake_api.requests) == 2

    def test_without_a_proxy_setting_the_proxy_is_not_used(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/me", {})
        with ForwardProxy() as proxy:
            with client(fake_api) as http:
                http.get_json("/me")
            assert proxy.seen == []

    def test_a_malformed_proxy_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match="proxy"):
            HttpClient("http://127.0.0.1:1", settings=HttpSettings(proxy="ftp://nowhere"))
