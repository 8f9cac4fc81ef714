"""Fixtures of the LDAP tests: one real slapd per session holding both test organisations."""

from __future__ import annotations

from dataclasses import dataclass

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
