"""The jira connector against the loopback Jira Cloud fake: a site read exactly (a bare-array listing
whose maxResults the server caps, page beans whose maxResults is read back), two days of exact
changes, 429 with Retry-After, refused credentials, and OAuth 2.0 (3LO) with Atlassian's rotating
refresh tokens end to end on the real PostgreSQL fixture."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import structlog

from connectors.jira import JiraAuth, JiraConnector, JiraSettings
from ingest.connector import ConnectorContext
from tests import engine
from tests.engine import cli, output, query
from tests.servers.jira_server import AtlassianAuth, JiraServer, JiraSite, make_site

NAME = "jira"
EMAIL = "auditor@example.com"


@pytest.fixture
def token(monkeypatch) -> str:
    value = "ATATT" + uuid.uuid4().hex
    monkeypatch.setenv("JIRA_TEST_TOKEN", value)
    return value


def connector(server: JiraServer, token: str, **kw: Any) -> JiraConnector:
    s = JiraSettings(base_url=server.root_url, max_retries=3, backoff_initial=0.01, backoff_max=0.05, **kw)
    return JiraConnector(ConnectorContext(name=NAME, settings=s, auth=JiraAuth.model_validate(
        {"username": EMAIL, "api_key": token})))


def expected(site: JiraSite) -> dict[str, set]:
    grants = {(u, g) for g, v in site.groups.items() for u in v["members"]}
    nested = set()
    for pid, p in site.projects.items():
        for rid, actors in p["roles"].items():
            for kind, ident in actors:
                (grants if kind == "user" else nested).add((ident, f"{pid}:{rid}") if kind == "user"
                                                           else (f"{pid}:{rid}", ident))
    return {"accounts": {(u, v["active"]) for u, v in site.users.items()},
            "projects": {(p, v["name"]) for p, v in site.projects.items()},
            "groups": {(g, v["name"]) for g, v in site.groups.items()},
            "grants": grants, "nested": nested}


def read(conn: JiraConnector) -> dict[str, set]:
    with conn:
        accounts, resources = list(conn.list_accounts()), list(conn.list_resources())
        ents = list(conn.list_entitlements())
        assoc = list(conn.find_entitlement_associations())
    return {"accounts": {(a["account_id"], a["status"] == "ACTIVE") for a in accounts},
            "projects": {(r["resource_id"], r["label"]) for r in resources},
            "groups": {(e["entitlement_id"], e["label"]) for e in ents if e["entitlement_type"] == "group"},
            "grants": {(a["account_id"], a["entitlement_id"]) for a in assoc if "account_id" in a},
            "nested": {(a["entitlement_id"], a["member_entitlement_id"]) for a in assoc if "account_id" not in a}}


class TestReading:
    def test_the_site_is_read_exactly_though_the_server_caps_every_page(self, token):
        site = make_site()
        with JiraServer(site, EMAIL, token) as server:
            assert read(connector(server, token, page_size=1000)) == expected(site)
            users = [r for r in server.requests if r.path.endswith("/users/search")]
            # asked for 1,000, got 100: paged on by what arrived, ended by the short page (260 users)
            assert [r.query["startAt"] for r in users] == ["0", "100", "200"]
            members = [r for r in server.requests if r.path.endswith("/group/member")]
            assert members and all(r.query["maxResults"] == "50" for r in members)
            assert all(r.query["includeInactiveUsers"] == "true" for r in members)

    def test_a_bare_array_ending_on_a_full_page_stops_at_the_empty_one(self, token):
        site = make_site(n_users=200, n_groups=1, n_projects=1)
        with JiraServer(site, EMAIL, token) as server:
            assert read(connector(server, token))["accounts"] == expected(site)["accounts"]
            assert [r.query["startAt"] for r in server.requests if r.path.endswith("/users/search")] == [
                "0", "100", "200"]


class TestTwoDays:
    def test_day_two_gives_exact_changes(self, tmp_path, database_url, token):
        site = make_site(n_users=120, n_groups=3, n_projects=3)
        with JiraServer(site, EMAIL, token) as server:
            cfg = {"connectors": {NAME: {"type": "jira", "settings": {"base_url": server.root_url},
                                         "auth": {"username": EMAIL, "api_key": "${JIRA_TEST_TOKEN}"}}}}
            path = tmp_path / "schedules.yaml"
            path.write_text(json.dumps(cfg))
            assert cli(path, database_url, "run", NAME).exit_code == 0
            ids, gids = sorted(site.users), sorted(site.groups)
            with site.lock:
                site.users[ids[5]]["active"] = False                      # deactivated
                site.groups[gids[0]]["members"].add(ids[100])             # joins a group
                site.projects["10001"]["name"] = "Renamed Project"        # renamed (id stays)
                site.projects["10002"]["roles"]["10002"] = []             # admin removed from the role
            day2 = cli(path, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap = engine.last_snapshot(database_url, NAME)
            got = {(r["entity"], r["change"], r["key"]) for r in query(
                database_url, "SELECT * FROM ingest.changes WHERE connector = %s AND snapshot_id = %s", NAME,
                snap["snapshot_id"])}
            assert got == {
                ("account", "modified", ids[5]),
                ("assignment", "added", f"{ids[100]} -> {gids[0]}"),
                ("resource", "modified", "project:10001"),
                ("entitlement", "modified", "project:10001:10001:10002"),  # role labels name the project
                ("entitlement", "modified", "project:10001:10001:10003"),
                ("entitlement", "modified", "project:10001:10001:10004"),
                ("assignment", "removed", f"{ids[2]} -> project:10002:10002:10002"),
            }
            assert token not in output(day2)


class TestFaults:
    def test_a_429_waits_the_retry_after_jira_names(self, token):
        site = make_site(n_users=30, n_groups=2, n_projects=2)
        with JiraServer(site, EMAIL, token) as server:
            server.throttle(r"/rest/api/3/group/bulk", retry_after=1)
            with structlog.testing.capture_logs() as logs:
                assert read(connector(server, token)) == expected(site)
            assert [e["sleep"] for e in logs if e["event"] == "request_retry"] == [1.0]

    def test_refused_credentials_fail_check_naming_the_fields(self, tmp_path, database_url, token):
        site = make_site(n_users=12, n_groups=1, n_projects=1)
        with JiraServer(site, EMAIL, "another-token") as server:
            cfg = {"connectors": {NAME: {"type": "jira", "settings": {"base_url": server.root_url},
                                         "auth": {"username": EMAIL, "api_key": "${JIRA_TEST_TOKEN}"}}}}
            (tmp_path / "s.yaml").write_text(json.dumps(cfg))
            result = cli(tmp_path / "s.yaml", database_url, "check", NAME)
            assert result.exit_code == 1
            assert "auth.username / auth.api_key" in output(result) and token not in output(result)


class TestOAuth:
    def test_an_oauth_client_gets_atlassians_endpoints_audience_and_read_scopes(self):
        auth = JiraAuth.model_validate({"client_id": "jira-client", "client_secret": "s3cr3t-value"})
        assert auth.kind == "oauth2_authorization_code" and auth.needs_consent
        assert (auth.authorize_url, auth.token_url) == ("https://auth.atlassian.com/authorize",
                                                        "https://auth.atlassian.com/oauth/token")
        assert "offline_access" in auth.scopes and auth.authorize_params["audience"] == "api.atlassian.com"
        assert JiraAuth.model_validate({"username": EMAIL, "api_key": "t0ken-value"}).kind == "username_api_key"


class TestRotatingRefreshTokens:
    CLIENT, CLOUD = "jira-oauth-client", "11223344-a1b2-c3d4-e5f6-a1b2c3d4e5f6"

    def test_a_mid_run_expiry_refreshes_once_the_rotated_token_is_stored_and_serves_the_next_run(
            self, tmp_path, database_url, monkeypatch):
        import base64
        import secrets

        import sqlalchemy as sa
        import yaml

        from ingest.config import load_config
        from ingest.credentials import CredentialStore
        from ingest.credentials._consent import authorization_request, code_from_redirect, exchange
        from ingest.credentials._token import Token
        from ingest.db import get_engine, migrate
        from ingest.runner import run

        client_secret = "jira-secret-" + secrets.token_hex(8)
        monkeypatch.setenv("INGEST_SECRET_KEY", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        monkeypatch.setenv("JIRA_OAUTH_SECRET", client_secret)
        site = make_site(n_users=120, n_groups=4, n_projects=4)
        with AtlassianAuth(self.CLIENT, client_secret) as auth, \
                JiraServer(site, EMAIL, "no-api-token-here", oauth=auth, latency=0.02) as server:
            path = tmp_path / "schedules.yaml"
            path.write_text(yaml.safe_dump({"database_url": database_url, "connectors": {NAME: {
                "type": "jira", "settings": {"base_url": f"{server.root_url}/ex/jira/{self.CLOUD}", "max_retries": 2,
                                             "backoff_initial": 0.01, "backoff_max": 0.05},
                "auth": {"client_id": self.CLIENT, "client_secret": "${JIRA_OAUTH_SECRET}",
                         "authorize_url": auth.url("/authorize"), "token_url": auth.url("/oauth/token")}}}}))
            # consent, as `ingest auth jira` gives it: the first refresh token goes to the credential store
            loaded = load_config(path)
            cred = loaded.connector(NAME).auth.credential
            request = authorization_request(cred)
            # the default scopes are enough for every endpoint (the fake checks each one's classic scope)
            assert all(f"read%3Ajira-{s}" in request.url for s in ("user", "work")) and "offline_access" in request.url
            db = get_engine(database_url)
            migrate(db)
            store = CredentialStore(db)
            exchange(cred, request, code_from_redirect(request, auth.sign_in(request.url)), connector=NAME,
                     store=store)
            binding = cred.grant(NAME).binding

            def stored() -> Token:
                return store.load(NAME, "oauth2_authorization_code", binding)

            def token_posts() -> int:
                return auth.count(r"/oauth/token", "POST")

            first = stored().refresh_token
            assert token_posts() == 1 and first in auth.refresh_tokens

            # day one: the access token expires after 25 API calls, mid-run
            auth.expire_after(25)
            with structlog.testing.capture_logs() as logs:
                day1 = run(loaded, NAME, database_url=database_url)
            assert day1.status == "succeeded", day1.error
            assert token_posts() == 2  # one refresh, however many requests met the 401
            assert any(e["event"] == "token_rejected" for e in logs)  # requests met the expiry (401)
            assert [e["rotated"] for e in logs if e["event"] == "token_refreshed"] == [True]
            second = stored().refresh_token
            assert second != first and first in auth.disabled and second in auth.refresh_tokens
            accounts = {r["account_id"] for r in query(
                database_url, "SELECT account_id FROM ingest.accounts WHERE connector = %s", NAME)}
            assert accounts == set(site.users)

            # day two, a new process state (nothing in memory) after a night (every access token expired):
            # the stored, rotated refresh token is the one used, and it rotates again
            auth.expire_all()
            day2 = run(load_config(path), NAME, database_url=database_url)
            assert day2.status == "succeeded", day2.error
            assert token_posts() == 3
            third = stored().refresh_token
            assert third not in (first, second) and second in auth.disabled

            # the old one is refused, as Atlassian does (403 invalid_grant) ...
            refused = httpx.post(auth.url("/oauth/token"), json={
                "grant_type": "refresh_token", "client_id": self.CLIENT, "client_secret": client_secret,
                "refresh_token": first})
            assert refused.status_code == 403 and refused.json()["error"] == "invalid_grant"
            # ... and a run left holding it says what to do
            store.save(NAME, "oauth2_authorization_code", binding,
                       Token(access_token="expired-" + secrets.token_hex(4), expires_at=0.0, refresh_token=first))
            day3 = run(load_config(path), NAME, database_url=database_url)
            assert day3.status == "failed"
            assert day3.error.startswith("the consent for jira has expired or was revoked (invalid_grant): run "
                                         f"`ingest auth {NAME}` again"), day3.error

            # no token or secret in the logs or in clear anywhere in the database
            with db.connect() as conn:
                payloads = conn.execute(sa.text("SELECT payload FROM ingest.credentials WHERE connector = :c"),
                                        {"c": NAME}).scalars().all()
            dumped = json.dumps(logs, default=str) + repr([bytes(p) for p in payloads]) + str(day3.error)
            for secret in (first, second, third, client_secret):
                assert secret not in dumped
