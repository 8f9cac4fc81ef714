"""Fixtures of the LDAP tests: one real slapd per session holding both test organisations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

import ldap3
import pytest

from connectors.ldap import LdapAuth, LdapConnector, LdapSettings
from ingest.connector import ConnectorContext
from tests.servers.ldap_data import (
    AD_READER_DN,
    AD_SUFFIX,
    OPENLDAP_SUFFIX,
    READER_DN,
    OrgSummary,
    ad_org,
    openldap_org,
)
from tests.servers.slapd import ROOT_PASSWORD, Database, Slapd

READER_PASSWORD = "reader-password"


@dataclass
class Directory:
    server: Slapd
    openldap: OrgSummary
    ad: OrgSummary

    def settings(self, mode: str = "openldap", **kw) -> LdapSettings:
        base = OPENLDAP_SUFFIX if mode == "openldap" else AD_SUFFIX
        values = {"host": "127.0.0.1", "port": self.server.port, "base_dn": base, "mode": mode,
                  "allow_plaintext": True,  # this slapd has no certificate; TLS is tested in test_tls.py
                  "max_retries": 2, "backoff_initial": 0, "backoff_max": 0, **kw}
        return LdapSettings(**values)

    def connector(self, mode: str = "openldap", *, bind_dn: str | None = None, password: str = READER_PASSWORD,
                  **kw) -> LdapConnector:
        bind = bind_dn or (READER_DN if mode == "openldap" else AD_READER_DN)
        ctx = ConnectorContext("dir", self.settings(mode, **kw), LdapAuth(bind_dn=bind, password=password))
        return LdapConnector(ctx)

    def root(self, suffix: str = OPENLDAP_SUFFIX) -> ldap3.Connection:
        """An independent view of the directory: the rootdn, which no size limit applies to."""
        return ldap3.Connection(self.server.url, self.server.rootdn(suffix), ROOT_PASSWORD, auto_bind=True,
                                auto_range=False)


@pytest.fixture(scope="session")
def directory(tmp_path_factory) -> Directory:
    ol_ldif, ol = openldap_org()
    ad_ldif, ad = ad_org()
    server = Slapd(tmp_path_factory.mktemp("slapd"),
                   [Database(OPENLDAP_SUFFIX, ol_ldif), Database(AD_SUFFIX, ad_ldif)], size_limit=500)
    server.start()
    try:
        yield Directory(server, ol, ad)
    finally:
        server.stop()


def collect(connector: LdapConnector) -> dict[str, list[dict]]:
    """Every record of every stream, by entity."""
    out: dict[str, list[dict]] = {"account": [], "resource": [], "entitlement": [], "assignment": [],
                                  "nested_entitlement": []}
    for capability, records in connector.streams():
        for r in records:
            if capability == "list_accounts":
                out["account"].append(r)
            elif capability == "list_resources":
                out["resource"].append(r)
            elif capability == "list_entitlements":
                out["entitlement"].append(r)
            elif "member_entitlement_id" in r:
                out["nested_entitlement"].append(r)
            else:
                out["assignment"].append(r)
    return out


def source_state(conn: ldap3.Connection, suffix: str, today=None) -> dict:
    """What the directory holds, in the shape of the ingest views, read with ``conn`` (the rootdn)
    in one unpaged search per kind, without the connector's code."""
    from datetime import date, datetime

    today = today or datetime.now(UTC).date()

    def search(filt: str, attrs: list[str]) -> list[tuple[str, dict]]:
        conn.search(suffix, filt, attributes=attrs)
        assert conn.result["description"] == "success", conn.result
        return [(e["dn"], e["raw_attributes"]) for e in conn.response]

    def one(raw: dict, name: str):
        return raw[name][0].decode() if raw.get(name) else None

    people = search("(|(objectClass=person)(objectClass=posixAccount))",
                    ["entryUUID", "uid", "mail", "displayName", "cn", "givenName", "sn", "pwdAccountLockedTime",
                     "shadowExpire"])
    accounts, by_dn, by_uid = {}, {}, {}
    for dn, raw in people:
        aid = one(raw, "entryUUID")
        expire = one(raw, "shadowExpire")
        suspended = bool(raw.get("pwdAccountLockedTime")) or (
            expire is not None and int(expire) >= 0 and (today - date(1970, 1, 1)).days >= int(expire))
        accounts[aid] = {"username": one(raw, "uid"), "email": one(raw, "mail"),
                         "display_name": one(raw, "displayName") or one(raw, "cn"),
                         "given_name": one(raw, "givenName"), "family_name": one(raw, "sn"),
                         "status": "SUSPENDED" if suspended else "ACTIVE", "dn": dn}
        by_dn[dn.lower()] = aid
        by_uid[one(raw, "uid")] = aid
    groups_raw = search("(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
                        ["entryUUID", "cn", "member", "uniqueMember", "memberUid"])
    groups = {dn.lower(): one(raw, "entryUUID") for dn, raw in groups_raw}
    assignments, nested = set(), set()
    for dn, raw in groups_raw:
        gid = groups[dn.lower()]
        for v in raw.get("member", []) + raw.get("uniqueMember", []):
            key = v.decode().lower()
            if key in by_dn:
                assignments.add((by_dn[key], gid))
            elif key in groups:
                nested.add((gid, groups[key]))
        for v in raw.get("memberUid", []):
            if v.decode() in by_uid:
                assignments.add((by_uid[v.decode()], gid))
    ous_raw = search("(objectClass=organizationalUnit)", ["entryUUID", "ou"])
    ou_ids = {dn.lower(): one(raw, "entryUUID") for dn, raw in ous_raw}
    resources = {}
    for dn, raw in ous_raw:
        parent = dn.lower().split(",", 1)[1]
        resources[one(raw, "entryUUID")] = {"label": one(raw, "ou"), "parent_resource_id": ou_ids.get(parent)}
    return {
        "accounts": accounts,
        "entitlements": {one(raw, "entryUUID"): one(raw, "cn") for _, raw in groups_raw},
        "resources": resources,
        "assignments": assignments,
        "nested": nested,
    }
