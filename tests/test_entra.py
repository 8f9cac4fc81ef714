"""The Entra connector: pure mapping functions, and runs against the loopback Graph fake
(tests/servers/graph_server.py): a 2,000-user tenant read exactly, two days of exact changes,
signInActivity on an unlicensed tenant, throttling, tokens expiring mid-run, ``check``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import structlog.testing

from connectors.entra import (
    DEFAULT_ACCESS,
    GRAPH_SCOPE,
    EntraAuth,
    EntraConnector,
    EntraSettings,
    last_sign_in,
    map_app_role_assignment,
    map_group,
    map_member,
    map_role_assignment,
    map_service_principal,
    map_user,
)
from ingest.connector import ConnectorContext
from ingest.errors import AuthError
from ingest.records import Account, Entitlement, Resource
from ingest.redact import structlog_processor
from tests import engine
from tests.engine import cli, output, query
from tests.servers.graph_server import (
    ALL_PERMISSIONS,
    CLIENT_ASSERTION,
    GraphServer,
    GraphTenant,
    make_tenant,
    self_signed_certificate,
)

NAME = "entra"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


# -- mapping ------------------------------------------------------------------------------------------

class TestMapping:
    def test_a_disabled_guest_is_suspended_and_keeps_its_user_type(self):
        raw = GraphTenant().add_user(23, enabled=False, guest=True)
        a = Account.model_validate(map_user(raw))
        assert a.status.value == "SUSPENDED" and a.custom_attributes["userType"] == "Guest"
        assert a.email == "guest23@example.org" and a.username.endswith("#EXT#@contoso.test")

    def test_an_enabled_member_is_active_and_sign_in_activity_is_not_part_of_the_account(self):
        raw = GraphTenant().add_user(4, last_sign_in="2026-11-30T08:00:00Z")
        record = map_user(raw)
        assert record["status"] == "ACTIVE" and record["custom_attributes"]["userType"] == "Member"
        changed = {**raw, "signInActivity": {"lastSignInDateTime": "2026-12-01T08:00:00Z"}}
        assert map_user(changed) == record

    def test_last_sign_in_and_never(self):
        raw = GraphTenant().add_user(1, last_sign_in="2026-11-30T08:00:00Z")
        assert last_sign_in(raw)["last_activity_at"] == datetime(2026, 11, 30, 8, tzinfo=UTC)
        assert last_sign_in(GraphTenant().add_user(2)) is None
        assert last_sign_in({"id": "x", "signInActivity": {"lastSignInDateTime": "0001-01-01T00:00:00Z"}}) is None

    @pytest.mark.parametrize("kind, ours, assignable", [("security", "security", True),
                                                         ("m365", "microsoft365", True),
                                                         ("dynamic", "dynamic", False)])
    def test_group_kinds(self, kind, ours, assignable):
        e = Entitlement.model_validate(map_group(GraphTenant().add_group(1, "g", kind)))
        assert e.extra["kind"] == ours and e.is_assignable is assignable

    def test_members_users_are_assignments_groups_are_nested_devices_are_skipped(self):
        assert map_member("g1", {"@odata.type": "#microsoft.graph.user", "id": "u1"})["account_id"] == "u1"
        assert map_member("g1", {"@odata.type": "#microsoft.graph.group", "id": "g2"}) == {
            "entitlement_id": "g1", "member_entitlement_id": "g2"}
        assert map_member("g1", {"@odata.type": "#microsoft.graph.device", "id": "d1"}) is None

    def test_role_assignments_by_principal_kind(self):
        user = {"roleDefinitionId": "r", "principalId": "u", "principal": {"@odata.type": "#microsoft.graph.user"}}
        group = {"roleDefinitionId": "r", "principalId": "g", "principal": {"@odata.type": "#microsoft.graph.group"}}
        sp = {"roleDefinitionId": "r", "principalId": "s",
              "principal": {"@odata.type": "#microsoft.graph.servicePrincipal"}}
        assert map_role_assignment(user) == {"account_id": "u", "entitlement_id": "r", "resource_type": "",
                                             "resource_id": ""}
        assert map_role_assignment(group) == {"entitlement_id": "r", "member_entitlement_id": "g"}
        assert map_role_assignment(sp) is None

    def test_service_principal_roles_are_scoped_to_the_app_default_access_included(self):
        raw = GraphTenant().add_service_principal(1, "Payroll", ["Reader"])
        resource, roles = map_service_principal(raw)
        assert Resource.model_validate(resource).resource_type == "service_principal"
        ids = {Entitlement.model_validate(r).entitlement_id for r in roles}
        assert ids == {f"{raw['id']}:{DEFAULT_ACCESS}", f"{raw['id']}:{raw['appRoles'][0]['id']}"}

    def test_app_role_assignments(self):
        user = {"principalId": "u", "principalType": "User", "appRoleId": "r"}
        group = {"principalId": "g", "principalType": "Group", "appRoleId": DEFAULT_ACCESS}
        assert map_app_role_assignment("sp", user) == {"account_id": "u", "entitlement_id": "sp:r",
                                                       "resource_type": "service_principal", "resource_id": "sp"}
        assert map_app_role_assignment("sp", group) == {"entitlement_id": f"sp:{DEFAULT_ACCESS}",
                                                        "member_entitlement_id": "g"}
        assert map_app_role_assignment("sp", {"principalId": "s", "principalType": "ServicePrincipal"}) is None


# -- against the fake ------------------------------------------------------------------------------------

def expected_state(t: GraphTenant) -> dict[str, set]:
    with t.lock:
        assignments, nested = set(), set()
        for g, members in t.members.items():
            for m in members:
                if m in t.users:
                    assignments.add((m, g))
                elif m in t.groups:
                    nested.add((g, m))
        for role, p in t.role_assignments:
            (assignments.add((p, role)) if p in t.users else nested.add((role, p)) if p in t.groups else None)
        for sp, pairs in t.app_role_assignments.items():
            for role, p in pairs:
                ent = f"{sp}:{role}"
                if p in t.users:
                    assignments.add((p, f"service_principal:{sp}:{ent}"))
                elif p in t.groups:
                    nested.add((ent, p))
        return {"accounts": set(t.users), "groups": set(t.groups), "apps": set(t.service_principals),
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


def write_config(tmp_path: Path, server: GraphServer, **settings: Any) -> Path:
    cfg = {"connectors": {NAME: {"type": "entra", "settings": {
        "tenant_id": server.tenant.tenant_id, "graph_url": server.root_url, "authority": server.root_url,
        **FAST, **settings}, "auth": {"client_id": "app-1", "client_secret": "${ENTRA_TEST_SECRET}"}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def secret(monkeypatch) -> str:
    value = "entra-" + uuid.uuid4().hex
    monkeypatch.setenv("ENTRA_TEST_SECRET", value)
    return value


def connector(server: GraphServer, secret: str, **settings: Any) -> EntraConnector:
    s = EntraSettings(tenant_id=server.tenant.tenant_id, graph_url=server.root_url, authority=server.root_url,
                      **FAST, **settings)
    return EntraConnector(ConnectorContext(NAME, s, EntraAuth(client_id="app-1", client_secret=secret)))


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


def change_day(t: GraphTenant) -> set[tuple[str, str, str]]:
    expected: set[tuple[str, str, str]] = set()
    with t.lock:
        privileged = {p for _, p in t.role_assignments} | {p for v in t.app_role_assignments.values() for _, p in v}
        plain = sorted(u for u in t.users if u not in privileged and t.users[u]["accountEnabled"])
        leaver = plain[10]
        del t.users[leaver]
        expected.add(("account", "removed", leaver))
        for g, members in t.members.items():
            if leaver in members:
                members.remove(leaver)
                expected.add(("assignment", "removed", f"{leaver} -> {g}"))
        disabled = plain[20]
        t.users[disabled]["accountEnabled"] = False
        expected.add(("account", "modified", disabled))
        gids = sorted(t.groups)
        a, b = gids[10], gids[11]
        joiner = next(u for u in plain[30:] if u not in t.members[a])
        t.members[a].append(joiner)
        expected.add(("assignment", "added", f"{joiner} -> {a}"))
        t.members[b].append(a)  # new nesting
        expected.add(("nested_entitlement", "added", f"{a} -> {b}"))
        role = sorted(t.role_definitions)[0]
        t.role_assignments.append((role, plain[40]))
        expected.add(("assignment", "added", f"{plain[40]} -> {role}"))
    return expected


class TestAgainstTheFake:
    def test_two_days_give_exact_changes(self, tmp_path, database_url, secret):
        t = make_tenant(n_users=2000)
        with GraphServer(t, clients={"app-1": (secret, ALL_PERMISSIONS)}) as server:
            cfg = write_config(tmp_path, server)
            day1 = cli(cfg, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            assert current_state(database_url) == expected_state(t)
            big = next(g for g, x in t.groups.items() if x["displayName"] == "all-staff")
            assert server.count(rf"/v1\.0/groups/{big}/members") == 2  # 1500 members: 999 + 501
            assert all(r.query.get("$top") == "999" for r in server.requests
                       if r.path.startswith("/v1.0/") and "$skiptoken" not in r.query
                       and r.path not in ("/v1.0/roleManagement/directory/roleDefinitions",
                                          "/v1.0/roleManagement/directory/roleAssignments"))
            expected = change_day(t)
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            assert current_state(database_url) == expected_state(t)
            assert changes_of(database_url, engine.last_snapshot(database_url, NAME)["snapshot_id"]) == expected
            assert secret not in output(day1) + output(day2)

    def test_a_day_where_only_sign_ins_change_changes_nothing(self, tmp_path, database_url, secret):
        t = make_tenant(n_users=800, n_groups=8, n_apps=2, big_group=500)
        with GraphServer(t, clients={"app-1": (secret, ALL_PERMISSIONS)}) as server:
            cfg = write_config(tmp_path, server)
            assert cli(cfg, database_url, "run", NAME).exit_code == 0
            with t.lock:
                signed_in = sorted(t.users)[:300]
                for uid in signed_in:
                    t.users[uid]["signInActivity"]["lastSignInDateTime"] = "2026-12-02T07:00:00Z"
            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap = engine.last_snapshot(database_url, NAME)
            assert changes_of(database_url, snap["snapshot_id"]) == set()
            rows = {r["account_id"]: r["last_activity_at"] for r in query(
                database_url, "SELECT account_id, last_activity_at FROM ingest.last_activity WHERE connector = %s",
                NAME)}
            assert all(rows[u].isoformat().startswith("2026-12-02T07:00:00") for u in signed_in)

    def test_an_unlicensed_tenant_is_read_without_sign_in_activity_saying_so_once(self, secret):
        t = make_tenant(n_users=300, n_groups=4, n_apps=2, premium=False)
        with GraphServer(t, clients={"app-1": (secret, ALL_PERMISSIONS)}) as server:
            with connector(server, secret) as c, structlog.testing.capture_logs() as logs:
                accounts = list(c.list_accounts())
                activity = list(c.get_last_activity())
            assert len(accounts) == 300 and activity == []
            notes = [e for e in logs if e["event"] == "entra_sign_in_activity_unavailable"]
            assert len(notes) == 1 and "premium" in notes[0]["reason"]
            selects = [r.query.get("$select", "") for r in server.requests if r.path == "/v1.0/users"]
            assert "signInActivity" in selects[0] and all("signInActivity" not in s for s in selects[1:])

    def test_a_licensed_tenant_gives_last_sign_in(self, secret):
        t = make_tenant(n_users=100, n_groups=2, n_apps=1)
        with GraphServer(t, clients={"app-1": (secret, ALL_PERMISSIONS)}) as server, connector(server, secret) as c:
            list(c.list_accounts())
            activity = {a["account_id"]: a["last_activity_at"] for a in c.get_last_activity()}
        expected = {u: x["signInActivity"]["lastSignInDateTime"] for u, x in t.users.items()
                    if x["signInActivity"]["lastSignInDateTime"]}
        assert {u: v.strftime("%Y-%m-%dT%H:%M:%SZ") for u, v in activity.items()} == expected

    def test_throttling_and_tokens_expiring_mid_run_still_end_exact(self, secret):
        t = make_tenant(n_users=1200, n_groups=6, n_apps=2, big_group=1100)
        with GraphServer(t, clients={"app-1": (secret, ALL_PERMISSIONS)}) as server:
            server.inject(r"/v1\.0/users", [None, GraphServer.error(429, "TooManyRequests", "Too many requests",
                                                                   {"Retry-After": "1"})])
            server.inject(r"/v1\.0/groups/[^/]+/members", [GraphServer.error(
                503, "ServiceUnavailable", "Service unavailable", {"Retry-After": "1"})])
            with connector(server, secret) as c:
                accounts = list(c.list_accounts())
                server.expire_tokens()  # every token issued so far is now expired
                list(c.list_resources())
                list(c.list_entitlements())
                associations = list(c.find_entitlement_associations())
                stats = c.ctx.stats.as_dict()
            assert len(accounts) == 1200
            assert server.token_requests == 2, "one token, then one more after the 401"
            assert stats["throttled"] == 1 and stats["retries"] >= 2
            got_members = {(a["account_id"], a["entitlement_id"]) for a in associations
                           if "account_id" in a and not a["resource_id"]}
            assert {(u, g) for g, ms in t.members.items() for u in ms if u in t.users} <= got_members

    def test_check_reports_the_tenant(self, tmp_path, database_url, secret):
        with GraphServer(make_tenant(n_users=5, n_groups=2, n_apps=1),
                         clients={"app-1": (secret, ALL_PERMISSIONS)}) as server:
            result = cli(write_config(tmp_path, server), database_url, "check", NAME)
        assert result.exit_code == 0, output(result)
        assert "Contoso" in output(result)

    def test_a_wrong_secret_fails_check_without_leaking_it(self, tmp_path, database_url, secret):
        with GraphServer(make_tenant(n_users=5, n_groups=2, n_apps=1),
                         clients={"app-1": ("the-right-one", ALL_PERMISSIONS)}) as server:
            result = cli(write_config(tmp_path, server), database_url, "check", NAME)
        text = " ".join(output(result).split())
        assert result.exit_code == 1, text
        assert "AADSTS7000215" in text and "auth.client_secret" in text
        assert secret not in text

    def test_check_names_the_missing_application_permissions(self, secret):
        granted = frozenset({"User.Read.All", "GroupMember.Read.All"})
        with GraphServer(make_tenant(n_users=5, n_groups=2, n_apps=1), clients={"app-1": (secret, granted)}) as server:
            with connector(server, secret) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        assert "RoleManagement.Read.Directory" in str(e.value) and "Application.Read.All" in str(e.value)
        assert "User.Read.All" not in str(e.value)


# -- client credentials with a certificate ---------------------------------------------------------------

@pytest.fixture(scope="module")
def certs() -> dict[str, tuple[str, str]]:
    """(private key PEM, certificate PEM): the app's uploaded one, one Entra does not know, an expired one."""
    return {"app": self_signed_certificate(), "other": self_signed_certificate(),
            "expired": self_signed_certificate(days=-1)}


def thumbprint(cert_pem: str, digest: str) -> str:
    der = base64.b64decode("".join(cert_pem.strip().splitlines()[1:-1]))
    return base64.urlsafe_b64encode(hashlib.new(digest, der).digest()).decode().rstrip("=")


def cert_connector(server: GraphServer, private: str, cert: str | None, **auth: Any) -> EntraConnector:
    s = EntraSettings(tenant_id=server.tenant.tenant_id, graph_url=server.root_url, authority=server.root_url, **FAST)
    return EntraConnector(ConnectorContext(NAME, s, EntraAuth(client_id="app-1", private_key=private,
                                                              certificate=cert, **auth)))


class TestCertificate:
    """Client credentials with a certificate: a client assertion (RFC 7523) the Graph fake verifies."""

    @pytest.mark.parametrize("algorithm", ["PS256", "RS256"])
    def test_a_certificate_app_reads_the_tenant_and_renews_an_expired_token(self, certs, algorithm):
        private, cert = certs["app"]
        t = make_tenant(n_users=30, n_groups=4, n_apps=1, big_group=20)
        with GraphServer(t, clients={"app-1": (None, ALL_PERMISSIONS)}, certificates={"app-1": [cert]}) as server:
            with structlog.testing.capture_logs(processors=[structlog_processor]) as logs, \
                    cert_connector(server, private, cert, algorithm=algorithm) as c:
                accounts = list(c.list_accounts())
                server.expire_tokens()
                entitlements = list(c.list_entitlements())
            token_url = server.url(f"/{t.tenant_id}/oauth2/v2.0/token")
            bodies = [r.body.decode() for r in server.requests if r.method == "POST"]
        assert {a["account_id"] for a in accounts} == set(t.users)
        assert {e["entitlement_id"] for e in entitlements} >= set(t.groups)
        assert server.token_requests == 2 and len(server.assertions) == 2
        for header, claims in server.assertions:
            assert header["alg"] == algorithm and header["typ"] == "JWT"
            assert header["x5t#S256"] == thumbprint(cert, "sha256") and header["x5t"] == thumbprint(cert, "sha1")
            assert claims["aud"] == token_url and claims["iss"] == claims["sub"] == "app-1"
            assert 0 < claims["exp"] - claims["nbf"] <= 600
        assert len({claims["jti"] for _, claims in server.assertions}) == 2
        assert all("client_secret" not in b and "client_assertion=" in b for b in bodies)
        key_body = "".join(private.strip().splitlines()[1:-1])
        assert key_body[100:164] not in json.dumps(logs, default=str)

    def test_one_pem_holding_key_and_certificate_is_enough(self, certs):
        private, cert = certs["app"]
        auth = EntraAuth(client_id="app-1", private_key=private + cert)
        assert auth.kind == "certificate" and auth.certificate.strip() == cert.strip()

    @pytest.mark.parametrize("given, problem", [
        ({"certificate": "other"}, "not the key of certificate"),
        ({}, "give certificate"),
        ({"client_secret": "s3cret"}, "not both"),
    ])
    def test_a_bad_certificate_configuration_is_refused_without_quoting_the_key(self, certs, given, problem):
        from pydantic import ValidationError

        private, _ = certs["app"]
        auth = {"client_id": "app-1", "private_key": private, **given}
        if "certificate" in auth:
            auth["certificate"] = certs[auth["certificate"]][1]
        with pytest.raises(ValidationError) as e:
            EntraAuth.model_validate(auth)
        assert problem in str(e.value)
        assert "".join(private.strip().splitlines()[1:-1])[100:164] not in str(e.value)

    def test_a_certificate_entra_does_not_know_fails_check_with_aadsts700027_and_no_key(self, certs):
        private, cert = certs["other"]
        t = make_tenant(n_users=5, n_groups=2, n_apps=1)
        with GraphServer(t, clients={"app-1": (None, ALL_PERMISSIONS)},
                         certificates={"app-1": [certs["app"][1]]}) as server:
            with structlog.testing.capture_logs(processors=[structlog_processor]) as logs, \
                    cert_connector(server, private, cert) as c, pytest.raises(AuthError) as e:
                c.validate_credentials()
        text = str(e.value)
        assert "AADSTS700027" in text and "auth.private_key" in text and "certificate" in text
        key_body = "".join(private.strip().splitlines()[1:-1])
        for chunk in (key_body[100:164], key_body[-64:]):
            assert chunk not in text and chunk not in json.dumps(logs, default=str)

    @pytest.mark.parametrize("case, code", [
        ("audience", 700023), ("expired", 700024), ("issuer", 700021), ("signature", 700027),
        ("no_jti", 50027), ("expired_certificate", 700027), ("unknown_certificate", 700027),
    ])
    def test_the_fake_refuses_a_bad_assertion_as_entra_does(self, certs, case, code):
        import jwt

        (private, cert), (other_key, other_cert) = certs["app"], certs["other"]
        t = GraphTenant()
        uploaded = [cert, certs["expired"][1]]
        with GraphServer(t, clients={"app-1": (None, ALL_PERMISSIONS)}, certificates={"app-1": uploaded}) as server:
            url = server.url(f"/{t.tenant_id}/oauth2/v2.0/token")
            now = int(time.time())
            claims = {"aud": url, "iss": "app-1", "sub": "app-1", "jti": uuid.uuid4().hex, "nbf": now,
                      "exp": now + 300}
            key, signed_for = private, cert
            if case == "audience":
                claims["aud"] = "https://login.microsoftonline.com/other/oauth2/v2.0/token"
            elif case == "expired":
                claims.update(nbf=now - 900, exp=now - 600)
            elif case == "issuer":
                claims["iss"] = "app-2"
            elif case == "signature":
                key = other_key  # names the uploaded certificate, signed with another key
            elif case == "no_jti":
                del claims["jti"]
            elif case == "expired_certificate":
                key, signed_for = certs["expired"]
            elif case == "unknown_certificate":
                key, signed_for = other_key, other_cert
            assertion = jwt.encode(claims, key, algorithm="PS256",
                                   headers={"x5t#S256": thumbprint(signed_for, "sha256")})
            good = jwt.encode({**claims, "aud": url, "iss": "app-1", "jti": "j", "nbf": now, "exp": now + 300},
                              private, algorithm="PS256", headers={"x5t#S256": thumbprint(cert, "sha256")})
            form = {"grant_type": "client_credentials", "client_id": "app-1", "scope": GRAPH_SCOPE,
                    "client_assertion_type": CLIENT_ASSERTION}
            refused = httpx.post(url, data={**form, "client_assertion": assertion}, timeout=10)
            accepted = httpx.post(url, data={**form, "client_assertion": good}, timeout=10)
        body = refused.json()
        assert refused.status_code == 401 and body["error"] == "invalid_client", body
        assert body["error_codes"] == [code] and body["error_description"].startswith(f"AADSTS{code}: ")
        assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
        assert accepted.status_code == 200 and accepted.json()["access_token"]
