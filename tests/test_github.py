"""The github connector against the loopback GitHub fake: an organisation read exactly (direct team
memberships with and without GitHub's ``inherited`` marks), two days of changes with exact
``ingest.changes`` (a team rename is a modification), primary and secondary rate limits (never
sleeping on a misread reset), and the token never leaking."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from connectors.github import GithubAuth, GithubConnector, GithubSettings, is_secondary_limit, repo_permission
from ingest.connector import ConnectorContext
from tests import engine
from tests.engine import cli, output, query
from tests.servers.github_server import GithubOrg, GithubServer, Reply, error_body, make_org

NAME = "gh"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}


@pytest.fixture
def token(monkeypatch) -> str:
    value = "ghp_" + uuid.uuid4().hex
    monkeypatch.setenv("GH_TEST_TOKEN", value)
    return value


def settings(server: GithubServer, **kw: Any) -> dict[str, Any]:
    return {"org": server.org.login, "base_url": server.root_url, "max_retries": 3, "per_page": 100, **FAST, **kw}


def connector(server: GithubServer, token: str | dict[str, Any], **kw: Any) -> GithubConnector:
    auth = token if isinstance(token, dict) else {"bearer_token": token}
    return GithubConnector(ConnectorContext(name=NAME, settings=GithubSettings(**settings(server, **kw)),
                                            auth=GithubAuth.model_validate(auth)))


def app_key() -> tuple[str, bytes]:
    """A fresh RSA key for a GitHub App: (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def write_config(tmp_path: Path, server: GithubServer, **kw: Any) -> Path:
    cfg = {"connectors": {NAME: {"type": "github", "settings": settings(server, **kw),
                                 "auth": {"bearer_token": "${GH_TEST_TOKEN}"}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


def direct_members(org: GithubOrg, marks: bool) -> dict[int, dict[int, str]]:
    """What the connector must store: direct memberships (without marks, someone also listed in a
    child team is stored in the child only, as documented)."""
    out = {}
    for tid, t in org.teams.items():
        members = dict(t["members"])
        if not marks:
            below = {u for d in org.descendants(tid) for u in org.teams[d]["members"]}
            members = {u: r for u, r in members.items() if u not in below or r == "maintainer"}
        out[tid] = members
    return out


def expected_state(org: GithubOrg, marks: bool = True) -> dict[str, set]:
    grants = {(str(u), f"org:{r}") for u, r in org.members.items()}
    nested = {(f"team:{t['parent']}", f"team:{tid}") for tid, t in org.teams.items() if t["parent"]}
    for tid, members in direct_members(org, marks).items():
        for u, r in members.items():
            grants.add((str(u), f"team:{tid}"))
            if r == "maintainer":
                grants.add((str(u), f"team:{tid}:maintainer"))
    for rid, repo in org.repos.items():
        grants |= {(str(u), f"{rid}:{p}") for u, p in repo["collaborators"].items()}
        nested |= {(f"{rid}:{p}", f"team:{t}") for t, p in repo["teams"].items()}
    for rid, role in org.roles.items():
        grants |= {(str(u), f"org_role:{rid}") for u in role["users"]}
        nested |= {(f"org_role:{rid}", f"team:{t}") for t in role["teams"]}
    return {
        "accounts": {(str(u), org.users[u]) for u in (*org.members, *org.outside)},
        "resources": {(str(r), f"{org.login}/{v['name']}") for r, v in org.repos.items()},
        "teams": {(f"team:{t}", v["name"]) for t, v in org.teams.items()},
        "grants": grants,
        "nested": nested,
    }


def read_state(conn: GithubConnector) -> dict[str, set]:
    with conn:
        accounts = list(conn.list_accounts())
        resources = list(conn.list_resources())
        entitlements = list(conn.list_entitlements())
        assoc = list(conn.find_entitlement_associations())
    return {
        "accounts": {(a["account_id"], a["username"]) for a in accounts},
        "resources": {(r["resource_id"], r["label"]) for r in resources},
        "teams": {(e["entitlement_id"], e["label"]) for e in entitlements if e["entitlement_type"] == "team"},
        "grants": {(a["account_id"], a["entitlement_id"]) for a in assoc if "account_id" in a},
        "nested": {(a["entitlement_id"], a["member_entitlement_id"]) for a in assoc if "account_id" not in a},
    }


def db_state(database_url: str) -> dict[str, set]:
    def rows(table: str, *cols: str, where: str = "") -> set[tuple]:
        return {tuple(r[c] for c in cols) for r in query(
            database_url, f"SELECT * FROM ingest.{table} WHERE connector = %s {where}", NAME)}
    return {
        "accounts": rows("accounts", "account_id", "username"),
        "resources": rows("resources", "resource_id", "label"),
        "teams": rows("entitlements", "entitlement_id", "label", where="AND entitlement_type = 'team'"),
        "grants": rows("assignments", "account_id", "entitlement_id"),
        "nested": rows("nested_entitlements", "entitlement_id", "member_entitlement_id"),
    }


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


class TestReading:
    def test_the_organisation_is_read_exactly_with_direct_team_memberships(self, token):
        org = make_org()
        with GithubServer(org, token) as server:
            assert read_state(connector(server, token)) == expected_state(org)
            assert server.count(r"/orgs/octo-org/teams/[^/]+/members") == len(org.teams)  # role=all suffices
            pages = [r for r in server.requests if r.path == "/orgs/octo-org/members"]
            assert {r.query["role"] for r in pages} == {"admin", "member"}
            listings = [r for r in server.requests if r.path != "/orgs/octo-org/organization-roles"]
            assert listings and all(r.query.get("per_page") == "100" for r in listings)

    def test_without_inherited_marks_child_team_members_are_taken_out_of_the_parent(self, token):
        org = make_org()
        with GithubServer(org, token, member_marks=False) as server:
            got = read_state(connector(server, token))
        want = expected_state(org, marks=False)
        assert got == want
        assert want["grants"] != expected_state(org)["grants"], "the fixture has members listed in two teams"

    def test_small_pages_follow_the_link_header_to_the_end(self, token):
        org = make_org(n_members=60, n_repos=15, n_teams=4)
        with GithubServer(org, token) as server:
            assert read_state(connector(server, token, per_page=7)) == expected_state(org)
            assert max(int(r.query.get("page", 1)) for r in server.requests) == 9  # 60 members / 7


class TestGithubApp:
    def test_a_github_app_buys_an_installation_token_and_reads_with_it(self, tmp_path, database_url, token,
                                                                     monkeypatch):
        private, public = app_key()
        org = make_org(n_members=40, n_repos=10, n_teams=4)
        with GithubServer(org, token, app=("4242", "77", public)) as server:
            conn = connector(server, {"app_id": 4242, "installation_id": 77, "private_key": private})
            assert read_state(conn) == expected_state(org)
            minted = [r for r in server.requests if r.method == "POST"]
            assert [r.path for r in minted] == ["/app/installations/77/access_tokens"]
            reads = [r for r in server.requests if r.method == "GET"]
            assert reads and all(r.header("authorization").startswith("Bearer ghs_") for r in reads)

            monkeypatch.setenv("GH_APP_KEY", private)
            cfg = {"connectors": {NAME: {"type": "github", "settings": settings(server), "auth": {
                "app_id": "4242", "installation_id": "77", "private_key": "${GH_APP_KEY}"}}}}
            (tmp_path / "schedules.yaml").write_text(json.dumps(cfg))
            result = cli(tmp_path / "schedules.yaml", database_url, "-v", "run", NAME)
            assert result.exit_code == 0, output(result)
            key_body = "".join(private.splitlines()[1:-1])[:64]
            assert key_body not in output(result)
            assert key_body not in json.dumps(query(database_url, "SELECT * FROM ingest.snapshots"), default=str)

    def test_a_key_the_app_does_not_have_fails_check_naming_the_fields(self, tmp_path, database_url, token):
        private, _ = app_key()
        _, other_public = app_key()
        org = make_org(n_members=5, n_repos=1, n_teams=1)
        with GithubServer(org, token, app=("4242", "77", other_public)) as server:
            cfg = {"connectors": {NAME: {"type": "github", "settings": settings(server), "auth": {
                "app_id": "4242", "installation_id": "77", "private_key": private}}}}
            (tmp_path / "schedules.yaml").write_text(json.dumps(cfg))
            result = cli(tmp_path / "schedules.yaml", database_url, "check", NAME)
            assert result.exit_code == 1
            assert "auth.private_key" in output(result) and "InvalidSignature" in output(result)
            assert "".join(private.splitlines()[1:-1])[:64] not in output(result)


class TestTwoDays:
    def test_day_two_gives_exact_changes_and_a_team_rename_is_a_modification(self, tmp_path, database_url, token):
        org = make_org()
        with GithubServer(org, token) as server:
            cfg = write_config(tmp_path, server)
            day1 = cli(cfg, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            snap1 = engine.last_snapshot(database_url, NAME)
            assert db_state(database_url) == expected_state(org)

            expected: set[tuple[str, str, str]] = set()
            with org.lock:
                org.teams[105]["name"], org.teams[105]["slug"] = "Platform Core", "platform-core"  # renamed
                expected |= {("entitlement", "modified", "team:105"),
                             ("entitlement", "modified", "team:105:maintainer")}  # its label follows the name
                org.members[1002] = "admin"  # promoted
                expected |= {("assignment", "removed", "1002 -> org:member"),
                             ("assignment", "added", "1002 -> org:admin")}
                repo = org.repos[20003]
                uid, old = next(iter(sorted(repo["collaborators"].items())))
                new = "admin" if old != "admin" else "read"
                repo["collaborators"][uid] = new  # permission changed
                expected |= {("assignment", "removed", f"{uid} -> repository:20003:20003:{old}"),
                             ("assignment", "added", f"{uid} -> repository:20003:20003:{new}")}
                # someone leaves the organisation: their account and every grant go
                gone = 1240
                assert not any(gone in t["members"] for t in org.teams.values())
                del org.members[gone]
                expected |= {("account", "removed", str(gone)), ("assignment", "removed", f"{gone} -> org:member")}
                for rid, r in org.repos.items():
                    if gone in r["collaborators"]:
                        expected.add(("assignment", "removed",
                                      f"{gone} -> repository:{rid}:{rid}:{r['collaborators'].pop(gone)}"))
                org.teams[112]["members"][1001] = "maintainer"  # a new maintainer
                expected |= {("assignment", "added", "1001 -> team:112"),
                             ("assignment", "added", "1001 -> team:112:maintainer")}

            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap2 = engine.last_snapshot(database_url, NAME)
            assert db_state(database_url) == expected_state(org)
            assert changes_of(database_url, snap2["snapshot_id"]) == expected
            renamed = query(database_url, "SELECT * FROM ingest.entitlements WHERE entitlement_id = 'team:105'")[0]
            assert renamed["label"] == "Platform Core" and renamed["extra"]["slug"] == "platform-core"
            assert snap1["snapshot_id"] < snap2["snapshot_id"]

            again = cli(cfg, database_url, "run", NAME)
            assert again.exit_code == 0, output(again)
            assert changes_of(database_url, engine.last_snapshot(database_url, NAME)["snapshot_id"]) == set()
            assert token not in output(day1) + output(day2) + output(again)


class TestRateLimits:
    def test_a_tight_primary_window_is_paced_or_waited_out_and_the_read_stays_exact(self, token):
        org = make_org(n_members=60, n_repos=20, n_teams=4)
        with GithubServer(org, token, rate_limit=25, rate_window=1.0) as server:
            conn = connector(server, token, max_retries=6)
            started = time.monotonic()
            with structlog.testing.capture_logs() as logs:
                assert read_state(conn) == expected_state(org)
            assert len(server.requests) > 25 and time.monotonic() - started > 0.5, "it had to wait for a reset"
            events = {e["event"] for e in logs}
            assert events & {"rate_limit_pacing", "rate_limit_window_exhausted", "request_retry"}

    def test_a_403_with_remaining_zero_waits_until_the_reset_github_names(self, token):
        org = make_org(n_members=30, n_repos=5, n_teams=2)
        with GithubServer(org, token) as server:
            reset = int(time.time()) + 3
            reset_mono = time.monotonic() + (reset - time.time())  # the reset on the clock requests are stamped with
            server.inject(r"/orgs/octo-org/teams", [Reply(403, error_body("API rate limit exceeded for user ID 1.",
                                                                           403), headers={
                "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0", "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(reset), "x-ratelimit-resource": "core"})])
            conn = connector(server, token)
            with structlog.testing.capture_logs() as logs:
                assert read_state(conn) == expected_state(org)
            retries = [e for e in logs if e["event"] == "request_retry"]
            assert len(retries) == 1 and 0 <= retries[0]["sleep"] <= 3.0, "the wait is the time left to the reset"
            teams = [r for r in server.requests if r.path == "/orgs/octo-org/teams"]
            assert len(teams) == 2 and teams[1].at >= reset_mono - 0.1, "the retry waited for the reset"
            # and no longer than that (the 403 may come late on a loaded machine: then there is little left to wait)
            assert teams[1].at - teams[0].at <= max(0.0, reset_mono - teams[0].at) + 1.5
            assert conn.ctx.stats.throttled == 1

    def test_a_secondary_limit_without_retry_after_waits_the_minimum_not_the_primary_reset(self, token):
        org = make_org(n_members=30, n_repos=5, n_teams=2)
        with GithubServer(org, token) as server:
            server.secondary_limit(r"/orgs/octo-org/outside_collaborators")
            conn = connector(server, token, secondary_rate_limit_wait=0.2)
            started = time.monotonic()
            with structlog.testing.capture_logs() as logs:
                assert read_state(conn) == expected_state(org)
            assert time.monotonic() - started < 60, "no hour-long sleep on the primary window's reset"
            retries = [e for e in logs if e["event"] == "request_retry"]
            assert [round(e["sleep"], 3) for e in retries] == [0.2]
            assert "secondary rate limit" in retries[0]["error"]
            assert conn.ctx.stats.throttled == 1

    def test_secondary_limits_in_a_row_back_off_and_retry_after_is_honoured(self, token):
        org = make_org(n_members=30, n_repos=5, n_teams=2)
        with GithubServer(org, token) as server:
            for _ in range(2):
                server.secondary_limit(r"/orgs/octo-org/teams")
            server.secondary_limit(r"/orgs/octo-org/repos", retry_after=0.3, status=429)
            conn = connector(server, token, secondary_rate_limit_wait=0.1)
            with structlog.testing.capture_logs() as logs:
                assert read_state(conn) == expected_state(org)
            sleeps = [round(e["sleep"], 3) for e in logs if e["event"] == "request_retry"]
            # repositories are listed first (retry-after 0.3), then the teams twice in a row (0.1, then doubled)
            assert sleeps == [0.3, 0.1, 0.2]

    def test_a_403_that_is_not_a_limit_is_an_auth_error_not_a_wait(self, token):
        import httpx

        refused = httpx.Response(403, json={"message": "Resource not accessible by personal access token"},
                                 headers={"x-ratelimit-remaining": "4000"})
        assert not is_secondary_limit(refused)
        primary = httpx.Response(403, json={"message": "API rate limit exceeded"},
                                 headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"})
        assert not is_secondary_limit(primary)  # the primary rule (wait for the reset) applies


class TestCheckAndSecrets:
    def test_check_names_the_org_and_a_wrong_token_fails_without_leaking(self, tmp_path, database_url, token,
                                                                        monkeypatch):
        org = make_org(n_members=10, n_repos=2, n_teams=2)
        with GithubServer(org, token) as server:
            cfg = write_config(tmp_path, server)
            ok = cli(cfg, database_url, "check", NAME)
            assert ok.exit_code == 0, output(ok)
            assert "octo-org" in output(ok)
            wrong = "ghp_wrong_" + uuid.uuid4().hex
            monkeypatch.setenv("GH_TEST_TOKEN", wrong)
            bad = cli(cfg, database_url, "-v", "check", NAME)
            assert bad.exit_code == 1
            assert "auth.bearer_token" in output(bad)
            assert wrong not in output(bad)
            run = cli(cfg, database_url, "-v", "run", NAME)
            assert run.exit_code == 1 and wrong not in output(run)
            assert wrong not in json.dumps(query(database_url, "SELECT * FROM ingest.snapshots"), default=str)


class TestMapping:
    @pytest.mark.parametrize("raw, want", [
        ({"role_name": "maintain"}, "maintain"), ({"role_name": "push"}, "write"),
        ({"role_name": "security-reviewer"}, "security-reviewer"),
        ({"permissions": {"pull": True, "triage": True, "push": True, "maintain": False, "admin": False}}, "write"),
        ({"permissions": {"pull": False}}, None)])
    def test_repo_permission(self, raw, want):
        assert repo_permission(raw) == want
