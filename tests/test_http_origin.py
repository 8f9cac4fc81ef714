"""Credentials stay on their origin (scheme, host, port), and declared endpoints take only POST."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.errors import FatalError, ProtocolError, ReadOnlyViolation
from ingest.http import (
    BearerAuth,
    HttpClient,
    HttpSettings,
    NextUrlPaginator,
    OAuth2ClientCredentialsConfig,
)
from tests.servers.fake_api import FakeApi, Reply, fake_api, self_signed_cert  # noqa: F401

TOKEN = "tok-origin-5b7c1e"


@pytest.fixture
def other() -> Iterator[FakeApi]:
    """A second server on another port of the same host: another origin."""
    with FakeApi() as api:
        yield api


def client(api: FakeApi, **kw) -> HttpClient:
    return HttpClient(api.base_url, settings=HttpSettings(max_retries=0), connector="acme",
                      auth=BearerAuth(TOKEN), **kw)


class TestDeclaredEndpointsTakeOnlyPost:
    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
    def test_a_declared_read_only_query_refuses_other_write_methods(self, fake_api: FakeApi, method: str) -> None:
        fake_api.add_json("/search", {}, method=method)
        with client(fake_api, read_only_requests=(("POST", r"^/search$"),)) as http, pytest.raises(ReadOnlyViolation):
            http.request(method, "/search")
        assert fake_api.requests == []

    @pytest.mark.parametrize("method", ["PUT", "DELETE"])
    def test_the_token_url_refuses_other_write_methods(self, fake_api: FakeApi, method: str) -> None:
        fake_api.add_json("/oauth2/token", {}, method=method)
        auth = OAuth2ClientCredentialsConfig(token_url=fake_api.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        http = HttpClient(fake_api.base_url, settings=HttpSettings(max_retries=0), auth=auth)
        with http, pytest.raises(ReadOnlyViolation, match=f"refused {method}"):
            http.request(method, fake_api.url("/oauth2/token"))
        assert [r.method for r in fake_api.requests if r.method == method] == []


class TestOrigin:
    def test_a_redirect_to_another_port_is_refused_and_the_token_never_leaves(
            self, fake_api: FakeApi, other: FakeApi) -> None:
        other.add_json("/users", [{"id": 1}])
        fake_api.add_json("/users", None, status=302, headers={"Location": other.url("/users")})
        with client(fake_api) as http, pytest.raises(FatalError, match="redirect to another origin"):
            http.get_json("/users")
        assert other.requests == []
        assert [r.header("Authorization") for r in fake_api.requests] == [f"Bearer {TOKEN}"]

    def test_a_redirect_to_another_scheme_is_refused(self, fake_api: FakeApi) -> None:
        fake_api.add_json("/users", None, status=301,
                          headers={"Location": f"https://127.0.0.1:{fake_api.port}/users"})
        with client(fake_api) as http, pytest.raises(FatalError, match="redirect to another origin"):
            http.get_json("/users")
        assert len(fake_api.requests) == 1

    def test_https_to_http_is_refused(self, tmp_path: Path, other: FakeApi) -> None:
        cert = self_signed_cert(tmp_path)
        other.add_json("/users", [])
        with FakeApi(tls=cert) as secure:
            secure.add_json("/users", None, status=302, headers={"Location": other.url("/users")})
            http = HttpClient(secure.base_url, settings=HttpSettings(max_retries=0, ca_bundle=str(cert[0])),
                              auth=BearerAuth(TOKEN))
            with http:
                with pytest.raises(FatalError, match="https -> http downgrade"):
                    http.get_json("/users")
                with pytest.raises(FatalError, match="https -> http downgrade"):  # an absolute URL, too
                    http.get_json(f"http://127.0.0.1:{secure.port}/users")
            assert len(secure.requests) == 1
        assert other.requests == []

    def test_an_absolute_url_on_another_origin_is_refused(self, fake_api: FakeApi, other: FakeApi) -> None:
        other.add_json("/users", [])
        with client(fake_api) as http, pytest.raises(FatalError, match="not on the origin of base_url"):
            http.get_json(other.url("/users"))
        assert other.requests == []

    def test_a_next_page_link_to_another_port_is_not_followed(self, fake_api: FakeApi, other: FakeApi) -> None:
        other.add_json("/users", {"results": [{"id": 2}], "next": None})
        fake_api.route("/users", lambda _r: Reply(200, {"results": [{"id": 1}], "next": other.url("/users")}))
        with client(fake_api) as http, pytest.raises(ProtocolError, match="another origin"):
            list(http.records("/users", paginator=NextUrlPaginator(), selector="results"))
        assert other.requests == []

    def test_the_same_origin_still_works_with_absolute_urls_and_links(self, fake_api: FakeApi) -> None:
        fake_api.serve_records("/users", [{"id": i} for i in range(5)], style="next_url", page_size=2)
        fake_api.add_json("/old", None, status=301, headers={"Location": "/new"})
        fake_api.add_json("/new", {"ok": True})
        with client(fake_api) as http:
            assert [r["id"] for r in http.records("/users", paginator=NextUrlPaginator(),
                                                  selector="results")] == [0, 1, 2, 3, 4]
            assert http.get_json(fake_api.url("/old")) == {"ok": True}
        assert all(r.header("Authorization") == f"Bearer {TOKEN}" for r in fake_api.requests)

    def test_a_token_url_on_another_origin_is_allowed_for_its_post_only(
            self, fake_api: FakeApi, other: FakeApi) -> None:
        other.token_endpoint("/oauth2/token", client_id="cid", client_secret="csecret-1")
        other.add_json("/users", [{"id": 9}])
        fake_api.add_json("/users", [])
        auth = OAuth2ClientCredentialsConfig(token_url=other.url("/oauth2/token"), client_id="cid",
                                             client_secret="csecret-1").httpx_auth()
        http = HttpClient(fake_api.base_url, settings=HttpSettings(max_retries=0), auth=auth)
        with http:
            assert http.get_json("/users") == []
            with pytest.raises(FatalError, match="not on the origin"):
                http.get_json(other.url("/users"))  # the bearer token must not go to the token host
        assert [(r.method, r.path) for r in other.requests] == [("POST", "/oauth2/token")]
