"""Active Directory ranged retrieval of big ``member`` attributes.

slapd never splits an attribute into ranges, so these tests run the connector
against ldap3's MOCK_SYNC server with its search answering the way AD does
with the default MaxValRange of 1,500: a plain ``member`` request on a group
with more values returns ``member;range=0-1499``; ``member;range=1500-*``
returns the next 1,500 as ``member;range=1500-2999``, and the last slice as
``member;range=3000-*``.
"""

from __future__ import annotations

import re
import uuid

import ldap3
import pytest

from connectors.ldap import LdapAuth, LdapClient, LdapConnector, LdapSettings
from ingest.connector import ConnectorContext
from ingest.errors import ProtocolError

SUFFIX = "DC=corp,DC=example,DC=com"
READER = f"CN=reader,{SUFFIX}"
PASSWORD = "mock-reader-password"
MAX_VAL_RANGE = 1500
_RANGE = re.compile(r"^(?P<attr>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.I)


def _guid(name: str) -> bytes:
    return uuid.uuid5(uuid.NAMESPACE_DNS, name).bytes_le


class AdRanges:
    """Wraps a mock strategy's search so multi-valued attributes come back in AD's ranges."""

    def __init__(self, strategy, max_values: int = MAX_VAL_RANGE, stop_after: int | None = None) -> None:
        self.inner = strategy._execute_search
        self.max = max_values
        self.stop_after = stop_after  # misbehave: drop the range tag once this many values were sent
        self.requests: list[list[str]] = []
        strategy._execute_search = self

    def __call__(self, request):
        asked = [str(a) for a in request["attributes"]]
        self.requests.append(asked)
        ranges: dict[str, tuple[int, int | None]] = {}
        plain = []
        for a in asked:
            m = _RANGE.match(a)
            if m:
                ranges[m["attr"].lower()] = (int(m["low"]), None if m["high"] == "*" else int(m["high"]))
                plain.append(m["attr"])
            else:
                plain.append(a)
        request = dict(request, attributes=plain)
        responses, result = self.inner(request)
        for resp in responses:
            for attr in resp["attributes"]:
                name = attr["type"]
                vals = list(attr["vals"])
                low, high = ranges.get(name.lower(), (0, None))
                if name.lower() not in ranges and len(vals) <= self.max:
                    continue
                end = len(vals) if high is None else min(len(vals), high + 1)
                end = min(end, low + self.max)
                attr["vals"] = vals[low:end]
                if self.stop_after is not None and low >= self.stop_after:
                    continue  # a broken server: values without the range tag
                attr["type"] = f"{name};range={low}-{'*' if end >= len(vals) else end - 1}"
        return responses, result


def _mock_directory(n_members: int) -> ldap3.Connection:
    server = ldap3.Server("mock-ad", get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=READER, password=PASSWORD, client_strategy=ldap3.MOCK_SYNC,
                            auto_range=False, return_empty_attributes=False)
    add = conn.strategy.add_entry
    add(READER, {"objectClass": ["top", "person"], "cn": "reader", "userPassword": PASSWORD})
    members = []
    for i in range(n_members):
        dn = f"CN=User {i},OU=Staff,{SUFFIX}"
        add(dn, {"objectClass": ["top", "person", "organizationalPerson", "user"], "cn": f"User {i}",
                 "sAMAccountName": f"user{i}", "userAccountControl": "512", "objectGUID": _guid(dn)})
        members.append(dn)
    small = f"CN=Small,OU=Groups,{SUFFIX}"
    add(small, {"objectClass": ["top", "group"], "cn": "Small", "objectGUID": _guid(small),
                "member": members[:3]})
    big = f"CN=Big,OU=Groups,{SUFFIX}"
    add(big, {"objectClass": ["top", "group"], "cn": "Big", "objectGUID": _guid(big),
              "member": members + [small]})
    return conn


def _connector(conn: ldap3.Connection) -> LdapConnector:
    settings = LdapSettings(host="mock-ad", base_dn=SUFFIX, mode="active_directory", max_retries=0, allow_plaintext=True,
                            user_filter="(objectClass=user)")
    auth = LdapAuth(bind_dn=READER, password=PASSWORD)
    ctx = ConnectorContext("ad", settings, auth)
    return LdapConnector(ctx, client=LdapClient(settings, auth, connector="ad", connection_factory=lambda: conn))


class TestRangedMembers:
    def test_all_members_of_a_group_bigger_than_two_ranges_are_read(self):
        conn = _mock_directory(3200)
        ranges = AdRanges(conn.strategy)
        with _connector(conn) as connector:
            accounts = list(connector.list_accounts())
            groups = list(connector.list_entitlements())
            links = list(connector.find_entitlement_associations())
        ids = {g["label"]: g["entitlement_id"] for g in groups}
        big = [r for r in links if r["entitlement_id"] == ids["Big"] and "account_id" in r]
        assert len(accounts) == 3200
        assert {r["account_id"] for r in big} == {a["account_id"] for a in accounts}
        assert {"entitlement_id": ids["Big"], "member_entitlement_id": ids["Small"]} in links
        followed = [a for asked in ranges.requests for a in asked if ";range=" in a]
        assert followed == ["member;range=1500-*", "member;range=3000-*"]

    def test_a_group_within_one_range_needs_no_extra_request(self):
        conn = _mock_directory(40)
        ranges = AdRanges(conn.strategy)
        with _connector(conn) as connector:
            list(connector.list_accounts())
            list(connector.list_entitlements())
            links = list(connector.find_entitlement_associations())
        assert sum(1 for r in links if "account_id" in r) == 40 + 3
        assert not [a for asked in ranges.requests for a in asked if ";range=" in a]

    def test_a_server_that_stops_tagging_ranges_is_a_protocol_error_not_a_short_list(self):
        conn = _mock_directory(3200)
        AdRanges(conn.strategy, stop_after=1500)
        with _connector(conn) as connector:
            list(connector.list_accounts())
            list(connector.list_entitlements())
            with pytest.raises(ProtocolError, match="ranged retrieval of member"):
                list(connector.find_entitlement_associations())


class TestPagingLoop:
    def test_a_server_repeating_its_cookie_is_a_pagination_loop_not_an_endless_run(self):
        from ingest.errors import PaginationLoopError

        conn = _mock_directory(30)
        original = conn.search

        def stuck_search(*args, **kw):  # every page answers with the same cookie (and the same entries)
            if kw.get("paged_cookie") == b"same":
                kw["paged_cookie"] = None
            ok = original(*args, **kw)
            if kw.get("paged_size"):
                conn.result["controls"] = {"1.2.840.113556.1.4.319": {"value": {"size": 0, "cookie": b"same"}}}
            return ok

        conn.search = stuck_search
        with _connector(conn) as connector, pytest.raises(PaginationLoopError, match="same paged-results cookie"):
            list(connector.list_accounts())
