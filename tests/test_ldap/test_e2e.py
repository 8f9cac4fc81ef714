"""The LDAP connector end to end through the CLI, against a real slapd: two days with the
directory changed in between (people removed, deactivated, renamed, moved between groups and OUs),
and the bind password never leaking into logs, errors, output or the database."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import ldap3
import pytest
import structlog

from tests import engine
from tests.engine import cli, output, query
from tests.servers.ldap_data import OPENLDAP_SUFFIX, READER_DN, openldap_org
from tests.servers.slapd import ROOT_PASSWORD, Database, Slapd
from tests.test_ldap.conftest import READER_PASSWORD, Directory, source_state

NAME = "corp_ldap"
SECRET = "Bind-Pw-7f3a9c-E2E-never-stored"  # distinctive, so any leak is found by substring search
ENV = "LDAP_E2E_BIND_PASSWORD"
S = OPENLDAP_SUFFIX


@pytest.fixture
def small_directory(tmp_path) -> Slapd:
    """A fresh, mutable directory: 300 people, a 200-member group, 37 groups; size limit 100."""
    ldif, _ = openldap_org(n_users=300, big_group_size=200, n_project_groups=30, reader_password=SECRET)
    server = Slapd(tmp_path / "slapd", [Database(S, ldif)], size_limit=100)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, port: int, bind_dn: str = READER_DN, **settings: Any) -> Path:
    settings = {"host": "127.0.0.1", "port": port, "base_dn": S, "mode": "openldap", "page_size": 50,
                "allow_plaintext": True,  # a plaintext slapd; TLS is tested in test_tls.py
                "max_retries": 1, "backoff_initial": 0, "backoff_max": 0, **settings}
    cfg = {"connectors": {NAME: {"type": "ldap", "settings": settings,
                                 "auth": {"bind_dn": bind_dn, "password": "${" + ENV + "}"}}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def last_snapshot(database_url: str) -> dict[str, Any]:
    return engine.last_snapshot(database_url, NAME)


def root(server: Slapd) -> ldap3.Connection:
    return ldap3.Connection(server.url, server.rootdn(S), ROOT_PASSWORD, auto_bind=True)


def assert_views_match(database_url: str, server: Slapd) -> None:
    src = source_state(root(server), S)
    accounts = {a["account_id"]: a for a in query(database_url,
                                                  "SELECT * FROM ingest.accounts WHERE connector = %s", NAME)}
    assert set(accounts) == set(src["accounts"])
    for aid, want in src["accounts"].items():
        got = accounts[aid]
        assert {k: got[k] for k in ("username", "email", "display_name", "given_name", "family_name", "status")} \
            == {k: v for k, v in want.items() if k != "dn"}
        assert got["extra"]["dn"] == want["dn"]
    ents = query(database_url, "SELECT * FROM ingest.entitlements WHERE connector = %s", NAME)
    assert {e["entitlement_id"]: e["label"] for e in ents} == src["entitlements"]
    res = query(database_url, "SELECT * FROM ingest.resources WHERE connector = %s", NAME)
    assert {r["resource_id"]: {"label": r["label"], "parent_resource_id": r["parent_resource_id"]} for r in res} \
        == src["resources"]
    assign = query(database_url, "SELECT * FROM ingest.assignments WHERE connector = %s", NAME)
    assert {(a["account_id"], a["entitlement_id"]) for a in assign} == src["assignments"]
    nested = query(database_url, "SELECT * FROM ingest.nested_entitlements WHERE connector = %s", NAME)
    assert {(n["entitlement_id"], n["member_entitlement_id"]) for n in nested} == src["nested"]


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    """refint updates groups after the operation that triggered it returns."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _members(c: ldap3.Connection, group_dn: str) -> set[str]:
    c.search(group_dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["member", "uniqueMember"])
    raw = c.response[0]["raw_attributes"]
    return {v.decode().lower() for v in raw.get("member", []) + raw.get("uniqueMember", [])}


def change_the_directory(server: Slapd) -> set[tuple[str, str, str]]:
    """Day two's changes, made with a plain ldap3 connection. Returns the (entity, change, key) rows
    ``ingest.changes`` must show."""
    c = root(server)
    before = source_state(c, S)
    uuid_of = {a["dn"]: aid for aid, a in before["accounts"].items()}
    group_id = {label: gid for gid, label in before["entitlements"].items()}
    groups_of: dict[str, set[str]] = {}
    for aid, gid in before["assignments"]:
        groups_of.setdefault(aid, set()).add(gid)
    expected: set[tuple[str, str, str]] = set()
    eng, sales = f"ou=engineering,ou=people,{S}", f"ou=sales,ou=people,{S}"

    # 1. two people leave: deleted (refint takes them out of their groups)
    for dn in (f"uid=u00011,{eng}", f"uid=u00014,{sales}"):
        aid = uuid_of[dn]
        assert c.delete(dn), c.result
        expected.add(("account", "removed", aid))
        expected |= {("assignment", "removed", f"{aid} -> {gid}") for gid in groups_of[aid]}
    _wait(lambda: f"uid=u00011,{eng}".lower() not in _members(c, f"cn=all-staff,ou=groups,{S}"), "refint delete")

    # 2. two are deactivated: locked by the password policy, and a shadow expiry in the past
    for dn, change in ((f"uid=u00022,{eng}", {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, ["000001010000Z"])]}),
                       (f"uid=u00023,{eng}", {"shadowExpire": [(ldap3.MODIFY_REPLACE, ["100"])]})):
        assert before["accounts"][uuid_of[dn]]["status"] == "ACTIVE"
        assert c.modify(dn, change), c.result
        expected.add(("account", "modified", uuid_of[dn]))

    # 3. one is renamed (modrdn: new uid, same entryUUID), one changes display name
    old = f"uid=u00021,{eng}"
    assert c.modify_dn(old, "uid=ada.renamed", delete_old_dn=True), c.result
    expected.add(("account", "modified", uuid_of[old]))
    _wait(lambda: f"uid=ada.renamed,{eng}".lower() in _members(c, f"cn=all-staff,ou=groups,{S}"), "refint rename")
    dn = f"uid=u00025,{sales}"
    assert c.modify(dn, {"displayName": [(ldap3.MODIFY_REPLACE, ["Renée Nouveau-Nom"])]}), c.result
    expected.add(("account", "modified", uuid_of[dn]))

    # 4. one moves between groups: out of project-006, into project-010
    dn = f"uid=u00031,{eng}"
    aid = uuid_of[dn]
    assert (aid, group_id["project-006"]) in before["assignments"]
    assert (aid, group_id["project-010"]) not in before["assignments"]
    assert c.modify(f"cn=project-006,ou=groups,{S}", {"member": [(ldap3.MODIFY_DELETE, [dn])]}), c.result
    assert c.modify(f"cn=project-010,ou=groups,{S}", {"member": [(ldap3.MODIFY_ADD, [dn])]}), c.result
    expected.add(("assignment", "removed", f"{aid} -> {group_id['project-006']}"))
    expected.add(("assignment", "added", f"{aid} -> {group_id['project-010']}"))

    # 5. one moves to another OU (same entryUUID, group memberships follow through refint)
    dn = f"uid=u00033,{eng}"
    assert c.modify_dn(dn, "uid=u00033", new_superior=sales), c.result
    expected.add(("account", "modified", uuid_of[dn]))
    _wait(lambda: f"uid=u00033,{sales}".lower() in _members(c, f"cn=all-staff,ou=groups,{S}"), "refint move")

    # 6. a new OU two levels down, and a group nested into another
    assert c.add(f"ou=interns,ou=platform,{eng}", ["organizationalUnit"], {"ou": "interns"}), c.result
    assert c.modify(f"cn=admins,ou=groups,{S}",
                    {"member": [(ldap3.MODIFY_ADD, [f"cn=project-001,ou=groups,{S}"])]}), c.result
    after = source_state(c, S)
    new_ou = next(rid for rid, r in after["resources"].items() if r["label"] == "interns")
    platform = next(rid for rid, r in after["resources"].items() if r["label"] == "platform")
    assert after["resources"][new_ou]["parent_resource_id"] == platform
    expected.add(("resource", "added", f"ou:{new_ou}"))
    expected.add(("nested_entitlement", "added", f"{group_id['project-001']} -> {group_id['admins']}"))
    return expected


class TestTwoDays:
    def test_day_two_shows_exactly_the_directory_changes(self, tmp_path, database_url, small_directory, monkeypatch):
        monkeypatch.setenv(ENV, SECRET)
        cfg = write_config(tmp_path, small_directory.port)

        day1 = cli(cfg, database_url, "run", NAME)
        assert day1.exit_code == 0, output(day1)
        snap1 = last_snapshot(database_url)
        assert snap1["status"] == "succeeded"
        assert snap1["stats"]["account"]["fetched"] == 300 and snap1["stats"]["account"]["invalid"] == 0
        assert_views_match(database_url, small_directory)
        day_one_accounts = query(database_url, "SELECT * FROM ingest.accounts_at(%s) ORDER BY account_id",
                                 snap1["snapshot_id"])
        assert len(day_one_accounts) == 300

        expected = change_the_directory(small_directory)

        day2 = cli(cfg, database_url, "run", NAME)
        assert day2.exit_code == 0, output(day2)
        snap2 = last_snapshot(database_url)
        assert snap2["status"] == "succeeded" and snap2["snapshot_id"] != snap1["snapshot_id"]
        assert_views_match(database_url, small_directory)

        changes = query(database_url, "SELECT entity, change, key FROM ingest.changes WHERE snapshot_id = %s",
                        snap2["snapshot_id"])
        assert {(c["entity"], c["change"], c["key"]) for c in changes} == expected
        assert len(changes) == len(expected)

        renamed = query(database_url, "SELECT * FROM ingest.accounts WHERE connector = %s AND username = %s",
                        NAME, "ada.renamed")[0]
        was = next(a for a in day_one_accounts if a["account_id"] == renamed["account_id"])
        assert was["username"] == "u00021"  # same id, new name

        assert query(database_url, "SELECT * FROM ingest.accounts_at(%s) ORDER BY account_id",
                     snap1["snapshot_id"]) == day_one_accounts

        day3 = cli(cfg, database_url, "run", NAME)  # nothing changed since: nothing to record
        assert day3.exit_code == 0, output(day3)
        snap3 = last_snapshot(database_url)
        assert query(database_url, "SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = %s",
                     snap3["snapshot_id"])[0]["n"] == 0


class TestSecrets:
    def test_the_bind_password_never_leaks(self, tmp_path, database_url, small_directory, monkeypatch):
        monkeypatch.setenv(ENV, SECRET)
        cfg = write_config(tmp_path, small_directory.port)
        texts: list[str] = []
        with structlog.testing.capture_logs() as logs:
            for args in (("check", NAME), ("run", NAME)):
                result = cli(cfg, database_url, *args)
                assert result.exit_code == 0, output(result)
                texts.append(output(result))
            # failures: a wrong password, and a server that is gone, report errors without the secret
            monkeypatch.setenv(ENV, SECRET + "-wrong")
            for args in (("check", NAME), ("run", NAME)):
                result = cli(cfg, database_url, *args)
                assert result.exit_code == 1
                texts.append(output(result))
                texts.append(repr(result.exception))
            monkeypatch.setenv(ENV, SECRET)
            small_directory.stop()
            result = cli(cfg, database_url, "run", NAME)
            assert result.exit_code == 1
            texts.append(output(result))
        texts.append(json.dumps(logs, default=str))
        assert "invalidCredentials" in " ".join(texts)
        for text in texts:
            assert SECRET not in text

        snaps = query(database_url, "SELECT status, error FROM ingest.snapshots ORDER BY snapshot_id")
        assert [s["status"] for s in snaps] == ["succeeded", "failed", "failed"]
        assert "invalidCredentials" in snaps[1]["error"] and "cannot connect" in snaps[2]["error"]

        tables = query(database_url, "SELECT table_schema, table_name FROM information_schema.tables "
                                     "WHERE table_schema IN ('ingest', 'ingest_stage', 'public') "
                                     "AND table_type = 'BASE TABLE'")
        assert tables
        for t in tables:
            rows = query(database_url, f'SELECT t::text AS row FROM "{t["table_schema"]}"."{t["table_name"]}" t')
            for r in rows:
                assert SECRET not in r["row"], f"password found in {t['table_schema']}.{t['table_name']}"


def test_cli_ingests_the_3000_user_organisation(tmp_path, database_url, directory: Directory, monkeypatch, capsys):
    monkeypatch.setenv(ENV, READER_PASSWORD)
    cfg = write_config(tmp_path, directory.server.port, page_size=500)
    started = time.perf_counter()
    result = cli(cfg, database_url, "run", NAME)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, output(result)
    stats = last_snapshot(database_url)["stats"]
    total = sum(stats[e]["fetched"] for e in ("account", "resource", "entitlement", "assignment",
                                              "nested_entitlement"))
    assert stats["account"]["fetched"] == 3000 and stats["assignment"]["fetched"] == 6343
    with capsys.disabled():
        print(f"\n[ldap e2e] {total} records through the CLI into PostgreSQL in {elapsed:.2f} s "
              f"= {total / elapsed:,.0f} records/s")
