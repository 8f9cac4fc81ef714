"""People and access end to end through the CLI, against two real servers with overlapping people:
scim2-server as the identity provider (the authoritative source) and OpenLDAP slapd, holding an
Active-Directory-shaped tree over StartTLS, as an app.

Day 1: an e-mail match in another case, an employee-number match, an orphan, a person terminated in
the IdP but still active in the directory, a dormant account, service accounts (one on a person's
e-mail, one on nobody's), nested groups three deep with a cycle, "Domain Admins" reached only through
nesting. Day 2: someone is terminated and a new nesting edge makes three people admins. ``who`` and
``report`` are checked against the tables.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ldap3
import pytest

from tests.engine import cli, output, query
from tests.servers.ldap_data import AD_READER_DN, AD_SUFFIX, _entry, _guid, _ou, filetime, sid, ssha
from tests.servers.scim_server import CORE_GROUP, CORE_USER, ENTERPRISE, ScimServer, user_id
from tests.servers.slapd import ROOT_PASSWORD, Database, Slapd
from tests.test_people_cli import check_report

S = AD_SUFFIX
STAFF, GROUPS, SVC = f"ou=Staff,ou=Corp,{S}", f"ou=Groups,ou=Corp,{S}", f"ou=Service Accounts,ou=Corp,{S}"
READER_PASSWORD = "people-e2e-reader"
# what msuser.schema requires of every user and group (see tests/servers/ldap_data.ad_org)
MSTOP = [("instanceType", "4"), ("nTSecurityDescriptor", b"\x01\x00\x04\x80" + b"\x00" * 16)]
TOKEN = "people-e2e-scim-token"

# userName, primary e-mail, employee number, active in the IdP
IDP = [("ada", "Ada.Lovelace@Corp.Example", "E100", True),
       ("alan", "alan.turing@corp.example", "E101", True),
       ("grace", "grace.hopper@corp.example", "E102", True),
       ("linus", "linus@corp.example", "E103", False),
       ("barbara", "barbara@corp.example", "E104", True)]


def _user(cn: str, *, mail: str | None, emp: str | None = None, last_logon_days: float | None = 1.0,
          spn: str | None = None, ou: str = STAFF, rid: int = 0) -> str:
    dn = f"cn={cn},{ou}"
    attrs: list[tuple[str, str | bytes]] = [
        ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
        ("objectClass", "user"), ("objectClass", "securityPrincipal"), ("cn", cn), ("sn", cn),
        ("displayName", cn.title()), ("sAMAccountName", cn), ("userAccountControl", "512"),
        ("objectGUID", _guid(dn)), ("objectCategory", f"CN=Person,CN=Schema,CN=Configuration,{S}"), *MSTOP,
        ("objectSid", sid(rid)),
    ]
    if mail:
        attrs.append(("mail", mail))
    if emp:
        attrs.append(("employeeNumber", emp))
    if spn:
        attrs.append(("servicePrincipalName", spn))
    if last_logon_days is not None:
        attrs.append(("lastLogonTimestamp", str(filetime(int(time.time() - last_logon_days * 86400)))))
    return _entry(dn, attrs)


def _group(cn: str, members: list[str], rid: int) -> str:
    dn = f"cn={cn},{GROUPS}"
    return _entry(dn, [("objectClass", "top"), ("objectClass", "group"), ("objectClass", "securityPrincipal"),
                       ("cn", cn), ("sAMAccountName", cn), ("groupType", "-2147483646"), ("objectGUID", _guid(dn)),
                       ("objectCategory", f"CN=Group,CN=Schema,CN=Configuration,{S}"), *MSTOP,
                       ("objectSid", sid(rid)), *[("member", m) for m in members]])


def g(cn: str) -> str:
    return f"cn={cn},{GROUPS}"


def directory_ldif() -> str:
    out = [_entry(S, [("objectClass", "dcObject"), ("objectClass", "organization"), ("dc", "corp"), ("o", "Corp")])]
    for dn in (f"ou=Corp,{S}", STAFF, SVC, GROUPS, f"ou=system,{S}"):
        out.append(_ou(dn, guid=_guid(dn)))
    out.append(_entry(AD_READER_DN, [("objectClass", "applicationProcess"), ("objectClass", "simpleSecurityObject"),
                                     ("cn", "reader"), ("userPassword", ssha(READER_PASSWORD))]))
    out += [
        _user("ada", mail="ada.lovelace@corp.example", rid=1001),                 # e-mail, other case
        _user("aturing", mail="alan@old-domain.example", emp="E101", rid=1002),   # employee number only
        _user("grace", mail="grace.hopper@corp.example", rid=1003),
        _user("linus", mail="linus@corp.example", rid=1004),                      # terminated in the IdP
        _user("mallory", mail="mallory@contractor.example", rid=1005),            # nobody: orphan
        _user("barbara", mail="barbara@corp.example", last_logon_days=400, rid=1006),  # dormant
        _user("svc-backup", mail="alan.turing@corp.example", spn="backup/nas01", ou=SVC, rid=1100),
        _user("svc-ci", mail=None, spn="HTTP/ci01", ou=SVC, rid=1101),
    ]
    staff = f"cn={{}},{STAFF}"
    # Helpdesk -> IT Staff -> Server Operators -> Domain Admins, and Domain Admins -> Helpdesk closes a cycle
    out += [
        _group("Helpdesk", [staff.format("ada"), g("Domain Admins")], 1200),
        _group("IT Staff", [g("Helpdesk")], 1201),
        _group("Server Operators", [g("IT Staff")], 1202),
        _group("Domain Admins", [g("Server Operators")], 1203),
        _group("Engineering", [staff.format(u) for u in ("aturing", "grace", "linus")], 1204),
        _group("Backup", [f"cn=svc-backup,{SVC}", f"cn=svc-ci,{SVC}"], 1205),
    ]
    return "".join(out)


@pytest.fixture
def servers(tmp_path):
    scim = ScimServer(TOKEN).start()
    slapd = Slapd(tmp_path / "slapd", [Database(S, directory_ldif())], tls=True)
    try:
        slapd.start()
        with scim.client() as c:
            for name, mail, emp, active in IDP:
                r = c.post("/Users", json={
                    "schemas": [CORE_USER, ENTERPRISE], "userName": name, "displayName": name.title(),
                    "active": active, "emails": [{"value": mail, "type": "work", "primary": True}],
                    ENTERPRISE: {"employeeNumber": emp}})
                assert r.status_code == 201, r.text
            r = c.post("/Groups", json={"schemas": [CORE_GROUP], "displayName": "Everyone",
                                        "members": [{"value": user_id(n)} for n, *_ in IDP]})
            assert r.status_code == 201, r.text
        yield scim, slapd
    finally:
        slapd.stop()
        scim.stop()


def write_config(tmp_path: Path, scim: ScimServer, slapd: Slapd) -> Path:
    cfg = {
        "connectors": {
            "idp": {"type": "scim", "settings": {"base_url": scim.base_url, "page_size": 2},
                    "auth": {"bearer_token": TOKEN}},
            "ad": {"type": "ldap",
                   "settings": {"host": "127.0.0.1", "port": slapd.port, "start_tls": True,
                                "ca_file": str(slapd.ca_file), "mode": "active_directory", "base_dn": S,
                                "custom_attributes": ["employeeNumber"], "primary_group_membership": False,
                                "max_retries": 1, "backoff_initial": 0, "backoff_max": 0},
                   "auth": {"bind_dn": AD_READER_DN, "password": READER_PASSWORD}},
        },
        "identity": {"sources": ["idp"], "match": ["email", "employee_id"], "dormant_after_days": 90},
    }
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


def snapshot_ids(url: str) -> dict[str, int]:
    return {r["connector"]: r["snapshot_id"] for r in query(
        url, "SELECT DISTINCT ON (connector) connector, snapshot_id, status FROM ingest.snapshots "
             "WHERE status = 'succeeded' ORDER BY connector, snapshot_id DESC")}


def run_all(cfg: Path, url: str) -> dict[str, int]:
    for name in ("idp", "ad"):
        result = cli(cfg, url, "run", name)
        assert result.exit_code == 0, output(result)
    return snapshot_ids(url)


def findings(url: str, kind: str) -> dict[str, dict]:
    """Open findings of ``kind`` by the directory's sAMAccountName (username) of the account."""
    rows = query(url, "SELECT f.*, a.username, e.label FROM ingest.findings f "
                      "JOIN ingest.accounts a USING (connector, account_id) "
                      "LEFT JOIN ingest.entitlements e ON e.connector = f.connector "
                      "AND e.entitlement_id = f.entitlement_id WHERE f.kind = %s", kind)
    return {r["username"] + (f"/{r['label']}" if r["label"] else ""): r for r in rows}


def test_two_days_of_people_and_access_across_scim_and_ldap(servers, tmp_path, database_url):
    scim, slapd = servers
    cfg = write_config(tmp_path, scim, slapd)
    day1 = run_all(cfg, database_url)

    people = {r["employee_id"]: r for r in query(database_url, "SELECT * FROM ingest.identities")}
    assert {e: p["status"] for e, p in people.items()} == {
        "E100": "active", "E101": "active", "E102": "active", "E103": "terminated", "E104": "active"}
    assert all(p["source_connector"] == "idp" for p in people.values())
    links = {(r["connector"], r["username"]): (r["employee_id"], r["matched_by"]) for r in query(
        database_url, "SELECT ia.connector, a.username, i.employee_id, ia.matched_by FROM ingest.identity_accounts ia "
                      "JOIN ingest.identities i USING (identity_id) JOIN ingest.accounts a USING (connector, account_id)")}
    assert links == {
        ("idp", "ada"): ("E100", "rule"), ("idp", "alan"): ("E101", "rule"), ("idp", "grace"): ("E102", "rule"),
        ("idp", "linus"): ("E103", "rule"), ("idp", "barbara"): ("E104", "rule"),
        ("ad", "ada"): ("E100", "email"),            # Ada.Lovelace@Corp.Example = ada.lovelace@corp.example
        ("ad", "aturing"): ("E101", "employee_id"),  # different e-mail, same employee number
        ("ad", "grace"): ("E102", "email"), ("ad", "linus"): ("E103", "email"), ("ad", "barbara"): ("E104", "email"),
        ("ad", "svc-backup"): ("E101", "email"),     # a service account on Alan's address
    }

    assert set(findings(database_url, "orphan_account")) == {"mallory"}  # svc-ci: a service account, not an orphan
    assert set(findings(database_url, "leaver_with_access")) == {"linus"}
    assert set(findings(database_url, "dormant_account")) == {"barbara"}
    assert set(findings(database_url, "shared_service_account")) == {"svc-backup"}
    priv = findings(database_url, "privileged_access")
    assert set(priv) == {"ada/Domain Admins"}
    labels = {r["entitlement_id"]: r["label"] for r in query(
        database_url, "SELECT entitlement_id, label FROM ingest.entitlements WHERE connector = 'ad'")}
    assert [labels[x] for x in priv["ada/Domain Admins"]["detail"]["via"]] == ["Helpdesk", "IT Staff", "Server Operators"]
    assert findings(database_url, "new_privileged_grant") == {}
    # the cycle: Ada reaches each group of the loop once, by its shortest path
    ada = query(database_url, "SELECT x.* FROM ingest.effective_access x JOIN ingest.accounts a "
                              "USING (connector, account_id) WHERE a.connector = 'ad' AND a.username = 'ada'")
    assert sorted((labels[r["entitlement_id"]], r["depth"]) for r in ada) == [
        ("Domain Admins", 3), ("Helpdesk", 0), ("IT Staff", 1), ("Server Operators", 2)]

    # who: the person across both connectors, as the tables say
    result = cli(cfg, database_url, "who", "ada.lovelace@corp.example", "--json")
    assert result.exit_code == 0, output(result)
    who = json.loads(result.stdout)
    assert who["person"]["employee_id"] == "E100"
    assert {(a["connector"], a["username"]) for a in who["accounts"]} == {("idp", "ada"), ("ad", "ada")}
    assert {(g["connector"], g["entitlement_id"], g["depth"]) for g in who["access"]} == {
        (r["connector"], r["entitlement_id"], r["depth"]) for r in query(
            database_url, "SELECT x.* FROM ingest.effective_access x JOIN ingest.identity_accounts ia "
                          "USING (connector, account_id) WHERE ia.identity_id = %s", people["E100"]["identity_id"])}
    assert [(f["kind"], f["connector"]) for f in who["findings"]] == [("privileged_access", "ad")]

    # day 2: Grace leaves; Engineering joins IT Staff, so Alan, Grace and Linus reach Domain Admins
    with scim.client() as c:
        scim.patch(c, f"/Users/{user_id('grace')}", {"op": "replace", "path": "active", "value": False})
    conn = ldap3.Connection(slapd.url, slapd.rootdn(S), ROOT_PASSWORD, auto_bind=True)
    assert conn.modify(g("IT Staff"), {"member": [(ldap3.MODIFY_ADD, [g("Engineering")])]}), conn.result
    conn.unbind()
    day2 = run_all(cfg, database_url)

    assert query(database_url, "SELECT status FROM ingest.identities WHERE employee_id = 'E102'")[0]["status"] == \
        "terminated"
    leavers = findings(database_url, "leaver_with_access")
    assert {k: v["since"] for k, v in leavers.items()} == {"linus": day1["ad"], "grace": day2["idp"]}
    priv = findings(database_url, "privileged_access")
    assert {k: v["since"] for k, v in priv.items()} == {
        "ada/Domain Admins": day1["ad"], "aturing/Domain Admins": day2["ad"], "grace/Domain Admins": day2["ad"],
        "linus/Domain Admins": day2["ad"]}
    assert [labels[x] for x in priv["aturing/Domain Admins"]["detail"]["via"]] == \
        ["Engineering", "IT Staff", "Server Operators"]
    assert {k: v["since"] for k, v in findings(database_url, "new_privileged_grant").items()} == {
        "aturing/Domain Admins": day2["ad"], "grace/Domain Admins": day2["ad"], "linus/Domain Admins": day2["ad"]}
    assert set(findings(database_url, "orphan_account")) == {"mallory"}

    # the past is still there: day 1 as it was
    t1 = query(database_url, "SELECT finished_at FROM ingest.snapshots WHERE snapshot_id = %s", day1["ad"])[0]
    past = query(database_url, "SELECT employee_id, status FROM ingest.identities_at(%s)", t1["finished_at"])
    assert {r["employee_id"]: r["status"] for r in past}["E102"] == "active"

    def sa_query(sql: str, **params):
        import sqlalchemy as sa

        from ingest.db import get_engine

        with get_engine(database_url).connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.text(sql), params)]

    counts = check_report(sa_query, lambda *args: cli(cfg, database_url, *args), tmp_path)
    assert counts == {"orphan_account": 1, "leaver_with_access": 2, "dormant_account": 1, "privileged_access": 4,
                      "new_privileged_grant": 3, "shared_service_account": 1}
