"""The Okta connector against the loopback Okta fake (tests/servers/okta_server.py): a 2,000-user
tenant read exactly, two days of changes with exact ``ingest.changes``, a day where only sign-ins
change, rate limits that force waits, a token revoked mid-run, and ``check`` with a wrong token or
missing permissions."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from connectors.okta import OktaAuth, OktaConnector, OktaSettings
from ingest.connector import ConnectorContext
from ingest.errors import AuthError
from tests import engine
from tests.engine import cli, output, query
from tests.servers.okta_server import OktaServer, OktaTenant, make_tenant, role

NAME = "okta"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


def write_config(tmp_path: Path, server: OktaServer, **settings: Any) -> Path:
    cfg = {"connectors": {NAME: {"type": "okta", "settings": {"domain": server.root_url, **FAST, **settings},
                                 "auth": {"api_key": "${OKTA_TEST_TOKEN}"}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


def expected_state(t: OktaTenant) -> dict[str, set]:
    """What the tables must hold for a tenant, computed from the fake's state (not via the connector)."""
    with t.lock:
        users = set(t.users)
        assignments = {(u, g) for g, members in t.members.items() for u in members}
        assignments |= {(u, f"app:{a}:{a}") for a, us in t.app_users.items() for u in us}
        assignments |= {(u, r["type"]) for u, roles in t.user_roles.items() for r in roles}
        nested = {(a, g) for a, gs in t.app_groups.items() for g in gs}
        nested |= {(r["type"], g) for g, roles in t.group_roles.items() for r in roles}
        return {"accounts": users, "groups": set(t.groups), "apps": set(t.apps),
                "assignments": assignments, "nested": nested}


def current_state(database_url: str) -> dict[str, set]:
    def rows(sql: str) -> list[dict]:
        return query(database_url, sql, NAME)

    return {
        "accounts": {r["account_id"] for r in rows("SELECT account_id FROM ingest.accounts WHERE connector = %s")},
        "groups": {r["entitlement_id"] for r in rows(
            "SELECT entitlement_id FROM ingest.entitlements WHERE connector = %s AND entitlement_type = 'group'")},
        "apps": {r["resource_id"] for r in rows("SELECT resource_id FROM ingest.resources WHERE connector = %s")},
        "assignments": {(r["account_id"], r["entitlement_id"] if not r["resource_id"] else
                         f"{r['resource_type']}:{r['resource_id']}:{r['entitlement_id']}") for r in rows(
            "SELECT * FROM ingest.assignments WHERE connector = %s")},
        "nested": {(r["entitlement_id"], r["member_entitlement_id"]) for r in rows(
            "SELECT * FROM ingest.nested_entitlements WHERE connector = %s")},
    }


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


def change_day(t: OktaTenant) -> set[tuple[str, str, str]]:
    """Leavers deleted, a user suspended, one renamed, two moved between groups, an app assignment
    and an admin role granted. Returns the exact ``ingest.changes`` rows the next run must show."""
    expected: set[tuple[str, str, str]] = set()
    with t.lock:
        active = sorted(u for u, x in t.users.items() if x["status"] == "ACTIVE" and u not in t.user_roles)
        for uid in active[100:102]:  # deleted, with their memberships and app assignments
            del t.users[uid]
            expected.add(("account", "removed", uid))
            for gid, members in t.members.items():
                if uid in members:
                    members.remove(uid)
                    expected.add(("assignment", "removed", f"{uid} -> {gid}"))
            for aid, us in t.app_users.items():
                if uid in us:
                    us.remove(uid)
                    expected.add(("assignment", "removed", f"{uid} -> app:{aid}:{aid}"))
        suspended = active[200]
        t.users[suspended]["status"] = "SUSPENDED"
        expected.add(("account", "modified", suspended))
        renamed = active[300]
        t.users[renamed]["profile"]["lastName"] = "Nouveau-Nom"
        t.users[renamed]["profile"]["displayName"] = "Renée Nouveau-Nom"
        expected.add(("account", "modified", renamed))
        src, dst = sorted(g for g in t.groups if t.groups[g]["profile"]["name"] in ("team-5", "team-6"))
        movers = [u for u in t.members[src] if u not in t.members[dst] and u in active[400:]][:2]
        assert len(movers) == 2
        for uid in movers:
            t.members[src].remove(uid)
            t.members[dst] = sorted([*t.members[dst], uid])
            expected |= {("assignment", "removed", f"{uid} -> {src}"), ("assignment", "added", f"{uid} -> {dst}")}
        aid = sorted(t.apps)[0]
        newcomer = next(u for u in active[500:] if u not in t.app_users[aid])
        t.app_users[aid] = sorted([*t.app_users[aid], newcomer])
        expected.add(("assignment", "added", f"{newcomer} -> app:{aid}:{aid}"))
        admin = active[600]
        t.user_roles[admin] = [role("APP_ADMIN", n=99)]
        expected.add(("assignment", "added", f"{admin} -> APP_ADMIN"))
    return expected


@pytest.fixture
def token(monkeypatch) -> str:
    value = "ssws-" + uuid.uuid4().hex
    monkeypatch.setenv("OKTA_TEST_TOKEN", value)
    return value


def connector(server: OktaServer, token: str, **settings: Any) -> OktaConnector:
    ctx = ConnectorContext(NAME, OktaSettings(domain=server.root_url, **FAST, **settings), OktaAuth(api_key=token))
    return OktaConnector(ctx)


class TestReading:
    def test_every_status_group_type_app_and_role_is_read_with_members_listed_per_group(self, token):
        t = make_tenant(n_users=600, n_groups=12, n_apps=4, big_group=1200)
        with OktaServer(t, api_tokens={token: None}) as server:
            with connector(server, token, max_concurrency=4) as c:
                accounts = list(c.list_accounts())
                list(c.list_resources())
                list(c.list_entitlements())
                associations = list(c.find_entitlement_associations())
            assert {a["custom_attributes"]["okta_status"] for a in accounts} == {
                "ACTIVE", "PROVISIONED", "STAGED", "RECOVERY", "LOCKED_OUT", "PASSWORD_EXPIRED", "SUSPENDED",
                "DEPROVISIONED"}
            assert len(accounts) == 600
            # members are read per group (never groups per user), the big group over several pages
            assert server.count(r"/api/v1/users/[^/]+/groups") == 0
            everyone = next(g for g, x in t.groups.items() if x["type"] == "BUILT_IN")
            assert server.count(rf"/api/v1/groups/{everyone}/users") == 1  # 590 members, one page of 1000
            big_pages = [r for r in server.requests if r.path.endswith("/users") and "/groups/" in r.path
                         and r.query.get("limit") == "1000"]
            assert big_pages and all(r.query["limit"] == "1000" for r in big_pages)
            assert max(server.max_in_flight, 1) <= 4
            got = {(a.get("account_id"), a.get("entitlement_id")) for a in associations if "account_id" in a}
            exp = expected_state(t)
            assert {(u, g) for u, g in got if not g.startswith("0oa")} | {
                (u, f"app:{g}:{g}") for u, g in got if g.startswith("0oa")} == exp["assignments"]

    def test_a_group_larger_than_a_page_is_read_completely(self, token):
        t = make_tenant(n_users=2600, n_groups=3, n_apps=1, big_group=2500)
        with OktaServer(t, api_tokens={token: None}) as server, connector(server, token) as c:
            big = next(g for g, x in t.groups.items() if x["profile"]["name"] == "All Engineering")
            members = [a for a in c.find_entitlement_associations() if a.get("entitlement_id") == big]
            assert len(members) == len(t.members[big]) == 2500
            assert server.count(rf"/api/v1/groups/{big}/users") == 3  # 1000 + 1000 + 500


class TestEndToEnd:
    def test_two_days_give_exact_changes(self, tmp_path, database_url, token):
        t = make_tenant(n_users=2000)
        with OktaServer(t, api_tokens={token: None}) as server:
            cfg = write_config(tmp_path, server, max_concurrency=4)
            day1 = cli(cfg, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            snap1 = engine.last_snapshot(database_url, NAME)
            assert snap1["status"] == "succeeded" and snap1["stats"]["account"]["added"] == 2000
            assert current_state(database_url) == expected_state(t)
            statuses = {r["status"]: r["n"] for r in query(
                database_url, "SELECT status, count(*) AS n FROM ingest.accounts WHERE connector = %s GROUP BY 1",
                NAME)}
            assert statuses == {"ACTIVE": 1960, "PENDING": 20, "SUSPENDED": 10, "DEPROVISIONED": 10}
            login = next(u for u in t.users.values() if u["lastLogin"])
            [row] = query(database_url, "SELECT last_activity_at FROM ingest.accounts WHERE account_id = %s",
                          login["id"])
            assert row["last_activity_at"].isoformat().startswith(login["lastLogin"][:19])

            expected = change_day(t)
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap2 = engine.last_snapshot(database_url, NAME)
            assert current_state(database_url) == expected_state(t)
            assert changes_of(database_url, snap2["snapshot_id"]) == expected


    def test_a_day_where_only_sign_ins_change_changes_nothing_and_updates_last_activity(self, tmp_path, database_url,
                                                                                        token):
        t = make_tenant(n_users=2000)
        with OktaServer(t, api_tokens={token: None}) as server:
            cfg = write_config(tmp_path, server, max_concurrency=4)
            assert cli(cfg, database_url, "run", NAME).exit_code == 0
            history = query(database_url, "SELECT count(*) AS n FROM ingest.accounts_history WHERE connector = %s",
                            NAME)[0]["n"]
            with t.lock:  # people sign in, nothing else happens
                signed_in = sorted(t.users)[:500]
                for uid in signed_in:
                    t.users[uid]["lastLogin"] = "2026-12-02T07:00:00.000Z"
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap = engine.last_snapshot(database_url, NAME)
            assert changes_of(database_url, snap["snapshot_id"]) == set()
            assert snap["stats"]["account"]["modified"] == 0
            assert query(database_url, "SELECT count(*) AS n FROM ingest.accounts_history WHERE connector = %s",
                         NAME)[0]["n"] == history, "a sign-in writes no account version"
            rows = {r["account_id"]: r["last_activity_at"] for r in query(
                database_url, "SELECT account_id, last_activity_at FROM ingest.last_activity WHERE connector = %s",
                NAME)}
            assert all(rows[u].isoformat().startswith("2026-12-02T07:00:00") for u in signed_in)
            [row] = query(database_url, "SELECT last_activity_at FROM ingest.accounts WHERE account_id = %s",
                          signed_in[0])
            assert row["last_activity_at"].isoformat().startswith("2026-12-02T07:00:00")

    def test_a_token_revoked_mid_run_fails_the_run_and_keeps_the_previous_snapshot(self, tmp_path, database_url,
                                                                                   token):
        t = make_tenant(n_users=400, n_groups=8, n_apps=2)
        with OktaServer(t, api_tokens={token: None}) as server:
            cfg = write_config(tmp_path, server)
            assert cli(cfg, database_url, "run", NAME).exit_code == 0
            before = current_state(database_url)
            server.inject(r"/api/v1/groups/[^/]+/users", [None, None, OktaServer.error(
                401, "E0000011", "Invalid token provided")] + [OktaServer.error(401, "E0000011",
                                                                                "Invalid token provided")] * 50)
            with t.lock:
                t.users.pop(sorted(t.users)[5])
            result = cli(cfg, database_url, "run", NAME)
            assert result.exit_code == 1
            snap = engine.last_snapshot(database_url, NAME)
            assert snap["status"] == "failed" and "check auth.api_key" in snap["error"]
            assert token not in snap["error"] and token not in output(result)
            assert current_state(database_url) == before


class TestRateLimits:
    def test_a_tight_rate_limit_forces_waits_and_the_run_still_ends_exact(self, tmp_path, database_url, token):
        t = make_tenant(n_users=300, n_groups=6, n_apps=2, big_group=250)
        # 4 requests per endpoint bucket and 1-second window; the members and roles of the 6 groups
        # are 6 requests each
        with OktaServer(t, api_tokens={token: None}, rate_limit=(4, 1)) as server:
            cfg = write_config(tmp_path, server, max_concurrency=4)
            result = cli(cfg, database_url, "run", NAME)
            assert result.exit_code == 0, output(result)
            assert current_state(database_url) == expected_state(t)
            members = sorted(r.at for r in server.requests if re.fullmatch(r"/api/v1/groups/[^/]+/users", r.path))
            assert members[-1] - members[0] > 0.5, "six requests at four a second took a window reset"
            snap = engine.last_snapshot(database_url, NAME)
            assert snap["stats"]["http"]["throttled"] == server.throttled

    def test_requests_are_paced_before_the_window_runs_out(self, token):
        t = make_tenant(n_users=300, n_groups=6, n_apps=2, big_group=250)
        with OktaServer(t, api_tokens={token: None}, rate_limit=(4, 1)) as server:
            with connector(server, token, max_concurrency=1) as c, structlog.testing.capture_logs() as logs:
                n = len(list(c.list_accounts())) + len(list(c.find_entitlement_associations()))
            assert n > 300
            assert server.throttled == 0, "never ran into a 429"
            assert any(e["event"] == "rate_limit_pacing" for e in logs)

    def test_a_429_waits_until_the_reset_okta_names(self, token):
        t = make_tenant(n_users=50, n_groups=2, n_apps=1)
        with OktaServer(t, api_tokens={token: None}) as server:
            reset = int(time.time()) + 2
            server.inject(r"/api/v1/users", [OktaServer.error(
                429, "E0000047", "API call exceeded rate limit due to too many requests.",
                {"X-Rate-Limit-Limit": "600", "X-Rate-Limit-Remaining": "0", "X-Rate-Limit-Reset": str(reset)})])
            with connector(server, token) as c:
                accounts = list(c.list_accounts())
            first, second = [r for r in server.requests if r.path == "/api/v1/users"][:2]
            assert len(accounts) == 50
            assert second.at - first.at >= reset - time.time() - 2.5  # waited for the reset, not a backoff
            assert time.time() >= reset - 0.05


class TestCheck:
    def test_check_reports_the_org(self, tmp_path, database_url, token):
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1), api_tokens={token: None}) as server:
            result = cli(write_config(tmp_path, server), database_url, "check", NAME)
            assert result.exit_code == 0, output(result)
            assert "Acme Inc" in output(result)

    def test_a_wrong_token_fails_check_without_leaking_it(self, tmp_path, database_url, monkeypatch):
        monkeypatch.setenv("OKTA_TEST_TOKEN", "ssws-wrong-" + uuid.uuid4().hex)
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1)) as server:
            result = cli(write_config(tmp_path, server), database_url, "check", NAME)
        text = output(result)
        assert result.exit_code == 1, text
        assert "Invalid token provided" in text and "auth.api_key" in text
        assert "ssws-wrong-" not in text

    def test_check_names_the_permissions_a_token_lacks(self, token):
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1),
                        api_tokens={token: {"okta.users.read", "okta.groups.read", "okta.orgs.read"}}) as server:
            with connector(server, token) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        assert "okta.apps.read" in str(e.value) and "okta.roles.read" in str(e.value)
        assert "okta.users.read" not in str(e.value)


def rsa_pair() -> tuple[str, str]:
    """(private key PEM, public key PEM) of a fresh RSA key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class TestServiceApp:
    """OAuth 2.0 service app: client credentials with a private_key_jwt assertion (verified by the fake)."""

    @pytest.fixture
    def key_pem(self) -> tuple[str, str]:
        return rsa_pair()

    def _connector(self, server: OktaServer, private: str) -> OktaConnector:
        auth = OktaAuth(client_id="0oaservice1", private_key=private, key_id="k1")
        return OktaConnector(ConnectorContext(NAME, OktaSettings(domain=server.root_url, **FAST), auth))

    def test_a_service_app_reads_the_tenant_and_renews_an_expired_token(self, key_pem):
        private, public = key_pem
        t = make_tenant(n_users=300, n_groups=6, n_apps=2)
        granted = {"okta.users.read", "okta.groups.read", "okta.apps.read", "okta.roles.read", "okta.orgs.read"}
        with OktaServer(t, oauth_clients={"0oaservice1": (public, granted)}) as server:
            with self._connector(server, private) as c:
                accounts = list(c.list_accounts())
                server.expire_tokens()
                list(c.list_resources())
                list(c.list_entitlements())
                associations = list(c.find_entitlement_associations())
            assert len(accounts) == 300 and server.token_requests == 2
            assert all(r.header("Authorization").startswith("Bearer ") for r in server.requests
                       if r.path.startswith("/api/"))
            got = {(a["account_id"], a["entitlement_id"] if not a["resource_id"] else
                    f"app:{a['resource_id']}:{a['entitlement_id']}") for a in associations if "account_id" in a}
            assert got == expected_state(t)["assignments"]

    def test_check_names_a_scope_the_service_app_was_not_granted(self, key_pem):
        private, public = key_pem
        granted = {"okta.users.read", "okta.groups.read", "okta.apps.read", "okta.orgs.read"}
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1),
                        oauth_clients={"0oaservice1": (public, granted)}) as server:
            with self._connector(server, private) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        assert "okta.roles.read" in str(e.value) and private.splitlines()[1] not in str(e.value)

    def test_a_key_the_app_does_not_know_is_refused(self, key_pem):
        private, _ = key_pem
        other = rsa_pair()[1]
        with OktaServer(make_tenant(n_users=5, n_groups=2, n_apps=1),
                        oauth_clients={"0oaservice1": (other, {"okta.users.read"})}) as server:
            with self._connector(server, private) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        assert "invalid_client" in str(e.value) and "auth.private_key" in str(e.value)
