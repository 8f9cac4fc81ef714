"""The google_workspace connector: pure mapping functions, and runs against the loopback Directory API
fake (tests/servers/google_directory_server.py) whose token endpoint verifies the service account's
JWT with PyJWT: a 2,000-user account read exactly, two days of exact changes, Google's 403/429 rate
limits, tokens expiring mid-run, ``check`` with a wrong key or ungranted scopes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.google_workspace import (
    SCOPES,
    GoogleWorkspaceConnector,
    last_login,
    map_group,
    map_member,
    map_role_assignment,
    map_user,
)
from ingest.connector import ConnectorContext
from ingest.errors import AuthError
from ingest.records import Account, Entitlement
from tests import engine
from tests.engine import cli, output, query
from tests.servers.google_directory_server import (
    GoogleDirectoryServer,
    GoogleTenant,
    make_tenant,
    service_account_key,
)

NAME = "gws"
ADMIN = "user0@acme.test"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2}


class TestMapping:
    @pytest.mark.parametrize("suspended, archived, status", [(False, False, "ACTIVE"), (True, False, "SUSPENDED"),
                                                             (False, True, "SUSPENDED")])
    def test_suspended_and_archived_users_cannot_sign_in(self, suspended, archived, status):
        raw = GoogleTenant().add_user(5, suspended=suspended, archived=archived, admin=True)
        a = Account.model_validate(map_user(raw))
        assert a.status.value == status
        assert a.custom_attributes["isAdmin"] is True and a.custom_attributes["archived"] is archived
        assert (a.email, a.display_name) == ("user5@acme.test", "Given5 Family5")

    def test_a_login_does_not_change_the_account(self):
        raw = GoogleTenant().add_user(1, last_login="2026-11-01T00:00:00.000Z")
        assert map_user({**raw, "lastLoginTime": "2026-12-01T00:00:00.000Z", "etag": '"new"'}) == map_user(raw)

    def test_1970_means_never_logged_in(self):
        t = GoogleTenant()
        assert last_login(t.add_user(1)) is None
        raw = t.add_user(2, last_login="2026-11-30T10:00:00.000Z")
        assert last_login(raw)["last_activity_at"] == datetime(2026, 11, 30, 10, tzinfo=UTC)

    def test_group_member_count_is_not_part_of_the_group(self):
        raw = GoogleTenant().add_group(1, "eng")
        e = Entitlement.model_validate(map_group(raw))
        assert e.label == "eng" and map_group({**raw, "directMembersCount": "99", "etag": '"x"'}) == map_group(raw)

    def test_members_that_are_groups_are_nesting_not_accounts(self):
        assert map_member("g", {"id": "u", "type": "USER"})["account_id"] == "u"
        assert map_member("g", {"id": "g2", "type": "GROUP"}) == {"entitlement_id": "g", "member_entitlement_id": "g2"}
        assert map_member("g", {"id": "c", "type": "CUSTOMER"}) is None

    def test_role_assignments_to_users_and_groups(self):
        assert map_role_assignment({"roleId": "r", "assignedTo": "u", "assigneeType": "user"})["account_id"] == "u"
        assert map_role_assignment({"roleId": "r", "assignedTo": "g", "assigneeType": "group"}) == {
            "entitlement_id": "r", "member_entitlement_id": "g"}


# -- against the fake ------------------------------------------------------------------------------------

def expected_state(t: GoogleTenant) -> dict[str, set]:
    with t.lock:
        assignments, nested = set(), set()
        for g, members in t.members.items():
            for m, _ in members:
                (assignments.add((m, g)) if m in t.users else nested.add((g, m)) if m in t.groups else None)
        for role, who in t.role_assignments:
            (assignments.add((who, role)) if who in t.users else nested.add((role, who)) if who in t.groups else None)
        return {"accounts": set(t.users), "groups": set(t.groups), "assignments": assignments, "nested": nested}


def current_state(database_url: str) -> dict[str, set]:
    def rows(sql: str) -> list[dict]:
        return query(database_url, sql, NAME)

    return {
        "accounts": {r["account_id"] for r in rows("SELECT account_id FROM ingest.accounts WHERE connector = %s")},
        "groups": {r["entitlement_id"] for r in rows(
            "SELECT entitlement_id FROM ingest.entitlements WHERE connector = %s AND entitlement_type = 'group'")},
        "assignments": {(r["account_id"], r["entitlement_id"]) for r in rows(
            "SELECT * FROM ingest.assignments WHERE connector = %s")},
        "nested": {(r["entitlement_id"], r["member_entitlement_id"]) for r in rows(
            "SELECT * FROM ingest.nested_entitlements WHERE connector = %s")},
    }


@pytest.fixture(scope="module")
def key_file() -> dict[str, Any]:
    return service_account_key("http://placeholder/token")


def server_for(t: GoogleTenant, key: dict[str, Any], **kw: Any) -> GoogleDirectoryServer:
    server = GoogleDirectoryServer(t, **kw).start()
    key["token_uri"] = server.token_uri
    server.trust(key)
    return server


def write_config(tmp_path: Path, server: GoogleDirectoryServer, key: dict[str, Any], **settings: Any) -> Path:
    (tmp_path / "sa.json").write_text(json.dumps(key))
    cfg = {"connectors": {NAME: {"type": "google_workspace",
                                 "settings": {"api_url": server.root_url, **FAST, **settings},
                                 "auth": {"service_account_json": "${file:" + str(tmp_path / "sa.json") + "}",
                                          "subject": ADMIN}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


def connector(server: GoogleDirectoryServer, key: dict[str, Any], **settings: Any) -> GoogleWorkspaceConnector:
    c = GoogleWorkspaceConnector
    return c(ConnectorContext(NAME, c.Settings(api_url=server.root_url, **FAST, **settings),
                              c.Auth.model_validate({"service_account_json": json.dumps(key), "subject": ADMIN})))


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


def change_day(t: GoogleTenant) -> set[tuple[str, str, str]]:
    expected: set[tuple[str, str, str]] = set()
    with t.lock:
        holders = {w for _, w in t.role_assignments}
        plain = sorted(u for u, x in t.users.items() if u not in holders and not x["suspended"] and not x["archived"])
        leaver = plain[50]
        del t.users[leaver]
        expected.add(("account", "removed", leaver))
        for g, ms in t.members.items():
            if any(m == leaver for m, _ in ms):
                t.members[g] = [(m, r) for m, r in ms if m != leaver]
                expected.add(("assignment", "removed", f"{leaver} -> {g}"))
        t.users[plain[60]]["suspended"] = True
        expected.add(("account", "modified", plain[60]))
        t.users[plain[70]]["name"]["fullName"] = "Renamed Person"
        expected.add(("account", "modified", plain[70]))
        gids = sorted(t.groups)
        joiner = next(u for u in plain[80:] if all(m != u for m, _ in t.members[gids[9]]))
        t.members[gids[9]].append((joiner, "MEMBER"))
        expected.add(("assignment", "added", f"{joiner} -> {gids[9]}"))
        t.members[gids[12]].append((gids[9], "MEMBER"))
        expected.add(("nested_entitlement", "added", f"{gids[9]} -> {gids[12]}"))
        role = sorted(t.roles)[2]
        t.role_assignments.append((role, plain[90]))
        expected.add(("assignment", "added", f"{plain[90]} -> {role}"))
    return expected


class TestAgainstTheFake:
    def test_two_days_give_exact_changes(self, tmp_path, database_url, key_file):
        t = make_tenant(n_users=2000)
        server = server_for(t, key_file)
        try:
            cfg = write_config(tmp_path, server, key_file)
            day1 = cli(cfg, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            assert current_state(database_url) == expected_state(t)
            big = next(g for g, x in t.groups.items() if x["name"] == "everyone")
            assert server.count(rf"/admin/directory/v1/groups/{big}/members") == 8  # 1500 members / 200
            assert server.count(r"/admin/directory/v1/users") == 4  # 2000 / 500
            statuses = {r["status"]: r["n"] for r in query(
                database_url, "SELECT status, count(*) AS n FROM ingest.accounts WHERE connector = %s GROUP BY 1",
                NAME)}
            assert statuses["SUSPENDED"] == sum(1 for u in t.users.values() if u["suspended"] or u["archived"])
            expected = change_day(t)
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            assert current_state(database_url) == expected_state(t)
            assert changes_of(database_url, engine.last_snapshot(database_url, NAME)["snapshot_id"]) == expected
            assert key_file["private_key"].splitlines()[1] not in output(day1) + output(day2)
        finally:
            server.stop()

    def test_a_day_where_only_logins_change_changes_nothing(self, tmp_path, database_url, key_file):
        t = make_tenant(n_users=800, n_groups=8, big_group=500)
        server = server_for(t, key_file)
        try:
            cfg = write_config(tmp_path, server, key_file)
            assert cli(cfg, database_url, "run", NAME).exit_code == 0
            with t.lock:
                logged_in = sorted(t.users)[:300]
                for uid in logged_in:
                    t.users[uid]["lastLoginTime"] = "2026-12-02T07:00:00.000Z"
                    t.users[uid]["etag"] = '"changed"'  # Google's etag changes with the user resource
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap = engine.last_snapshot(database_url, NAME)
            assert changes_of(database_url, snap["snapshot_id"]) == set()
            rows = {r["account_id"]: r["last_activity_at"] for r in query(
                database_url, "SELECT account_id, last_activity_at FROM ingest.last_activity WHERE connector = %s",
                NAME)}
            assert all(rows[u].isoformat().startswith("2026-12-02T07:00:00") for u in logged_in)
        finally:
            server.stop()

    def test_google_rate_limits_are_waited_out_and_the_run_ends_exact(self, key_file):
        t = make_tenant(n_users=1200, n_groups=10, big_group=1000)
        server = server_for(t, key_file, quota=6)  # 6 requests a second, then 403 userRateLimitExceeded / 429
        try:
            with connector(server, key_file, max_concurrency=4, max_retries=20) as c:
                accounts = list(c.list_accounts())
                list(c.list_entitlements())
                associations = list(c.find_entitlement_associations())
                stats = c.ctx.stats.as_dict()
            assert server.throttled > 0 and stats["throttled"] == server.throttled
            assert len(accounts) == 1200
            got = {(a["account_id"], a["entitlement_id"]) for a in associations if "account_id" in a}
            assert got == expected_state(t)["assignments"]
        finally:
            server.stop()

    def test_other_403s_are_fatal_and_say_what_was_refused(self, key_file):
        t = make_tenant(n_users=20, n_groups=3)
        server = server_for(t, key_file)
        try:
            server.inject(r"/admin/directory/v1/groups", [GoogleDirectoryServer.error(
                403, "Not Authorized to access this resource/api", "forbidden", "PERMISSION_DENIED")])
            with connector(server, key_file) as c, pytest.raises(AuthError) as e:
                list(c.list_entitlements())
            assert "Not Authorized to access this resource/api" in str(e.value) and SCOPES["groups"] in str(e.value)
            assert server.count(r"/admin/directory/v1/groups") == 1, "not retried"
        finally:
            server.stop()

    def test_a_token_expiring_mid_run_is_renewed_once(self, key_file):
        t = make_tenant(n_users=700, n_groups=4)
        server = server_for(t, key_file)
        try:
            with connector(server, key_file) as c:
                first = list(c.list_accounts())
                server.expire_tokens()
                again = list(c.list_accounts())
            assert len(first) == len(again) == 700
            assert server.token_requests == 2
        finally:
            server.stop()

    def test_check_reports_the_customer(self, tmp_path, database_url, key_file):
        server = server_for(make_tenant(n_users=5, n_groups=2), key_file)
        try:
            result = cli(write_config(tmp_path, server, key_file), database_url, "check", NAME)
        finally:
            server.stop()
        assert result.exit_code == 0, output(result)
        assert "acme.test" in output(result)

    def test_a_key_google_does_not_know_fails_check_without_leaking_it(self, tmp_path, database_url, key_file):
        stranger = service_account_key("http://placeholder/token", client_email="other@x.iam.gserviceaccount.com")
        server = server_for(make_tenant(n_users=5, n_groups=2), key_file)
        try:
            stranger["token_uri"] = server.token_uri
            result = cli(write_config(tmp_path, server, stranger), database_url, "check", NAME)
        finally:
            server.stop()
        text = " ".join(output(result).split())
        assert result.exit_code == 1, text
        assert "invalid_client" in text or "not found" in text.lower()
        assert stranger["private_key"].splitlines()[1] not in text

    def test_check_names_the_scopes_not_granted_for_delegation(self, key_file):
        granted = {SCOPES["users"], SCOPES["customer"]}
        server = server_for(make_tenant(n_users=5, n_groups=2), key_file, granted=granted)
        try:
            with connector(server, key_file) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        finally:
            server.stop()
        assert SCOPES["groups"] in str(e.value) and SCOPES["roles"] in str(e.value)
        assert SCOPES["users"] not in str(e.value)
