"""The SCIM connector: pure mapping, provider quirks (a fake provider over httpx.MockTransport),
and a full read of a large organisation from a real SCIM 2.0 server (scim2-server)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from pydantic import ValidationError

from connectors.scim import (
    ENTERPRISE_USER,
    USER_IGNORED_FIELDS,
    LucidScimConnector,
    ProviderConfig,
    ScimAuth,
    ScimConnector,
    ScimSettings,
    list_response_resources,
    map_group,
    map_members,
    map_user,
    primary_email,
)
from ingest.connector import ConnectorContext
from ingest.errors import AuthError, NotFoundError, ProtocolError
from ingest.http import BearerTokenConfig
from ingest.records import Account, Assignment, CustomAttribute, Entitlement, NestedEntitlement
from ingest.registry import get_connector_class
from tests.servers.scim_server import ScimServer, group_id, load_org, make_org, source_state

TOKEN = "tok-unit-7f3a9c"
FAKE_BASE = "https://scim.example.test/scim/v2"


# -- helpers ------------------------------------------------------------------------------------------

@dataclass
class _Ctx(ConnectorContext):
    """A context whose HTTP client talks to a MockTransport (never the network)."""

    transport: httpx.BaseTransport | None = None

    def http_client(self, base_url: str, **kw: Any):
        return super().http_client(base_url, transport=self.transport, **kw)


def connector(transport: httpx.BaseTransport | None = None, cls: type[ScimConnector] = ScimConnector,
              auth: dict | None = None, **settings: Any) -> ScimConnector:
    settings = {"base_url": FAKE_BASE, "backoff_initial": 0.0, "max_retries": 1, **settings}
    return cls(_Ctx("unit", cls.Settings(**settings), cls.Auth(**(auth or {"bearer_token": TOKEN})),
                    transport=transport))


def drain(conn: ScimConnector) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for cap, records in conn.streams():
        out[cap] = list(records)
    return out


def user(i: int, **kw: Any) -> dict[str, Any]:
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "id": f"u{i}", "userName": f"user{i}",
            "emails": [{"value": f"user{i}@example.org", "primary": True}], "active": True, **kw}


class FakeProvider:
    """A SCIM provider with the quirks real ones have; every quirk off by default.

    omit_members_in_list / cap_members_in_list: what GET /Groups does to ``members``;
    ignore_count: pages have ``default_page`` items whatever ``count`` says (None: all);
    max_page: never more than this many items a page; ignore_start_index: always page one;
    total: "ok", "page" (totalResults = items on the page), "missing", "small" (3);
    spc: the ServiceProviderConfig document, or None for a 404.
    """

    def __init__(self, users: list[dict], groups: list[dict] | None = None, *, omit_members_in_list=False,
                 cap_members_in_list: int | None = None, ignore_count=False, default_page: int | None = 50,
                 max_page: int | None = None, ignore_start_index=False, total="ok",
                 honour_excluded=True, spc: dict | None = None) -> None:
        self.users, self.groups = users, groups or []
        self.omit_members_in_list, self.cap_members_in_list = omit_members_in_list, cap_members_in_list
        self.ignore_count, self.default_page, self.max_page = ignore_count, default_page, max_page
        self.ignore_start_index, self.total, self.honour_excluded = ignore_start_index, total, honour_excluded
        self.spc = spc if spc is not None else {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "filter": {"supported": True, "maxResults": 200}, "patch": {"supported": False},
        }
        self.no_spc = spc == {}
        self.requests: list[httpx.Request] = []

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def paths(self, prefix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.startswith("/scim/v2/" + prefix)]

    def _json(self, body: Any, status: int = 200) -> httpx.Response:
        return httpx.Response(status, content=json.dumps(body).encode(),
                              headers={"Content-Type": "application/scim+json"})

    def _list(self, items: list[dict], params: httpx.QueryParams) -> httpx.Response:
        start = 1 if self.ignore_start_index else max(1, int(params.get("startIndex", 1)))
        count = int(params.get("count", 100))
        if self.ignore_count:
            count = self.default_page if self.default_page is not None else len(items)
        if self.max_page is not None:
            count = min(count, self.max_page)
        page = items[start - 1:start - 1 + count]
        body: dict[str, Any] = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                                "startIndex": start, "itemsPerPage": len(page), "Resources": page}
        if self.total == "ok":
            body["totalResults"] = len(items)
        elif self.total == "page":
            body["totalResults"] = len(page)
        elif self.total == "small":
            body["totalResults"] = 3
        return self._json(body)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") not in (f"Bearer {TOKEN}",):
            return self._json({"status": "401", "detail": "bad token"}, 401)
        path = request.url.path.removeprefix("/scim/v2")
        if path == "/ServiceProviderConfig":
            return self._json({"status": "404"}, 404) if self.no_spc else self._json(self.spc)
        if path == "/Users":
            return self._list(self.users, request.url.params)
        if path == "/Groups":
            groups = []
            for g in self.groups:
                g = dict(g)
                if self.omit_members_in_list or (self.honour_excluded and
                                                 request.url.params.get("excludedAttributes") == "members"):
                    g.pop("members", None)
                elif self.cap_members_in_list is not None and "members" in g:
                    g["members"] = g["members"][:self.cap_members_in_list]
                groups.append(g)
            return self._list(groups, request.url.params)
        if path.startswith("/Groups/"):
            gid = unquote(path.removeprefix("/Groups/"))
            for g in self.groups:
                if g["id"] == gid:
                    return self._json(g)
            return self._json({"status": "404", "detail": "no such group"}, 404)
        return self._json({"status": "404"}, 404)


def org(n_users: int = 250, big: int = 1200) -> tuple[list[dict], list[dict]]:
    users = [user(i) for i in range(max(n_users, big))]
    groups = [
        {"id": "g-big", "displayName": "Everyone", "members": [{"value": u["id"], "type": "User"} for u in users[:big]]},
        {"id": "g-small", "displayName": "Small", "members": [{"value": "u1"}, {"value": "u2", "type": "User"}]},
        {"id": "g-parent", "displayName": "Parent", "members": [
            {"value": "g-small", "type": "Group"}, {"value": "g-empty"}, {"value": "u3"}]},
        {"id": "g-empty", "displayName": "Empty"},
    ]
    return users, groups


def expected_pairs(groups: list[dict]) -> tuple[set, set]:
    ids = {g["id"] for g in groups}
    assignments, nested = set(), set()
    for g in groups:
        for m in g.get("members", []):
            if m.get("type") == "Group" or m["value"] in ids:
                nested.add((g["id"], m["value"]))
            else:
                assignments.add((m["value"], g["id"]))
    return assignments, nested


def pairs(records: list[dict]) -> tuple[set, set]:
    assignments = {(r["account_id"], r["entitlement_id"]) for r in records if "account_id" in r}
    nested = {(r["entitlement_id"], r["member_entitlement_id"]) for r in records if "member_entitlement_id" in r}
    return assignments, nested


# -- mapping ------------------------------------------------------------------------------------------------

class TestPrimaryEmail:
    def test_primary_wins_wherever_it_is(self):
        assert primary_email([{"value": "h@x", "type": "home"}, {"value": "p@x", "primary": True}]) == "p@x"

    def test_primary_given_as_a_string_counts(self):
        assert primary_email([{"value": "a@x"}, {"value": "p@x", "primary": "true"}]) == "p@x"

    def test_first_work_address_without_a_primary(self):
        assert primary_email([{"value": "h@x", "type": "home"}, {"value": "w@x", "type": "Work"},
                              {"value": "w2@x", "type": "work"}]) == "w@x"

    def test_first_address_without_primary_or_work(self):
        assert primary_email([{"value": "h@x", "type": "home"}, {"value": "o@x", "type": "other"}]) == "h@x"

    def test_none_when_there_is_no_usable_address(self):
        assert primary_email(None) is None
        assert primary_email([]) is None
        assert primary_email([{"value": ""}, {"type": "work"}, "junk"]) is None


class TestMapUser:
    def test_maps_core_fields_and_the_enterprise_extension(self):
        raw = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_USER],
            "id": "2819c223", "externalId": "ext-1", "userName": "bjensen@example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen", "formatted": "Ms. Barbara J Jensen"},
            "displayName": "Babs Jensen", "title": "Tour Guide", "userType": "Employee", "active": True,
            "emails": [{"value": "babs@home", "type": "home"}, {"value": "bjensen@example.com", "type": "work"}],
            ENTERPRISE_USER: {"employeeNumber": "701984", "costCenter": "4130", "organization": "Universal Studios",
                              "division": "Theme Park", "department": "Tour Operations",
                              "manager": {"value": "26118915-6090", "displayName": "John Smith"}},
            "meta": {"resourceType": "User", "version": 'W/"3"', "location": "https://host/scim/v2/Users/2819c223"},
        }
        rec = map_user(raw)
        assert Account.model_validate(rec)
        assert rec["account_id"] == "2819c223"
        assert rec["username"] == "bjensen@example.com"
        assert rec["email"] == "bjensen@example.com"
        assert (rec["given_name"], rec["family_name"], rec["display_name"]) == ("Barbara", "Jensen", "Babs Jensen")
        assert rec["status"] == "ACTIVE"
        assert rec["custom_attributes"] == {
            "employeeNumber": "701984", "costCenter": "4130", "organization": "Universal Studios",
            "division": "Theme Park", "department": "Tour Operations", "manager": "26118915-6090",
            "title": "Tour Guide", "userType": "Employee", "externalId": "ext-1",
        }
        assert rec["extra"][ENTERPRISE_USER]["manager"]["displayName"] == "John Smith"
        assert rec["extra"]["meta"] == {"resourceType": "User"}, "location depends on the URL, version moves alone"

    def test_the_fields_the_users_stream_says_it_ignores_never_reach_the_record(self):
        """``USER_IGNORED_FIELDS`` lets a re-run stage a user that changed only there from the memo of the
        last run (ingest.memo): the record must be the same whatever they hold, or whether they are there."""
        base = {**user(1), "groups": [{"value": "g1"}],
                "meta": {"resourceType": "User", "created": "2026-01-01T00:00:00Z", "lastModified": "2026-01-02T00:00:00Z",
                         "version": 'W/"1"', "location": "https://a/Users/1"}}
        variants = [{**base, "groups": [{"value": "g2"}, {"value": "g3"}]}, {k: v for k, v in base.items() if k != "groups"},
                    {**base, "meta": {**base["meta"], "lastModified": "2026-12-03T00:00:00Z", "version": 'W/"9"',
                                      "location": "https://b/scim/v2/Users/1"}},
                    {**base, "meta": {"resourceType": "User", "created": "2026-01-01T00:00:00Z"}}]
        assert USER_IGNORED_FIELDS and all(f.split(".")[0] in base for f in USER_IGNORED_FIELDS)
        for v in variants:
            assert map_user(v) == map_user(base)
        # and a field that is not ignored does reach it
        assert map_user({**base, "meta": {**base["meta"], "created": "2025-01-01T00:00:00Z"}}) != map_user(base)

    def test_inactive_user_is_suspended(self):
        assert map_user(user(1, active=False))["status"] == "SUSPENDED"
        assert map_user(user(1, active="False"))["status"] == "SUSPENDED"

    def test_user_without_active_flag_is_active(self):
        raw = user(1)
        del raw["active"]
        assert map_user(raw)["status"] == "ACTIVE"

    def test_minimal_user_maps_to_a_valid_account_with_nulls(self):
        rec = map_user({"id": "x", "userName": "x"})
        acc = Account.model_validate(rec)
        assert acc.email is None and acc.display_name is None and acc.custom_attributes == {}

    def test_display_name_falls_back_to_formatted_name(self):
        assert map_user({"id": "x", "name": {"formatted": "Zoë Ødegård"}})["display_name"] == "Zoë Ødegård"

    def test_a_user_without_id_fails_validation_instead_of_vanishing(self):
        with pytest.raises(ValidationError):
            Account.model_validate(map_user({"userName": "ghost"}))
        with pytest.raises(ValidationError):
            Account.model_validate(map_user("not an object"))


class TestMapGroup:
    def test_group_is_a_global_group_entitlement_without_members_or_volatile_meta(self):
        raw = {"id": "e9e30dba", "displayName": "Tour Guides", "members": [{"value": "u1"}],
               "meta": {"resourceType": "Group", "created": "2010-01-23T04:56:22Z",
                        "lastModified": "2011-05-13T04:42:34Z", "version": 'W/"3694e05e9dff592"',
                        "location": "https://x/Groups/e9e30dba"}}
        rec = map_group(raw)
        ent = Entitlement.model_validate(rec)
        assert (ent.entitlement_type, ent.resource_type, ent.resource_id) == ("group", "", "")
        assert (ent.entitlement_id, ent.label) == ("e9e30dba", "Tour Guides")
        assert rec["extra"] == {"id": "e9e30dba", "displayName": "Tour Guides",
                                "meta": {"resourceType": "Group", "created": "2010-01-23T04:56:22Z"}}


class TestMapMembers:
    def test_users_become_assignments_and_groups_nested_entitlements(self):
        members = [{"value": "u1", "type": "User"}, {"value": "u2"}, {"value": "g2", "type": "Group"},
                   {"value": "g3"}, {"value": "u1", "type": "User"}]
        out = list(map_members("g1", members, {"g1", "g2", "g3"}))
        assert [Assignment.model_validate(r) for r in out if "account_id" in r] == [
            Assignment(account_id="u1", entitlement_id="g1"), Assignment(account_id="u2", entitlement_id="g1")]
        assert [NestedEntitlement.model_validate(r) for r in out if "member_entitlement_id" in r] == [
            NestedEntitlement(entitlement_id="g1", member_entitlement_id="g2"),
            NestedEntitlement(entitlement_id="g1", member_entitlement_id="g3")]

    def test_a_group_typed_member_is_nested_even_if_unknown(self):
        assert list(map_members("g1", [{"value": "elsewhere", "type": "Group"}], set())) == [
            {"entitlement_id": "g1", "member_entitlement_id": "elsewhere"}]

    def test_no_members_is_nothing_and_a_non_list_is_a_protocol_error(self):
        assert list(map_members("g1", None, set())) == []
        with pytest.raises(ProtocolError):
            list(map_members("g1", {"value": "u1"}, set()))


class TestListResponse:
    def test_resources_of_a_list_response(self):
        assert list_response_resources({"totalResults": 1, "Resources": [{"id": "a"}]}) == [{"id": "a"}]

    def test_empty_list_response_may_leave_resources_out(self):
        assert list_response_resources({"totalResults": 0}) == []

    @pytest.mark.parametrize("body", [{"data": []}, [], {"totalResults": 4}, {"Resources": {"id": "a"}}])
    def test_anything_else_is_a_protocol_error(self, body):
        with pytest.raises(ProtocolError):
            list_response_resources(body)


class TestProviderConfig:
    def test_filter_max_results_and_max_page_size_cap_the_page_size(self):
        cfg = ProviderConfig.parse({"filter": {"supported": True, "maxResults": 200},
                                    "pagination": {"maxPageSize": 150}})
        assert cfg.page_size(1000) == 150
        assert cfg.page_size(50) == 50
        assert ProviderConfig().page_size(1000) == 1000

    def test_a_document_that_is_not_a_service_provider_config_is_refused(self):
        with pytest.raises(ProtocolError):
            ProviderConfig.parse({"status": "ok"})


# -- configuration ------------------------------------------------------------------------------------------

class TestAuthModel:
    def test_bearer_token_or_basic_exactly_one(self):
        assert ScimAuth(bearer_token="t0ken").kind == "bearer token"
        assert ScimAuth(username="u", password="p").kind == "username and password"
        for bad in ({}, {"bearer_token": "t0ken", "username": "u", "password": "p"}, {"username": "u"},
                    {"password": "p"}, {"bearer_token": "  "}, {"bearer_token": "t", "extra": 1}):
            with pytest.raises(ValidationError):
                ScimAuth(**bad)

    def test_secrets_do_not_show_in_repr(self):
        assert TOKEN not in repr(ScimAuth(bearer_token=TOKEN))
        assert "s3cret" not in repr(ScimAuth(username="u", password="s3cret"))

    def test_basic_auth_is_sent_as_basic(self):
        seen = []

        def handler(request):
            seen.append(request.headers["Authorization"])
            return httpx.Response(401, json={"detail": "no"})

        conn = connector(httpx.MockTransport(handler), auth={"username": "reader", "password": "pw"})
        with pytest.raises(AuthError, match="auth.username / auth.password"):
            conn.validate_credentials()
        assert seen[0] == "Basic " + __import__("base64").b64encode(b"reader:pw").decode()

    def test_settings_refuse_a_url_that_is_not_http(self):
        with pytest.raises(ValidationError):
            ScimSettings(base_url="users.lucid.app/scim/v2")
        assert ScimSettings(base_url="https://h/scim/v2/").base_url == "https://h/scim/v2"


class TestSelfDescription:
    def test_info_lists_the_capabilities_it_has(self):
        info = ScimConnector.info()
        assert info["capabilities"] == ["validate_credentials", "list_accounts", "list_entitlements",
                                        "find_entitlement_associations", "list_custom_attributes_schema"]
        assert info["entitlement_types"][0]["type_id"] == "group"
        assert info["authentication_schema"]["oneOf"]

    def test_custom_attributes_schema_describes_the_enterprise_fields(self):
        schema = list(connector(httpx.MockTransport(lambda r: httpx.Response(500))).list_custom_attributes_schema())
        assert all(isinstance(a, CustomAttribute) for a in schema)
        names = {a.name for a in schema}
        assert {"employeeNumber", "department", "manager", "costCenter", "organization", "division"} <= names
        mapped = map_user({"id": "x", ENTERPRISE_USER: {k: "v" for k in names - {"manager"}} | {"manager": {"value": "m"}},
                           "title": "t", "userType": "u", "externalId": "e"})
        assert set(mapped["custom_attributes"]) == names

    def test_registry_resolves_both_types(self):
        assert get_connector_class("scim") is ScimConnector
        assert get_connector_class("lucid_scim") is LucidScimConnector

    def test_lucid_preset_defaults_its_url_and_takes_a_bearer_token_only(self):
        assert (LucidScimConnector.type, LucidScimConnector.name) == ("lucid_scim", "Lucid SCIM")
        assert LucidScimConnector.Settings().base_url == "https://users.lucid.app/scim/v2"
        assert LucidScimConnector.Auth is BearerTokenConfig
        with pytest.raises(ValidationError):
            LucidScimConnector.Auth(username="u", password="p")


# -- provider quirks (fake provider) ------------------------------------------------------------------------

class TestPagination:
    def run_users(self, n: int, **quirks) -> tuple[list[dict], FakeProvider]:
        fake = FakeProvider([user(i) for i in range(n)], **quirks)
        return list(connector(fake.transport(), page_size=100).list_accounts()), fake

    def assert_complete(self, records: list[dict], n: int) -> None:
        assert sorted(r["account_id"] for r in records) == sorted(f"u{i}" for i in range(n))

    def test_plain_provider_pages_by_start_index(self):
        records, fake = self.run_users(250)
        self.assert_complete(records, 250)
        assert sorted(int(r.url.params["startIndex"]) for r in fake.paths("Users")) == [1, 101, 201]  # 2 at once

    def test_count_ignored_smaller_pages(self):
        records, _ = self.run_users(230, ignore_count=True, default_page=50)
        self.assert_complete(records, 230)

    def test_count_ignored_everything_at_once(self):
        records, fake = self.run_users(230, ignore_count=True, default_page=None)
        self.assert_complete(records, 230)
        assert len(fake.paths("Users")) <= 2

    def test_fewer_items_than_asked(self):
        records, fake = self.run_users(95, max_page=7)
        self.assert_complete(records, 95)
        assert len(fake.paths("Users")) == 14

    @pytest.mark.parametrize("total", ["page", "missing", "small"])
    def test_inconsistent_total_results(self, total):
        records, _ = self.run_users(250, total=total)
        self.assert_complete(records, 250)

    def test_total_results_equal_to_the_page_length_with_capped_pages_still_completes(self):
        records, _ = self.run_users(250, total="page", ignore_count=True, default_page=100)
        self.assert_complete(records, 250)

    def test_start_index_ignored_fails_loudly_instead_of_looping_or_truncating(self):
        with pytest.raises(ProtocolError, match="ignore startIndex"):
            self.run_users(250, ignore_start_index=True)

    def test_start_index_ignored_without_total_ends_without_looping(self):
        records, fake = self.run_users(250, ignore_start_index=True, total="missing")
        assert len(records) == 100
        assert len(fake.paths("Users")) == 2

    def test_start_index_and_count_ignored_everything_in_one_page_completes(self):
        records, fake = self.run_users(250, ignore_start_index=True, ignore_count=True, default_page=None)
        self.assert_complete(records, 250)
        assert len(fake.paths("Users")) == 2

    def test_max_results_caps_the_count_asked(self):
        records, fake = self.run_users(450)
        self.assert_complete(records, 450)
        fake2 = FakeProvider([user(i) for i in range(450)])
        list(connector(fake2.transport(), page_size=5000).list_accounts())
        assert {int(r.url.params["count"]) for r in fake2.paths("Users")} == {200}

    def test_provider_without_service_provider_config_uses_the_settings(self):
        fake = FakeProvider([user(i) for i in range(30)], spc={})
        conn = connector(fake.transport(), page_size=10)
        assert len(list(conn.list_accounts())) == 30
        assert conn.validate_credentials()["service_provider_config"] is False

    def test_filter_is_passed_and_refused_when_the_provider_cannot_filter(self):
        fake = FakeProvider([user(i) for i in range(3)])
        list(connector(fake.transport(), users_filter="active eq true").list_accounts())
        assert fake.paths("Users")[0].url.params["filter"] == "active eq true"
        nofilter = FakeProvider([user(1)], spc={"schemas": [], "filter": {"supported": False}})
        with pytest.raises(ProtocolError, match="filter"):
            list(connector(nofilter.transport(), users_filter="active eq true").list_accounts())


class TestGroupMembers:
    @pytest.mark.parametrize("quirk", [
        {},
        {"omit_members_in_list": True},
        {"cap_members_in_list": 100, "honour_excluded": False},
        {"honour_excluded": False},
        {"ignore_count": True, "default_page": 2},
        {"max_page": 1, "total": "page"},
    ], ids=["plain", "omitted-in-list", "capped-in-list", "excluded-ignored", "count-ignored", "one-per-page"])
    def test_membership_is_complete_whatever_the_list_does(self, quirk):
        users, groups = org()
        fake = FakeProvider(users, groups, **quirk)
        out = drain(connector(fake.transport(), page_size=100))
        assert {e["entitlement_id"] for e in out["list_entitlements"]} == {g["id"] for g in groups}
        got = pairs(out["find_entitlement_associations"])
        assert got == expected_pairs(groups)
        assert len([a for a in got[0] if a[1] == "g-big"]) == 1200

    def test_group_list_excludes_members_and_groups_are_listed_once(self):
        users, groups = org(10, 10)
        fake = FakeProvider(users, groups)
        drain(connector(fake.transport()))
        lists = [r for r in fake.paths("Groups") if r.url.path.endswith("/Groups")]
        assert [r.url.params["startIndex"] for r in lists] == ["1", "5"], "listed once (then one empty page)"
        assert all(r.url.params["excludedAttributes"] == "members" for r in lists)
        reads = sorted(r.url.path.rsplit("/", 1)[1] for r in fake.paths("Groups/"))
        assert reads == sorted(g["id"] for g in groups)

    def test_associations_alone_list_the_groups_themselves(self):
        users, groups = org(10, 10)
        fake = FakeProvider(users, groups)
        got = pairs(list(connector(fake.transport()).find_entitlement_associations()))
        assert got == expected_pairs(groups)

    def test_a_group_deleted_while_reading_is_skipped(self):
        users, groups = org(10, 10)
        fake = FakeProvider(users, groups)
        conn = connector(fake.transport())
        ents = list(conn.list_entitlements())
        fake.groups = [g for g in groups if g["id"] != "g-small"]
        got = pairs(list(conn.find_entitlement_associations()))
        assert len(ents) == 4
        assert ("u1", "g-small") not in got[0] and ("g-parent", "g-small") in got[1]


class TestErrorsFromTheFake:
    def test_bad_token_is_an_auth_error_naming_the_field(self):
        fake = FakeProvider([user(1)])
        conn = connector(fake.transport(), auth={"bearer_token": "wrong-token-xyz"})
        with pytest.raises(AuthError) as e:
            list(conn.list_accounts())
        assert "auth.bearer_token" in str(e.value) and "wrong-token-xyz" not in str(e.value)

    def test_html_answer_is_a_protocol_error(self):
        conn = connector(httpx.MockTransport(lambda r: httpx.Response(
            200, content=b"<html>login</html>", headers={"Content-Type": "text/html"})))
        with pytest.raises(ProtocolError, match="settings.base_url"):
            conn.validate_credentials()


# -- a real SCIM server (scim2-server) with a large organisation ----------------------------------------------

@pytest.fixture(scope="module")
def big_server():
    server = ScimServer(token=TOKEN).start()
    try:
        organisation = make_org(n_users=1200, n_teams=40, big_group_size=1100)
        load_org(server, organisation)
        yield server
    finally:
        server.stop()


def real(server: ScimServer, base_url: str | None = None, **settings: Any) -> ScimConnector:
    s = ScimSettings(base_url=base_url or server.base_url, max_retries=0, backoff_initial=0.0, **settings)
    return ScimConnector(ConnectorContext("real", s, ScimAuth(bearer_token=TOKEN)))


class TestAgainstScim2Server:
    def test_check_reports_the_tenant(self, big_server):
        with real(big_server) as conn:
            info = conn.validate_credentials()
        assert info["users"] == 1200
        assert info["service_provider_config"] is True and info["filtering"] is True
        assert info["max_results"] == 1000 and info["page_size"] == 100
        assert info["authentication_schemes"] == ["bearer_token"]

    def test_bad_token_wrong_url_and_non_scim_endpoint_give_distinct_errors(self, big_server):
        s = ScimSettings(base_url=big_server.base_url, max_retries=0)
        with ScimConnector(ConnectorContext("real", s, ScimAuth(bearer_token="not-the-token"))) as conn:
            with pytest.raises(AuthError, match=r"refused the bearer token \(HTTP 401\).*auth.bearer_token") as e:
                conn.validate_credentials()
            assert "not-the-token" not in str(e.value)
        with real(big_server, base_url=big_server.root_url + "/wrong/v2") as conn:
            with pytest.raises(NotFoundError, match="no SCIM service at .*settings.base_url"):
                conn.validate_credentials()
        with real(big_server, base_url=big_server.root_url + "/app/login") as conn:
            with pytest.raises(ProtocolError, match="does not answer like a SCIM 2.0 service.*HTML"):
                conn.validate_credentials()
        with real(big_server, base_url=big_server.root_url + "/api/v1") as conn:
            with pytest.raises(ProtocolError, match="does not answer like a SCIM 2.0 service"):
                conn.validate_credentials()

    def test_full_read_matches_the_server_exactly(self, big_server, capsys):
        source = source_state(big_server)
        started = time.perf_counter()
        with real(big_server, page_size=100) as conn:
            out = drain(conn)
            requests = conn.ctx.stats.requests
        elapsed = time.perf_counter() - started
        accounts = [Account.model_validate(r) for r in out["list_accounts"]]
        assert sorted(a.account_id for a in accounts) == sorted(source["users"])
        assert len(accounts) == 1200 and requests > 12 + 42
        by_id = {a.account_id: a for a in accounts}
        for uid, raw in source["users"].items():
            a = by_id[uid]
            assert a.username == raw["userName"]
            assert a.display_name == raw["displayName"]
            assert (a.given_name, a.family_name) == (raw["name"]["givenName"], raw["name"]["familyName"])
            assert a.status.value == ("ACTIVE" if raw["active"] else "SUSPENDED")
            emails = raw.get("emails") or []
            want = next((e["value"] for e in emails if e.get("primary")),
                        next((e["value"] for e in emails if e.get("type") == "work"), None))
            assert a.email == want
            ent = raw.get(ENTERPRISE_USER)
            assert a.custom_attributes.get("employeeNumber") == (ent or {}).get("employeeNumber")
            assert a.custom_attributes.get("manager") == ((ent or {}).get("manager") or {}).get("value")
        assert any("ø" in (a.family_name or "").lower() for a in accounts), "non-ASCII names survive"
        assert sum(a.email is None for a in accounts) > 50
        assert sum(a.status.value == "SUSPENDED" for a in accounts) > 50
        ents = [Entitlement.model_validate(e) for e in out["list_entitlements"]]
        assert sorted(e.entitlement_id for e in ents) == sorted(source["groups"])
        got = pairs(out["find_entitlement_associations"])
        assert got == (source["assignments"], source["nested"])
        assert sum(1 for _, g in got[0] if g == group_id("All Staff")) == 1100
        assert got[1] == {(group_id("Engineering"), group_id("Team 00")), (group_id("Engineering"), group_id("Team 01"))}
        total = sum(len(v) for v in out.values())
        print(f"\nSCIM connector on scim2-server: {total} records ({len(accounts)} accounts, {len(ents)} groups, "
              f"{len(got[0])} assignments) in {elapsed:.2f}s = {total / elapsed:.0f} records/s, {requests} requests")

    def test_users_filter_is_applied_by_the_server(self, big_server):
        with real(big_server, users_filter="active eq false") as conn:
            accounts = list(conn.list_accounts())
        inactive = [u for u in source_state(big_server)["users"].values() if not u["active"]]
        assert sorted(a["account_id"] for a in accounts) == sorted(u["id"] for u in inactive)
        assert all(a["status"] == "SUSPENDED" for a in accounts)

    def test_page_size_above_the_servers_max_results_is_capped(self, big_server):
        with real(big_server, page_size=5000) as conn:
            assert conn.page_size == 1000
            assert len(list(conn.list_accounts())) == 1200
