"""``type: rest`` end to end through the CLI against a loopback fake API (tests/servers/rest_api.py):
four paginations, fan-out per parent, faults, two days of changes, invalid records, ``info``, and a
table of bad configurations each answered with exit 2 naming file, connector, stream and key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.rest import compile_map
from tests.engine import cli, last_snapshot, output, query
from tests.servers.fake_api import FakeApi, Fault, Reply
from tests.servers.rest_api import CONFIG, EXAMPLE, TOKEN, AcmeOrg, make_org, next_day, serve

NAME = "acme"


def write(tmp_path: Path, api: FakeApi, settings: dict[str, Any] | None = None, **extra: Any) -> Path:
    settings = copy.deepcopy(settings if settings is not None else CONFIG)
    cfg = {"connectors": {NAME: {"type": "rest", "auth": {"bearer_token": "${ACME_REST_TOKEN}"},
                                 "settings": {"base_url": api.base_url, "max_retries": 4, "backoff_initial": 0.01,
                                              "backoff_max": 0.02, "max_retry_after": 0.05, **settings},
                                 **extra}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def state(url: str) -> dict[str, Any]:
    def rows(sql: str) -> list[dict[str, Any]]:
        return query(url, sql, NAME)

    return {
        "accounts": {r["account_id"]: (r["username"], r["display_name"], r["status"], r["email"])
                     for r in rows("SELECT * FROM ingest.accounts WHERE connector = %s")},
        "resources": {r["resource_id"]: r["label"] for r in rows("SELECT * FROM ingest.resources WHERE connector = %s")},
        "groups": {r["entitlement_id"]: r["label"] for r in rows(
            "SELECT * FROM ingest.entitlements WHERE connector = %s")},
        "assignments": {(r["account_id"], r["entitlement_id"]) for r in rows(
            "SELECT * FROM ingest.assignments WHERE connector = %s")},
        "nested": {(r["entitlement_id"], r["member_entitlement_id"]) for r in rows(
            "SELECT * FROM ingest.nested_entitlements WHERE connector = %s")},
    }


def expected(org: AcmeOrg) -> dict[str, Any]:
    return {
        "accounts": {str(u["id"]): (u["login"], f"{u['profile']['first']} {u['profile']['last']}",
                                    "SUSPENDED" if u["state"] == "locked" else "ACTIVE", u["profile"]["email"])
                     for u in org.users},
        "resources": {a["app_id"]: a["title"] for a in org.apps},
        "groups": {g["id"]: g["name"] for g in org.groups},
        "assignments": {(u, gid) for gid, users in org.members.items() for u in users
                        if gid in {g["id"] for g in org.groups}},
        "nested": {(gid, s) for gid, subs in org.subgroups.items() for s in subs},
    }


@pytest.fixture
def acme(monkeypatch):
    monkeypatch.setenv("ACME_REST_TOKEN", TOKEN)
    org = make_org()
    with FakeApi() as api:
        serve(api, org)
        yield api, org


def test_two_days_every_pagination_and_the_fan_out_exactly(tmp_path, database_url, acme):
    api, org = acme
    cfg = write(tmp_path, api)
    day1 = cli(cfg, database_url, "run", NAME)
    assert day1.exit_code == 0, output(day1)
    assert state(database_url) == expected(org)
    snap1 = last_snapshot(database_url, NAME)
    assert snap1["stats"]["account"]["added"] == 130 and snap1["stats"]["account"]["invalid"] == 0
    paths = {r.path for r in api.requests}
    assert {"/users", "/groups", "/apps"} <= paths and {f"/groups/{g['id']}/members" for g in org.groups} <= paths
    assert all(r.header("Authorization") == f"Bearer {TOKEN}" for r in api.requests)

    day2_org = next_day(org)                                # a user leaves, one joins, ...
    serve(api, day2_org)
    day2 = cli(cfg, database_url, "run", NAME)
    assert day2.exit_code == 0, output(day2)
    assert state(database_url) == expected(day2_org)
    s = last_snapshot(database_url, NAME)["stats"]
    assert (s["account"]["added"], s["account"]["removed"], s["account"]["modified"]) == (1, 1, 1)
    assert (s["entitlement"]["modified"], s["resource"]["removed"]) == (1, 1)
    assert s["assignment"]["added"] >= 1 and s["assignment"]["removed"] >= 1

    again = cli(cfg, database_url, "run", NAME)
    assert again.exit_code == 0
    s3 = last_snapshot(database_url, NAME)["stats"]
    assert all(s3[e]["added"] == s3[e]["removed"] == s3[e]["modified"] == 0
               for e in ("account", "entitlement", "resource", "assignment", "nested_entitlement"))


def test_the_readme_example_runs_as_written(tmp_path, database_url, acme, monkeypatch):
    """examples/rest.yaml, unchanged but for where the demo API listens (its ${ACME_BASE_URL:-...}), loads and
    reads the whole demo organisation; its token is the file's own default."""
    from ingest.config import load_config

    api, org = acme
    monkeypatch.delenv("ACME_REST_TOKEN")
    monkeypatch.delenv("ACME_TOKEN", raising=False)
    monkeypatch.setenv("ACME_BASE_URL", api.base_url)
    cfg = tmp_path / "rest.yaml"
    cfg.write_text(EXAMPLE.read_text())
    loaded = load_config(cfg).connector(NAME)
    assert loaded.type == "rest" and loaded.settings.base_url == api.base_url
    assert {"cursor", "page_number", "link_header", "offset", "single_page"} == (
        {loaded.settings.paginator["type"]} | {s.paginator["type"] for s in loaded.settings.streams.values()
                                               if s.paginator})
    assert [k for k, s in loaded.settings.streams.items() if s.for_each] == ["assignments", "nested_entitlements"]
    result = cli(cfg, database_url, "run", NAME)
    assert result.exit_code == 0, output(result)
    assert state(database_url) == expected(org)


def test_faults_are_retried_and_the_result_is_exact(tmp_path, database_url, acme):
    api, org = acme
    api.fault_share(Fault.error(500), 0.1, seed=3)
    api.fault_share(Fault.rate_limited(retry_after=0.01), 0.05, seed=4)
    api.script([Fault.reset(), Fault.truncated()], path="/groups/grp-5/members")
    # 15 % of requests fail; 12 tries each make a run that still fails one in ~10^8
    result = cli(write(tmp_path, api, {**CONFIG, "max_retries": 11}), database_url, "run", NAME)
    assert result.exit_code == 0, output(result)
    assert state(database_url) == expected(org)
    assert last_snapshot(database_url, NAME)["stats"]["http"]["retries"] >= 3


def test_a_record_whose_mapping_yields_no_key_is_counted_invalid_with_the_reason(tmp_path, database_url, acme):
    api, org = acme
    broken = org.copy()
    del broken.users[3]["id"]
    serve(api, broken)
    result = cli(write(tmp_path, api), database_url, "run", NAME)
    assert result.exit_code == 0, output(result)
    snap = last_snapshot(database_url, NAME)
    assert snap["stats"]["account"]["invalid"] == 1 and snap["stats"]["account"]["added"] == 129
    assert "account_id" in json.dumps(snap["stats"])


def test_a_failing_fan_out_listing_fails_the_run_naming_the_stream(tmp_path, database_url, acme):
    api, _ = acme
    api.route("/groups/grp-4/members", lambda _r: Reply(400, {"message": "no such group"}))
    result = cli(write(tmp_path, api), database_url, "run", NAME)
    assert result.exit_code == 1
    snap = last_snapshot(database_url, NAME)
    assert snap["status"] == "failed" and "stream=assignments" in snap["error"] and "no such group" in snap["error"]


def test_info_lists_the_streams_and_publishes_the_schema(tmp_path, acme):
    api, _ = acme
    cfg = write(tmp_path, api)
    text = cli(cfg, "postgresql://unused/x", "info", NAME)
    assert text.exit_code == 0, output(text)
    assert "stream assignments: GET /groups/{parent.entitlement_id}/members for each entitlements (offset)" \
        in output(text)
    doc = json.loads(cli(cfg, "postgresql://unused/x", "info", NAME, "--json").output)
    assert doc["instance"]["streams"]["accounts"]["paginator"] == "cursor"
    schema = doc["request_settings_schema"]
    assert "streams" in schema["properties"] and "StreamSpec" in json.dumps(schema)
    typ = json.loads(cli(cfg, "postgresql://unused/x", "info", "rest", "--json").output)
    assert "streams" in typ["request_settings_schema"]["properties"]


def test_mapping_expressions() -> None:
    build = compile_map("account", {
        "account_id": "id", "display_name": "{p.first} {p.last}", "username": "{parent.org}/{login}",
        "status": {"path": "state", "values": {"x": "SUSPENDED"}, "default": "ACTIVE"},
        "custom_attributes.team": {"const": "blue"}, "email": "p.mail"})
    assert build({"id": 7, "p": {"first": "Ada"}, "login": "ada", "state": "x"}, {"org": "acme"}) == {
        "account_id": "7", "display_name": "Ada", "username": "acme/ada", "status": "SUSPENDED",
        "custom_attributes": {"team": "blue"}}
    assert build({"state": "y"}, None)["status"] == "ACTIVE"
    assert "account_id" not in build({}, None)


# -- bad configurations: exit 2, naming file, connector, stream and key ---------------------------------

def _set(settings: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(settings)
    *head, last = dotted.split(".")
    node = out
    for part in head:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()

BAD = [
    ("streams.users", {"path": "/u", "map": {"account_id": "id"}}, "streams.users",
     "unknown stream 'users'; streams are keyed by entity, known: accounts, resources"),
    ("streams.entitlements.paginator", {"type": "cursors"}, "streams.entitlements.paginator",
     "unknown paginator 'cursors'; known: cursor, link_header"),
    ("streams.assignments.paginator", {"type": "offset", "limitt": 5}, "streams.assignments.paginator",
     "unknown parameter 'limitt' of paginator 'offset'; known: limit"),
    ("paginator", {"type": "nope"}, "settings.paginator", "unknown paginator 'nope'"),
    ("streams.assignments.for_each", "groups", "streams.assignments.for_each",
     "unknown parent stream 'groups'; known: accounts, resources, entitlements, nested_entitlements"),
    ("streams.assignments.map.account", "user_id", "streams.assignments.map.account",
     "unknown field of assignment; known: account_id, entitlement_id"),
    ("streams.accounts.map.account_id", _DELETE, "streams.accounts.map.account_id",
     "required: every account needs account_id"),
    ("streams.accounts.map.status", {"path": "state", "valuez": {}}, "streams.accounts.map.status",
     "unknown key 'valuez'; known: path, values, default"),
    ("streams.accounts.map.email", 5, "streams.accounts.map.email", "not an expression"),
    ("streams.resources.path", _DELETE, "streams.resources.path", "Field required"),
    ("streams.entitlements.selectr", "data", "streams.entitlements.selectr", "unknown key"),
    ("streams.accounts.path", "/users/{parent.id}", "streams.accounts.for_each",
     "{parent.<field>} is used but the stream has no for_each"),
]


@pytest.mark.parametrize("dotted,value,where,message", BAD, ids=[b[0] + ("-del" if b[1] is _DELETE else "")
                                                                for b in BAD])
def test_a_bad_config_exits_2_naming_file_connector_stream_and_key(tmp_path, acme, dotted, value, where, message):
    api, _ = acme
    cfg = write(tmp_path, api, _set(CONFIG, dotted, value))
    result = cli(cfg, "postgresql://unused/x", "run", NAME)
    text = " ".join(output(result).split())
    assert result.exit_code == 2, text
    assert str(cfg) in text and f"connectors.{NAME}." in text
    assert where in text and message in text, text


def test_check_reads_one_page_and_any_credential_kind_works(tmp_path, monkeypatch):
    """`ingest check` on a rest instance; basic auth and an API key header as well as a bearer token."""
    org = make_org(n_users=30, n_groups=2)
    with FakeApi() as api:
        serve(api, org)
        api._required.clear()  # this server takes HTTP basic instead of the bearer token
        api.require_basic("svc", "pw-rest-77")
        cfg = write(tmp_path, api)
        doc = yaml.safe_load(cfg.read_text())
        doc["connectors"][NAME]["auth"] = {"username": "svc", "password": "pw-rest-77"}
        cfg.write_text(yaml.safe_dump(doc))
        checked = cli(cfg, "postgresql://unused/x", "check", NAME)
        assert checked.exit_code == 0, output(checked)
        assert "first_page_records: 25" in output(checked) and "pw-rest-77" not in output(checked)
        assert api.requests[-1].header("Authorization").startswith("Basic ")

        api._required.clear()
        api.require_header("X-API-Key", "key-rest-99")
        doc["connectors"][NAME]["auth"] = {"api_key": "key-rest-99", "header": "X-API-Key"}
        cfg.write_text(yaml.safe_dump(doc))
        checked = cli(cfg, "postgresql://unused/x", "check", NAME)
        assert checked.exit_code == 0, output(checked)
