"""The pagerduty connector against the loopback PagerDuty fake: an account read exactly, two days of
exact changes, 429s with and without ratelimit headers, and the 10,000-offset ceiling failing loudly."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import structlog

from connectors.pagerduty import PagerDutyAuth, PagerDutyConnector, PagerDutySettings
from ingest.connector import ConnectorContext
from ingest.errors import ProtocolError
from tests import engine
from tests.engine import cli, output, query
from tests.servers.pagerduty_server import PagerDutyAccount, PagerDutyServer, make_account

NAME = "pd"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.2}


@pytest.fixture
def key(monkeypatch) -> str:
    value = "u+" + uuid.uuid4().hex
    monkeypatch.setenv("PD_TEST_KEY", value)
    return value


def connector(server: PagerDutyServer, key: str, **kw: Any) -> PagerDutyConnector:
    s = PagerDutySettings(base_url=server.root_url, max_retries=3, **FAST, **kw)
    return PagerDutyConnector(ConnectorContext(name=NAME, settings=s, auth=PagerDutyAuth(api_key=key)))


def expected(acc: PagerDutyAccount) -> dict[str, set]:
    grants = {(u, f"role:{v['role']}") for u, v in acc.users.items()}
    nested = set()
    for tid, t in acc.teams.items():
        grants |= {(u, f"team:{tid}:{r}") for u, r in t["members"].items()}
        if t["parent"]:
            nested |= {(f"team:{t['parent']}:{r}", f"team:{tid}:{r}") for r in ("manager", "responder", "observer")}
    for sid, s in acc.schedules.items():
        grants |= {(u, f"{sid}:on_call") for u in s["users"]}
    for pid, p in acc.policies.items():
        for rule in p["rules"]:
            for kind, target in rule:
                if kind == "user_reference":
                    grants.add((target, f"{pid}:on_call"))
                else:
                    nested.add((f"{pid}:on_call", f"{target}:on_call"))
    return {"accounts": {(u, v["email"]) for u, v in acc.users.items()},
            "resources": {("schedule", s) for s in acc.schedules} | {("escalation_policy", p) for p in acc.policies},
            "grants": grants, "nested": nested}


def read(conn: PagerDutyConnector) -> dict[str, set]:
    with conn:
        accounts, resources = list(conn.list_accounts()), list(conn.list_resources())
        list(conn.list_entitlements())
        assoc = list(conn.find_entitlement_associations())
    return {"accounts": {(a["account_id"], a["email"]) for a in accounts},
            "resources": {(r["resource_type"], r["resource_id"]) for r in resources},
            "grants": {(a["account_id"], a["entitlement_id"]) for a in assoc if "account_id" in a},
            "nested": {(a["entitlement_id"], a["member_entitlement_id"]) for a in assoc if "account_id" not in a}}


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


class TestReading:
    def test_the_account_is_read_exactly_with_the_token_header_and_v2_accept(self, key):
        acc = make_account()
        with PagerDutyServer(acc, key) as server:
            assert read(connector(server, key)) == expected(acc)
            users = [r for r in server.requests if r.path == "/users"]
            assert [int(r.query["offset"]) for r in users] == [0, 100, 200] and users[0].query["limit"] == "100"

    def test_past_the_10000_offset_ceiling_the_run_fails_instead_of_truncating(self, key):
        acc = make_account(n_users=10_050, n_teams=1)
        with PagerDutyServer(acc, key) as server:
            conn = connector(server, key)
            with pytest.raises(ProtocolError, match="more than 10,000"):
                list(conn.list_accounts())
            offsets = [int(r.query["offset"]) for r in server.requests if r.path == "/users"]
            assert max(offsets) == 9_900, "it never asked past the ceiling"


class TestTwoDays:
    def test_day_two_gives_exact_changes(self, tmp_path, database_url, key):
        acc = make_account(n_users=80, n_teams=4)
        with PagerDutyServer(acc, key) as server:
            cfg = {"connectors": {NAME: {"type": "pagerduty", "settings": {"base_url": server.root_url},
                                         "auth": {"api_key": "${PD_TEST_KEY}"}}}}
            (tmp_path / "schedules.yaml").write_text(json.dumps(cfg))
            path = tmp_path / "schedules.yaml"
            day1 = cli(path, database_url, "run", NAME)
            assert day1.exit_code == 0, output(day1)
            with acc.lock:
                acc.users["PU00003"]["role"] = "admin"          # promoted
                team = acc.teams["PT001"]["members"]
                uid, old = sorted(team.items())[0]
                team[uid] = "manager" if old != "manager" else "observer"  # team role changed
                acc.schedules["PS001"]["users"].append("PU00070")  # joins a rotation
                gone = "PU00079"
                left = {(tid, t["members"].pop(gone)) for tid, t in acc.teams.items() if gone in t["members"]}
                assert left, "the fixture's leaver is in teams"
                role = acc.users.pop(gone)["role"]               # removed from PagerDuty
            day2 = cli(path, database_url, "run", NAME)
            assert day2.exit_code == 0, output(day2)
            snap = engine.last_snapshot(database_url, NAME)
            want = {("assignment", "removed", f"PU00003 -> role:{make_account(80, 4).users['PU00003']['role']}"),
                    ("assignment", "added", "PU00003 -> role:admin"),
                    ("assignment", "removed", f"{uid} -> team:PT001:{old}"),
                    ("assignment", "added", f"{uid} -> team:PT001:{team[uid]}"),
                    ("assignment", "added", "PU00070 -> schedule:PS001:PS001:on_call"),
                    ("account", "removed", gone), ("assignment", "removed", f"{gone} -> role:{role}"),
                    ("account", "modified", "PU00003"),
                    *{("assignment", "removed", f"{gone} -> team:{tid}:{r}") for tid, r in left}}  # its custom_attributes.role changed too
            assert changes_of(database_url, snap["snapshot_id"]) == want
            assert key not in output(day2)


class TestRateLimits:
    def test_a_429_with_ratelimit_headers_waits_for_the_reset(self, key):
        acc = make_account(n_users=30, n_teams=2)
        with PagerDutyServer(acc, key) as server:
            server.throttle(r"/users", reset=1)
            with structlog.testing.capture_logs() as logs:
                assert read(connector(server, key)) == expected(acc)
            sleeps = [e["sleep"] for e in logs if e["event"] == "request_retry"]
            assert sleeps == [1.0]

    def test_a_429_without_headers_backs_off_and_recovers(self, key):
        acc = make_account(n_users=30, n_teams=2)
        with PagerDutyServer(acc, key, rate_headers=False) as server:
            server.throttle(r"/teams")
            server.throttle(r"/teams")
            conn = connector(server, key)
            started = time.monotonic()
            with structlog.testing.capture_logs() as logs:
                assert read(conn) == expected(acc)
            sleeps = [e["sleep"] for e in logs if e["event"] == "request_retry"]
            assert len(sleeps) == 2 and all(0 < s <= 0.2 for s in sleeps)
            assert conn.ctx.stats.throttled == 2 and time.monotonic() - started < 10

    def test_a_wrong_key_is_an_auth_error_naming_the_field(self, key, tmp_path, database_url):
        acc = make_account(n_users=5, n_teams=1)
        with PagerDutyServer(acc, "the-right-key") as server:
            cfg = {"connectors": {NAME: {"type": "pagerduty", "settings": {"base_url": server.root_url},
                                         "auth": {"api_key": "${PD_TEST_KEY}"}}}}
            (tmp_path / "s.yaml").write_text(json.dumps(cfg))
            result = cli(tmp_path / "s.yaml", database_url, "check", NAME)
            assert result.exit_code == 1 and "auth.api_key" in output(result) and key not in output(result)
