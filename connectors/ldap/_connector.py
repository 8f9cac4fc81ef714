"""The LDAP connector: OpenLDAP and Active Directory people, groups, OUs and memberships.

Streams:

* ``list_accounts`` — entries matching ``user_filter`` under ``user_search_base``;
* ``list_resources`` — organizational units (type ``ou``), each pointing at the
  nearest enclosing OU through ``parent_resource_*``;
* ``list_entitlements`` — groups (type ``group``, global);
* ``find_entitlement_associations`` — group members: a member DN that is an
  account becomes an Assignment, one that is a group a NestedEntitlement;
  ``memberUid`` values of posixGroups resolve to accounts by ``uid``.

Ids are ``entryUUID`` (OpenLDAP) or ``objectGUID`` (AD), never DNs. Members are
DNs, so resolving them needs DN -> id maps of accounts and groups. They are
built while ``list_accounts`` and ``list_entitlements`` stream (or by an
id-only search when associations are asked for alone) and hold one
normalized DN string and one id string per entry: about 200 bytes each, so
~20 MB per 100,000 accounts and groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from connectors.ldap._client import LdapClient
from connectors.ldap._mapping import (
    MEMBER_ATTRIBUTES,
    Dialect,
    account_record,
    entry_id,
    first,
    group_record,
    member_dn,
    member_uids,
    normalize_dn,
    ou_record,
    parent_dn,
    primary_group_sid,
    sid_to_str,
)
from connectors.ldap._settings import (
    DEFAULT_ID_ATTRIBUTE,
    DEFAULT_USERNAME_ATTRIBUTE,
    LdapAuth,
    LdapSettings,
)
from ingest.connector import Connector, ConnectorContext, EntitlementType, ResourceType
from ingest.errors import NotFoundError
from ingest.redact import register_secret

__all__ = ["LdapConnector"]

log = structlog.get_logger("ingest.ldap")

_ACCOUNT_ATTRIBUTES = {
    "openldap": ["pwdAccountLockedTime", "nsAccountLock", "shadowExpire", "uidNumber", "pwdLastSuccess",
                 "authTimestamp"],
    "active_directory": ["userAccountControl", "userPrincipalName", "lastLogonTimestamp", "servicePrincipalName"],
}
_ROOT_DSE_ATTRIBUTES = ["namingContexts", "defaultNamingContext", "supportedControl", "supportedLDAPVersion",
                        "vendorName", "vendorVersion", "dnsHostName"]
_SAMPLE = 5


class LdapConnector(Connector):
    type = "ldap"
    name = "LDAP"
    description = ("OpenLDAP and Active Directory over LDAP(S): people, groups (nested groups, posixGroup, "
                   "groupOfUniqueNames), organizational units and memberships, with paged results and AD "
                   "ranged retrieval.")
    Settings = LdapSettings
    Auth = LdapAuth
    resource_types = [ResourceType(type_id="ou", type_label="Organizational unit")]
    entitlement_types = [EntitlementType(type_id="group", type_label="Group")]

    settings: LdapSettings
    auth: LdapAuth

    def __init__(self, ctx: ConnectorContext, client: LdapClient | None = None) -> None:
        super().__init__(ctx)
        register_secret(self.auth.password.get_secret_value())
        s = self.settings
        self.dialect = Dialect(
            mode=s.mode,
            id_attribute=s.id_attribute or DEFAULT_ID_ATTRIBUTE[s.mode],
            username_attribute=s.username_attribute or DEFAULT_USERNAME_ATTRIBUTE[s.mode],
            custom_attributes=tuple(s.custom_attributes),
        )
        self.client = client or LdapClient(s, self.auth, connector=ctx.name, stats=ctx.stats)
        self._accounts_by_dn: dict[str, str] | None = None
        self._accounts_by_uid: dict[str, str] | None = None
        self._groups_by_dn: dict[str, str] | None = None

    def close(self) -> None:
        self.client.close()

    # -- check -------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        """Bind, read the root DSE, and make sure every configured search base exists."""
        s = self.settings
        root = self.client.read("", _ROOT_DSE_ATTRIBUTES) or {}
        contexts = [v.decode("utf-8", "replace") for v in root.get("namingcontexts", [])]
        bases = {"base_dn": s.base_dn, "user_search_base": s.user_search_base,
                 "group_search_base": s.group_search_base, "ou_search_base": s.ou_search_base}
        for setting, dn in bases.items():
            if not dn:
                continue
            try:
                self.client.read(dn, ["objectClass"])
            except NotFoundError as e:
                known = f" (the server holds: {', '.join(contexts)})" if contexts else ""
                raise NotFoundError(f"{setting} {dn!r} does not exist on {s.url}{known}",
                                    connector=self.ctx.name, request=e.request) from None
        controls = {v.decode() for v in root.get("supportedcontrol", [])}
        return {
            "server": s.url,
            "mode": s.mode,
            "bound_as": self.auth.bind_dn,
            "vendor": " ".join(filter(None, (first(root, "vendorName"), first(root, "vendorVersion")))) or None,
            "naming_contexts": contexts,
            "default_naming_context": first(root, "defaultNamingContext"),
            "dns_host_name": first(root, "dnsHostName"),
            "base_dn": s.base_dn,
            "paged_results": "1.2.840.113556.1.4.319" in controls if controls else None,
        }

    # -- accounts ----------------------------------------------------------------
    def _account_attributes(self) -> list[str]:
        d = self.dialect
        names = [d.id_attribute, "objectClass", "uid", d.username_attribute, "mail", "cn", "displayName",
                 "givenName", "sn", *_ACCOUNT_ATTRIBUTES[d.mode], *d.custom_attributes]
        return list(dict.fromkeys(names))

    def _account_entries(self, attributes: list[str]) -> Iterator[tuple[str, dict, bool]]:
        s = self.settings
        base, filt = s.base_for("user"), s.filter_for("user")
        if not s.disabled_filter:
            for dn, attrs in self.client.paged_search(base, filt, attributes, stream="list_accounts"):
                yield dn, attrs, False
            return
        for disabled, f in ((True, f"(&{filt}{s.disabled_filter})"), (False, f"(&{filt}(!{s.disabled_filter}))")):
            for dn, attrs in self.client.paged_search(base, f, attributes, stream="list_accounts"):
                yield dn, attrs, disabled

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        today = datetime.now(UTC).date()
        by_dn: dict[str, str] = {}
        by_uid: dict[str, str] = {}
        for dn, attrs, disabled in self._account_entries(self._account_attributes()):
            record = account_record(dn, attrs, self.dialect, disabled=disabled, today=today)
            _remember(by_dn, by_uid, dn, attrs, record["account_id"])
            yield record
        self._accounts_by_dn, self._accounts_by_uid = by_dn, by_uid

    def _account_maps(self) -> tuple[dict[str, str], dict[str, str]]:
        if self._accounts_by_dn is None or self._accounts_by_uid is None:
            by_dn: dict[str, str] = {}
            by_uid: dict[str, str] = {}
            s = self.settings
            for dn, attrs in self.client.paged_search(s.base_for("user"), s.filter_for("user"),
                                                      [self.dialect.id_attribute, "uid"], stream="account_ids"):
                _remember(by_dn, by_uid, dn, attrs, entry_id(attrs, self.dialect))
            self._accounts_by_dn, self._accounts_by_uid = by_dn, by_uid
        return self._accounts_by_dn, self._accounts_by_uid

    # -- organizational units ------------------------------------------------------
    def list_resources(self) -> Iterator[dict[str, Any]]:
        s, d = self.settings, self.dialect
        base = s.base_for("ou")
        ids: dict[str, str] = {}
        for dn, attrs in self.client.paged_search(base, s.ou_filter, [d.id_attribute], stream="ou_ids"):
            ou_id = entry_id(attrs, d)
            if ou_id:
                ids[normalize_dn(dn)] = ou_id
        for dn, attrs in self.client.paged_search(base, s.ou_filter, [d.id_attribute, "ou", "name", "description"],
                                                  stream="list_resources"):
            parent_id = None
            up = parent_dn(dn)
            while up and parent_id is None:
                parent_id = ids.get(normalize_dn(up))
                up = parent_dn(up)
            yield ou_record(dn, attrs, d, parent_id)

    # -- groups ----------------------------------------------------------------------
    def _group_attributes(self) -> list[str]:
        extra = ["sAMAccountName", "groupType"] if self.dialect.ad else ["gidNumber"]
        return [self.dialect.id_attribute, "objectClass", "cn", "description", *extra]

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        s = self.settings
        by_dn: dict[str, str] = {}
        for dn, attrs in self.client.paged_search(s.base_for("group"), s.filter_for("group"),
                                                  self._group_attributes(), stream="list_entitlements"):
            record = group_record(dn, attrs, self.dialect)
            if record["entitlement_id"]:
                by_dn[normalize_dn(dn)] = record["entitlement_id"]
            yield record
        self._groups_by_dn = by_dn

    def _group_map(self) -> dict[str, str]:
        if self._groups_by_dn is None:
            s = self.settings
            by_dn: dict[str, str] = {}
            for dn, attrs in self.client.paged_search(s.base_for("group"), s.filter_for("group"),
                                                      [self.dialect.id_attribute], stream="group_ids"):
                gid = entry_id(attrs, self.dialect)
                if gid:
                    by_dn[normalize_dn(dn)] = gid
            self._groups_by_dn = by_dn
        return self._groups_by_dn

    # -- memberships -------------------------------------------------------------------
    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        s, d = self.settings, self.dialect
        accounts, by_uid = self._account_maps()
        groups = self._group_map()
        counts = {"assignments": 0, "nested": 0, "unresolved": 0}
        samples: list[str] = []
        attributes = [d.id_attribute, *MEMBER_ATTRIBUTES, "memberUid"]
        primary = d.ad and s.primary_group_membership
        group_by_sid: dict[str, str] = {}  # AD: group SID -> id, for primary groups
        if primary:
            attributes.append("objectSid")
        for dn, attrs in self.client.paged_search(s.base_for("group"), s.filter_for("group"), attributes,
                                                  page_size=min(s.membership_page_size, s.page_size),
                                                  stream="find_entitlement_associations"):
            group_id = entry_id(attrs, d)
            if not group_id:
                continue  # counted invalid by list_entitlements
            if primary and attrs.get("objectsid"):
                try:
                    group_by_sid[sid_to_str(attrs["objectsid"][0])] = group_id
                except ValueError:
                    pass
            seen_accounts: set[str] = set()
            seen_groups: set[str] = set()
            for attribute in MEMBER_ATTRIBUTES:
                for value in self.client.attribute_values(dn, attrs, attribute):
                    member = member_dn(value, attribute)
                    key = normalize_dn(member)
                    account_id = accounts.get(key)
                    if account_id is not None:
                        if account_id not in seen_accounts:
                            seen_accounts.add(account_id)
                            counts["assignments"] += 1
                            yield _assignment(account_id, group_id)
                        continue
                    member_group = groups.get(key)
                    if member_group is not None:
                        if member_group not in seen_groups:
                            seen_groups.add(member_group)
                            counts["nested"] += 1
                            yield {"entitlement_id": group_id, "member_entitlement_id": member_group}
                        continue
                    counts["unresolved"] += 1
                    if len(samples) < _SAMPLE:
                        samples.append(member)
            for uid in member_uids(attrs):
                account_id = by_uid.get(uid)
                if account_id is None:
                    counts["unresolved"] += 1
                    if len(samples) < _SAMPLE:
                        samples.append(f"memberUid={uid}")
                elif account_id not in seen_accounts:
                    seen_accounts.add(account_id)
                    counts["assignments"] += 1
                    yield _assignment(account_id, group_id)
        if primary and group_by_sid:
            yield from self._primary_group_assignments(group_by_sid, counts)
        if counts["unresolved"]:
            log.warning("ldap_unresolved_members", connector=self.ctx.name, count=counts["unresolved"],
                        examples=samples,
                        hint="members outside the user/group search bases or filters, or deleted entries")
        log.info("ldap_memberships_resolved", connector=self.ctx.name, **counts)

    def _primary_group_assignments(self, group_by_sid: dict[str, str], counts: dict[str, int]) -> Iterator[dict]:
        """AD users' primary groups (``primaryGroupID`` is a RID in the user's own domain)."""
        s, d = self.settings, self.dialect
        filt = f"(&{s.filter_for('user')}(primaryGroupID=*))"
        for _, attrs in self.client.paged_search(s.base_for("user"), filt, [d.id_attribute, "objectSid",
                                                                             "primaryGroupID"],
                                                 stream="primary_groups"):
            account_id, sid = entry_id(attrs, d), primary_group_sid(attrs)
            group_id = group_by_sid.get(sid) if sid else None
            if account_id and group_id:
                counts["assignments"] += 1
                yield _assignment(account_id, group_id)

    def list_custom_attributes_schema(self) -> Iterator[dict[str, Any]]:
        for name in self.dialect.custom_attributes:
            yield {"name": name, "type": "string", "description": f"LDAP attribute {name}"}


def _remember(by_dn: dict[str, str], by_uid: dict[str, str], dn: str, attrs: dict, account_id: str | None) -> None:
    if not account_id:
        return
    by_dn[normalize_dn(dn)] = account_id
    uid = first(attrs, "uid")
    if uid is not None:
        by_uid.setdefault(uid, account_id)


def _assignment(account_id: str, group_id: str) -> dict[str, str]:
    return {"account_id": account_id, "entitlement_id": group_id, "resource_type": "", "resource_id": ""}
