"""Credential kinds: selection by fields or `kind:`, the schema, and each kind's wire form against real or faithful servers."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

import ingest.credentials
from ingest.credentials import (
    KINDS,
    OAuth2AuthorizationCode,
    TokenAuth,
    credentials,
)
from ingest.errors import AuthError
from ingest.http import HttpClient, HttpSettings
from tests.servers.fake_api import FakeApi, fake_api  # noqa: F401
from tests.servers.token_server import TokenServer, rsa_pem

ALL = credentials(*KINDS)


def http(base_url: str, auth: httpx.Auth) -> HttpClient:
    return HttpClient(base_url, settings=HttpSettings(backoff_initial=0.01, backoff_max=0.05, max_retries=1),
                      connector="acme", auth=auth)


def test_exported_members() -> None:
    """The public names of ingest.credentials (a change here is an API change)."""
    assert set(ingest.credentials.__all__) >= {"credentials", "CredentialStore", "TokenAuth", *(
        c.__name__ for c in KINDS.values())}
    for name in ingest.credentials.__all__:
        member = getattr(ingest.credentials, name)
        if hasattr(member, "__module__"):
            assert member.__module__.startswith("ingest.credentials"), name


class TestSelection:
    @pytest.mark.parametrize("fields, kind", [
        ({"username": "bob", "password": "pw-1234"}, "basic"),
        ({"api_key": "k-1234"}, "api_key"),
        ({"api_key": "k-1234", "api_secret": "s-1234"}, "api_key"),
        ({"bearer_token": "t-1234"}, "bearer"),
        ({"username": "bob@acme.test", "api_key": "k-1234"}, "username_api_key"),
        ({"client_id": "c", "client_secret": "s-1234", "token_url": "https://idp.test/token"},
         "oauth2_client_credentials"),
        ({"client_id": "c", "authorize_url": "https://idp.test/auth", "token_url": "https://idp.test/token"},
         "oauth2_authorization_code"),
        ({"access_key_id": "AKIA1", "secret_access_key": "s-1234"}, "aws"),
        ({"app_id": 1, "private_key": "pem-1234", "installation_id": 2}, "github_app"),
        ({"kind": "oauth2_authorization_code", "client_id": "c", "authorize_url": "https://idp.test/auth",
          "token_url": "https://idp.test/token"}, "oauth2_authorization_code"),
    ])
    def test_the_kind_follows_from_the_fields(self, fields: dict[str, Any], kind: str) -> None:
        assert ALL.model_validate(fields).kind == kind

    def test_service_account_from_its_key_file(self) -> None:
        private, _ = rsa_pem()
        key = json.dumps({"type": "service_account", "client_email": "sa@p.iam.test", "private_key": private,
                          "token_uri": "https://oauth2.test/token"})
        auth = ALL.model_validate({"service_account_json": key, "subject": "admin@acme.test", "scopes": "a b"})
        assert auth.kind == "service_account" and auth.scopes == ["a", "b"]

    def test_ambiguous_fields_ask_for_kind(self) -> None:
        only_oauth = credentials("oauth2_client_credentials", "oauth2_authorization_code")
        auth = only_oauth.model_validate({"client_id": "c", "client_secret": "s-1234",
                                          "token_url": "https://idp.test/token"})
        assert auth.kind == "oauth2_client_credentials"
        bearer_or_basic = credentials("bearer", "basic")
        with pytest.raises(ValidationError, match="cannot tell the credential kind.*bearer, basic"):
            bearer_or_basic.model_validate({"user": "x"})

    def test_a_kind_the_connector_does_not_accept_is_an_error(self) -> None:
        with pytest.raises(ValidationError, match="cannot tell the credential kind"):
            credentials("bearer").model_validate({"kind": "basic", "username": "a", "password": "b"})

    def test_unknown_keys_are_errors(self) -> None:
        with pytest.raises(ValidationError, match="Extra inputs|extra"):
            ALL.model_validate({"bearer_token": "t-1234", "bearer_tokn": "x"})

    def test_per_connector_defaults_by_subclassing(self) -> None:
        class JiraOAuth(OAuth2AuthorizationCode):
            authorize_url: str = "https://auth.atlassian.test/authorize"
            token_url: str = "https://auth.atlassian.test/oauth/token"

        auth = credentials("username_api_key", JiraOAuth).model_validate({"kind": "oauth2_authorization_code",
                                                                          "client_id": "c"})
        assert auth.token_url == "https://auth.atlassian.test/oauth/token"


class TestSchema:
    def test_every_secret_is_write_only_and_every_field_has_a_section(self) -> None:
        schema = ALL.model_json_schema()
        secrets = set()
        for name, model in schema["$defs"].items():
            for field, spec in model["properties"].items():
                if field == "kind":
                    continue
                assert spec.get("x-section") in {"general", "additional", "advanced", "relay"}, (name, field)
                if spec.get("writeOnly"):
                    secrets.add(field)
        assert secrets == {"password", "api_key", "api_secret", "bearer_token", "client_secret", "private_key",
                           "service_account_json", "secret_access_key", "session_token"}

    def test_secrets_are_secretstr_in_the_models(self) -> None:
        auth = ALL.model_validate({"username": "bob", "password": "pw-1234"})
        assert "pw-1234" not in repr(auth) and "pw-1234" not in str(auth.model_dump())


class TestStaticKinds:
    def test_api_key_and_secret_headers(self, fake_api: FakeApi) -> None:
        fake_api.require_header("X-API-Secret", "s-98765")
        fake_api.add_json("/me", {"id": 1})
        auth = ALL.model_validate({"api_key": "k-12345", "api_secret": "s-98765", "header": "X-API-Key"})
        with http(fake_api.base_url, auth.httpx_auth()) as c:
            assert c.get_json("/me") == {"id": 1}
        assert fake_api.requests[0].header("X-API-Key") == "k-12345"

    def test_api_key_token_prefix_without_space(self, fake_api: FakeApi) -> None:
        fake_api.require_header("Authorization", "Token token=k-12345")
        fake_api.add_json("/me", {"id": 1})
        auth = ALL.model_validate({"api_key": "k-12345", "prefix": "Token token="})
        with http(fake_api.base_url, auth.httpx_auth()) as c:
            assert c.get_json("/me") == {"id": 1}

    def test_username_api_key_is_http_basic(self, fake_api: FakeApi) -> None:
        fake_api.require_basic("bob@acme.test", "jira-token-1")
        fake_api.add_json("/myself", {"accountId": "1"})
        auth = ALL.model_validate({"username": "bob@acme.test", "api_key": "jira-token-1"})
        with http(fake_api.base_url, auth.httpx_auth()) as c:
            assert c.get_json("/myself") == {"accountId": "1"}


@pytest.fixture
def token_server():
    with TokenServer() as server:
        yield server


class TestRfc7523:
    """private_key_jwt and the JWT bearer grant against a server that verifies signature, iss, sub, aud, exp."""

    def test_private_key_jwt_client_credentials(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_client("svc-app", public, kid="k1")
        auth = ALL.model_validate({"client_id": "svc-app", "private_key": private, "key_id": "k1",
                                   "token_url": token_server.token_url, "scopes": ["users.read"]})
        with http(token_server.root_url, auth.httpx_auth()) as c:
            assert c.get_json("/api/me") == {"sub": "svc-app", "scope": "users.read"}
            c.get_json("/api/me")
        assert [r for r in token_server.requests if r[1] == "/token"] == [("POST", "/token")]
        assert token_server.refusals == []

    def test_an_assertion_signed_with_another_key_is_refused(self, token_server: TokenServer) -> None:
        _, public = rsa_pem()
        other_private, _ = rsa_pem()
        token_server.add_client("svc-app", public)
        auth = ALL.model_validate({"client_id": "svc-app", "private_key": other_private,
                                   "token_url": token_server.token_url})
        with http(token_server.root_url, auth.httpx_auth()) as c, pytest.raises(AuthError, match="invalid_client") as e:
            c.get_json("/api/me")
        assert "BEGIN PRIVATE KEY" not in str(e.value)
        assert "signature" in token_server.refusals[0].lower() or "BadSignature" in token_server.refusals[0]

    def test_an_assertion_for_another_audience_is_refused(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_client("svc-app", public)
        auth = ALL.model_validate({"client_id": "svc-app", "private_key": private,
                                   "token_url": token_server.token_url})
        grant = auth.httpx_auth().grant
        grant.client.token_url = "https://elsewhere.test/token"  # the aud the assertion names
        with http(token_server.root_url, TokenAuth(grant)) as c, pytest.raises(AuthError, match="invalid_client"):
            c.get_json("/api/me")
        assert "aud" in token_server.refusals[0]

    def test_service_account_jwt_bearer_with_subject(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_service_account("reader@proj.iam.test", public, subjects={"admin@acme.test"})
        key = json.dumps({"type": "service_account", "client_email": "reader@proj.iam.test", "private_key": private,
                          "private_key_id": "abc", "token_uri": token_server.token_url})
        auth = ALL.model_validate({"service_account_json": key, "subject": "admin@acme.test",
                                   "scopes": ["https://www.googleapis.test/auth/admin.directory.user.readonly"]})
        with http(token_server.root_url, auth.httpx_auth()) as c:
            me = c.get_json("/api/me")
        assert me["sub"] == "admin@acme.test"
        assert me["scope"] == "https://www.googleapis.test/auth/admin.directory.user.readonly"

    def test_service_account_without_delegation_for_that_subject_is_refused(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_service_account("reader@proj.iam.test", public, subjects={"admin@acme.test"})
        key = json.dumps({"client_email": "reader@proj.iam.test", "private_key": private,
                          "token_uri": token_server.token_url})
        auth = ALL.model_validate({"service_account_json": key, "subject": "intern@acme.test", "scopes": ["x"]})
        with http(token_server.root_url, auth.httpx_auth()) as c, \
                pytest.raises(AuthError, match="unauthorized_client") as e:
            c.get_json("/api/me")
        assert private.splitlines()[1] not in str(e.value)

    def test_a_service_account_key_that_is_not_json_is_a_clear_error(self) -> None:
        with pytest.raises(ValidationError, match=r"not JSON .*\$\{file:PATH\}"):
            ALL.model_validate({"service_account_json": "-----BEGIN PRIVATE KEY-----"})


class TestGitHubApp:
    def test_app_jwt_buys_an_installation_token_used_until_it_expires(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_app("4242", public, installations={"77"})
        auth = ALL.model_validate({"app_id": 4242, "private_key": private, "installation_id": 77,
                                   "api_url": token_server.root_url})
        with http(token_server.root_url, auth.httpx_auth()) as c:
            assert c.get_json("/api/me")["sub"] == "app:4242"
            c.get_json("/api/me")
        assert token_server.requests.count(("POST", "/app/installations/77/access_tokens")) == 1

    def test_a_wrong_key_is_an_auth_error(self, token_server: TokenServer) -> None:
        _, public = rsa_pem()
        wrong, _ = rsa_pem()
        token_server.add_app("4242", public, installations={"77"})
        auth = ALL.model_validate({"app_id": "4242", "private_key": wrong, "installation_id": "77",
                                   "api_url": token_server.root_url})
        with http(token_server.root_url, auth.httpx_auth()) as c, \
                pytest.raises(AuthError, match="JSON web token could not be decoded"):
            c.get_json("/api/me")


class TestTokenRefresh:
    def test_an_expired_token_is_replaced_before_the_request(self, token_server: TokenServer) -> None:
        private, public = rsa_pem()
        token_server.add_client("svc-app", public)
        token_server.token_ttl = 1
        auth = ALL.model_validate({"client_id": "svc-app", "private_key": private,
                                   "token_url": token_server.token_url}).httpx_auth()
        with http(token_server.root_url, auth) as c:
            c.get_json("/api/me")
            first = auth.token.access_token
            time.sleep(1.05)
            c.get_json("/api/me")
        assert auth.token.access_token != first
        assert token_server.requests.count(("POST", "/token")) == 2
        assert token_server.requests.count(("GET", "/api/me")) == 2  # no 401 round trip


