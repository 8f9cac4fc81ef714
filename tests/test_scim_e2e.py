"""The SCIM connector end to end through the CLI, against a real SCIM 2.0 server (scim2-server):
two days with changes in between, faults injected by a proxy, the mass-deletion guard, and
the bearer token never leaking."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests import engine
from tests.engine import cli, output, query, spy_stage_pool
from tests.servers.faulty_proxy import FAULTS, FaultyProxy
from tests.servers.scim_server import ScimServer, group_id, load_org, make_org, source_state, user_id

NAME = "acme"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05, "max_retry_after": 0.05}


# -- helpers --------------------------------------------------------------------------------------------

def write_config(tmp_path: Path, base_url: str, token_env: str = "SCIM_E2E_TOKEN", **settings: Any) -> Path:
    settings = {"base_url": base_url, "page_size": 100, "max_retries": 2, **FAST, **settings}
    cfg = {"connectors": {NAME: {"type": "scim", "settings": settings,
                                 "auth": {"bearer_token": "${" + token_env + "}"}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def last_snapshot(database_url: str) -> dict[str, Any]:
    return engine.last_snapshot(database_url, NAME)


def expected_email(raw: dict[str, Any]) -> str | None:
    emails = raw.get("emails") or []
    return next((e["value"] for e in emails if e.get("primary")),
                next((e["value"] for e in emails if e.get("type") == "work"), emails[0]["value"] if emails else None))


def current_state(database_url: str) -> dict[str, Any]:
    """What the current views say, in the shape of ``source_state`` (plus the full account rows)."""
    accounts = query(database_url, "SELECT * FROM ingest.accounts WHERE connector = %s", NAME)
    return {
        "accounts": {a["account_id"]: a for a in accounts},
        "groups": {e["entitlement_id"]: e["label"] for e in query(
            database_url, "SELECT * FROM ingest.entitlements WHERE connector = %s", NAME)},
        "assignments": {(r["account_id"], r["entitlement_id"]) for r in query(
            database_url, "SELECT * FROM ingest.assignments WHERE connector = %s", NAME)},
        "nested": {(r["entitlement_id"], r["member_entitlement_id"]) for r in query(
            database_url, "SELECT * FROM ingest.nested_entitlements WHERE connector = %s", NAME)},
    }


def assert_matches_source(database_url: str, server: ScimServer) -> dict[str, Any]:
    src, cur = source_state(server), current_state(database_url)
    assert set(cur["accounts"]) == set(src["users"])
    for uid, raw in src["users"].items():
        a = cur["accounts"][uid]
        assert (a["username"], a["display_name"], a["given_name"], a["family_name"]) == (
            raw["userName"], raw["displayName"], raw["name"]["givenName"], raw["name"]["familyName"])
        assert a["status"] == ("ACTIVE" if raw["active"] else "SUSPENDED")
        assert a["email"] == expected_email(raw)
    assert cur["groups"] == {gid: g["displayName"] for gid, g in src["groups"].items()}
    assert cur["assignments"] == src["assignments"]
    assert cur["nested"] == src["nested"]
    return cur


def frozen(rows: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(r, sort_keys=True, default=str) for r in rows}


def change_day(server: ScimServer, org_users: list[dict], src: dict[str, Any]) -> set[tuple[str, str, str]]:
    """People removed, deactivated, renamed and moved between groups, through the SCIM API.
    Returns the (entity, change, key) rows ``ingest.changes`` must show for it."""
    expected: set[tuple[str, str, str]] = set()
    ids = [user_id(u["userName"]) for u in org_users]
    groups_of: dict[str, set[str]] = {}
    for uid, gid in src["assignments"]:
        groups_of.setdefault(uid, set()).add(gid)
    with server.client() as c:
        for uid in ids[100:103]:  # removed (as real providers do, their memberships go too)
            for gid in sorted(groups_of.get(uid, ())):
                server.patch(c, f"/Groups/{gid}", {"op": "remove", "path": f'members[value eq "{uid}"]'})
                expected.add(("assignment", "removed", f"{uid} -> {gid}"))
            assert c.delete(f"/Users/{uid}").status_code == 204
            expected.add(("account", "removed", uid))
        active = [uid for uid in ids[200:260] if src["users"][uid]["active"]][:2]
        for uid in active:  # deactivated
            server.patch(c, f"/Users/{uid}", {"op": "replace", "path": "active", "value": False})
            expected.add(("account", "modified", uid))
        for n, uid in enumerate(ids[300:302]):  # renamed (one also gets a new userName; the id stays)
            ops = [{"op": "replace", "path": "displayName", "value": f"Renée Nouveau-Nom {n}"},
                   {"op": "replace", "path": "name.familyName", "value": "Nouveau-Nom"}]
            if n == 1:
                ops.append({"op": "replace", "path": "userName", "value": "renamed.person@example.org"})
            server.patch(c, f"/Users/{uid}", *ops)
            expected.add(("account", "modified", uid))
        src_team, dst_team = group_id("Team 05"), group_id("Team 06")
        touched = set(ids[100:103]) | set(active) | set(ids[300:302])
        movers = [uid for uid, gid in sorted(src["assignments"])
                  if gid == src_team and (uid, dst_team) not in src["assignments"] and uid not in touched][:2]
        assert len(movers) == 2
        for uid in movers:  # moved from Team 05 to Team 06
            server.patch(c, f"/Groups/{src_team}", {"op": "remove", "path": f'members[value eq "{uid}"]'})
            server.patch(c, f"/Groups/{dst_team}", {"op": "add", "path": "members",
                                                     "value": [{"value": uid, "type": "User"}]})
            expected.add(("assignment", "removed", f"{uid} -> {src_team}"))
            expected.add(("assignment", "added", f"{uid} -> {dst_team}"))
    return expected


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


# -- two days ---------------------------------------------------------------------------------------------

class TestTwoDays:
    # by workers: every page of users and of each group goes to the staging workers undecoded (ingest.pages),
    # nested groups come back from them; in the run: the same pages decoded in the run's process
    @pytest.mark.parametrize("by_workers", [False, True], ids=["staged-in-the-run", "staged-by-workers"])
    def test_day_two_shows_exactly_the_changes_and_day_one_stays_reconstructible(self, tmp_path, database_url,
                                                                                 monkeypatch, by_workers):
        monkeypatch.setattr("ingest.writer.PARALLEL_MIN_BYTES", 1 if by_workers else 10**12)
        pooled = spy_stage_pool(monkeypatch)
        token = "scim-e2e-" + uuid.uuid4().hex
        monkeypatch.setenv("SCIM_E2E_TOKEN", token)
        with ScimServer(token=token) as server:
            organisation = make_org(n_users=1200, n_teams=40, big_group_size=1100)
            load_org(server, organisation)
            cfg = write_config(tmp_path, server.base_url, page_size=100)

            day1 = cli(cfg, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            snap1 = last_snapshot(database_url)
            assert snap1["status"] == "succeeded"
            assert snap1["stats"]["account"]["added"] == 1200
            assert snap1["stats"]["http"]["requests"] > 12 + 42
            assert_matches_source(database_url, server)
            day1_accounts = query(database_url, "SELECT * FROM ingest.accounts WHERE connector = %s", NAME)
            day1_assignments = query(database_url, "SELECT * FROM ingest.assignments WHERE connector = %s", NAME)

            expected = change_day(server, organisation.users, source_state(server))

            day2 = cli(cfg, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap2 = last_snapshot(database_url)
            assert snap2["status"] == "succeeded" and snap2["snapshot_id"] > snap1["snapshot_id"]
            assert_matches_source(database_url, server)
            assert changes_of(database_url, snap2["snapshot_id"]) == expected
            assert snap2["stats"]["account"]["removed"] == 3 and snap2["stats"]["account"]["modified"] == 4
            renamed = query(database_url, "SELECT * FROM ingest.accounts WHERE account_id = %s",
                            user_id(organisation.users[301]["userName"]))[0]
            assert renamed["username"] == "renamed.person@example.org"

            assert frozen(query(database_url, "SELECT * FROM ingest.accounts_at(%s)",
                                snap1["snapshot_id"])) == frozen(day1_accounts)
            assert frozen(query(database_url, "SELECT * FROM ingest.assignments_at(%s)",
                                snap1["snapshot_id"])) == frozen(day1_assignments)

            again = cli(cfg, database_url, "run", NAME)
            assert again.exit_code == 0, output(again)
            snap3 = last_snapshot(database_url)
            assert changes_of(database_url, snap3["snapshot_id"]) == set(), "an unchanged source changes nothing"
            assert pooled == (["account", "assignment"] * 3 if by_workers else [])


# -- faults -------------------------------------------------------------------------------------------------

class TestFaults:
    def test_a_run_under_faults_is_complete_or_leaves_the_previous_snapshot(self, tmp_path, database_url,
                                                                           monkeypatch):
        token = "scim-fault-" + uuid.uuid4().hex
        monkeypatch.setenv("SCIM_E2E_TOKEN", token)
        injected: dict[str, int] = dict.fromkeys(FAULTS, 0)
        outcomes: list[str] = []

        def run_via_proxy(server: ScimServer, *, rate: float, seed: int, max_retries: int) -> tuple[int, dict]:
            before = current_state(database_url)
            with FaultyProxy(server.root_url, rate=rate, seed=seed) as proxy:
                cfg = write_config(tmp_path, proxy.root_url + "/scim/v2", page_size=20, max_retries=max_retries)
                result = cli(cfg, database_url, "run", NAME)
            for k, v in proxy.injected.items():
                injected[k] += v
            snap = last_snapshot(database_url)
            if result.exit_code == 0:
                assert snap["status"] == "succeeded"
                assert_matches_source(database_url, server)
                outcomes.append("succeeded")
            else:
                assert result.exit_code == 1, output(result)
                assert snap["status"] == "failed" and snap["error"]
                assert current_state(database_url) == before, "a failed run must leave the previous snapshot"
                outcomes.append("failed")
            return result.exit_code, snap

        with ScimServer(token=token) as server:
            organisation = make_org(n_users=300, n_teams=12, big_group_size=250, seed=11)
            load_org(server, organisation)
            migrated = cli(write_config(tmp_path, server.base_url), database_url, "db", "migrate")
            assert migrated.exit_code == 0, output(migrated)

            code, snap = run_via_proxy(server, rate=0.25, seed=1, max_retries=12)
            assert code == 0, snap["error"]
            assert snap["stats"]["http"]["retries"] > 0

            change_day(server, organisation.users, source_state(server))

            code, snap = run_via_proxy(server, rate=0.6, seed=2, max_retries=0)
            assert code == 1, "with no retries, this many faults must fail the run"

            for seed in range(3, 9):
                run_via_proxy(server, rate=0.3, seed=seed, max_retries=1)

            code, snap = run_via_proxy(server, rate=0.25, seed=99, max_retries=12)
            assert code == 0, snap["error"]
        assert all(injected[f] > 0 for f in FAULTS), injected
        assert "failed" in outcomes and "succeeded" in outcomes

    def test_a_source_that_suddenly_has_no_users_is_rejected(self, tmp_path, database_url, monkeypatch):
        token = "scim-guard-" + uuid.uuid4().hex
        monkeypatch.setenv("SCIM_E2E_TOKEN", token)
        with ScimServer(token=token) as server:
            load_org(server, make_org(n_users=200, n_teams=5, big_group_size=150))
            cfg = write_config(tmp_path, server.base_url)
            assert cli(cfg, database_url, "run", NAME).exit_code == 0
            good = current_state(database_url)
            assert len(good["accounts"]) == 200

            server.clear_users()
            result = cli(cfg, database_url, "run", NAME)
            assert result.exit_code == 1, output(result)
            snap = last_snapshot(database_url)
            assert snap["status"] == "rejected"
            assert current_state(database_url) == good

            forced = cli(cfg, database_url, "run", NAME, "--allow-mass-delete")
            assert forced.exit_code == 0, output(forced)
            assert current_state(database_url)["accounts"] == {}


# -- the token never leaks ------------------------------------------------------------------------------------

def all_text_in_the_database(database_url: str) -> str:
    tables = query(database_url, "SELECT table_schema, table_name FROM information_schema.tables "
                                 "WHERE table_schema IN ('ingest', 'ingest_stage')")
    assert any(t["table_name"] == "accounts_history" for t in tables)
    chunks = []
    for t in tables:
        for row in query(database_url, f'SELECT t::text AS x FROM "{t["table_schema"]}"."{t["table_name"]}" t'):
            chunks.append(row["x"])
    return "\n".join(chunks)


class TestSecrets:
    def test_the_bearer_token_is_never_logged_stored_or_printed(self, tmp_path, database_url, monkeypatch):
        from ingest.config import load_config
        from ingest.runner import run

        token = "scim-secret-" + uuid.uuid4().hex
        wrong = "scim-wrong-" + uuid.uuid4().hex
        monkeypatch.setenv("SCIM_E2E_TOKEN", token)
        monkeypatch.setenv("SCIM_WRONG_TOKEN", wrong)
        texts: list[str] = []
        # the provider echoes a refused Authorization header in its 401 body
        with ScimServer(token=token, leak_auth_on_401=True) as server:
            load_org(server, make_org(n_users=150, n_teams=4, big_group_size=100))
            (tmp_path / "good").mkdir()
            (tmp_path / "bad").mkdir()
            good = write_config(tmp_path / "good", server.base_url, page_size=50)
            bad = write_config(tmp_path / "bad", server.base_url, token_env="SCIM_WRONG_TOKEN")

            # through the CLI, with debug logs (they go to the captured stderr)
            ok = cli(good, database_url, "-v", "run", NAME)
            assert ok.exit_code == 0, output(ok)
            refused = cli(bad, database_url, "-v", "run", NAME)
            assert refused.exit_code == 1
            checked = cli(good, database_url, "-v", "check", NAME)
            assert checked.exit_code == 0, output(checked)
            check_refused = cli(bad, database_url, "-v", "check", NAME)
            assert check_refused.exit_code == 1
            assert "auth.bearer_token" in output(check_refused)
            texts += [output(r) for r in (ok, refused, checked, check_refused)]
            assert '"http_request"' in texts[0], "debug logs were captured"

            # through the runner, with structlog's capture (the raw events, before any rendering)
            with structlog.testing.capture_logs() as logs:
                assert run(load_config(good), NAME, database_url=database_url).status == "succeeded"
                failed = run(load_config(bad), NAME, database_url=database_url)
            assert failed.status == "failed" and "auth.bearer_token" in failed.error
            assert len(logs) > 5
            texts.append(json.dumps(logs, default=str))
            texts.append(failed.error)
        snap = last_snapshot(database_url)
        assert snap["status"] == "failed" and "refused" in snap["error"]
        texts.append(all_text_in_the_database(database_url))
        everything = "\n".join(texts)
        assert "acme" in everything and len(everything) > 10_000
        for secret in (token, wrong):
            assert secret not in everything
