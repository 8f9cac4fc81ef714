"""Okta's pure mapping functions, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.okta import (
    STATUS_MAP,
    last_login,
    map_app,
    map_app_group,
    map_app_user,
    map_group,
    map_role,
    map_user,
    okta_status,
)
from ingest.records import Account, Entitlement, Resource
from tests.servers.okta_server import STATUSES, OktaTenant, role


class TestStatus:
    @pytest.mark.parametrize("okta, ours", [
        ("ACTIVE", "ACTIVE"), ("RECOVERY", "ACTIVE"), ("LOCKED_OUT", "ACTIVE"), ("PASSWORD_EXPIRED", "ACTIVE"),
        ("PROVISIONED", "PENDING"), ("STAGED", "PENDING"), ("SUSPENDED", "SUSPENDED"),
        ("DEPROVISIONED", "DEPROVISIONED"),
    ])
    def test_every_okta_status_maps_as_documented(self, okta, ours):
        assert okta_status(okta).value == ours

    def test_the_map_covers_every_status_okta_has(self):
        assert set(STATUS_MAP) == set(STATUSES)

    def test_the_okta_status_is_kept_beside_ours(self):
        t = OktaTenant()
        user = t.add_user(3, "LOCKED_OUT")
        record = map_user(user)
        assert record["status"] == "ACTIVE" and record["custom_attributes"]["okta_status"] == "LOCKED_OUT"


class TestUser:
    def test_profile_fields_become_account_columns(self):
        t = OktaTenant()
        raw = t.add_user(7, "ACTIVE", department="finance", manager="Ada", title="CFO")
        a = Account.model_validate(map_user(raw))
        assert (a.account_id, a.email, a.username) == (raw["id"], "user7@example.com", "user7@example.com")
        assert (a.display_name, a.given_name, a.family_name) == ("First7 Last7", "First7", "Last7")
        assert a.custom_attributes["department"] == "finance" and a.custom_attributes["manager"] == "Ada"
        assert "mobilePhone" not in a.custom_attributes  # null profile values are left out

    def test_display_name_falls_back_to_first_and_last_name(self):
        raw = OktaTenant().add_user(1)
        del raw["profile"]["displayName"]
        assert map_user(raw)["display_name"] == "First1 Last1"

    def test_a_sign_in_does_not_change_the_account_record(self):
        t = OktaTenant()
        raw = t.add_user(2)
        before = map_user(raw)
        raw = {**raw, "lastLogin": "2026-12-01T10:00:00.000Z", "lastUpdated": "2026-12-01T10:00:00.000Z"}
        assert map_user(raw) == before

    def test_last_login_is_last_activity_and_never_signed_in_is_none(self):
        t = OktaTenant()
        raw = t.add_user(4, last_login="2026-11-30T08:15:00.000Z")
        assert last_login(raw) == {"account_id": raw["id"],
                                   "last_activity_at": datetime(2026, 11, 30, 8, 15, tzinfo=UTC)}
        assert last_login(t.add_user(5, last_login=None)) is None


class TestGroupsAppsRoles:
    def test_group_is_a_group_entitlement_with_its_okta_type(self):
        t = OktaTenant()
        raw = t.add_group(1, "Everyone", "BUILT_IN", "All users")
        e = Entitlement.model_validate(map_group(raw))
        assert (e.entitlement_id, e.label, e.description, e.extra["type"]) == (raw["id"], "Everyone", "All users",
                                                                              "BUILT_IN")
        assert e.is_assignable is False  # Okta manages Everyone's members itself

    def test_membership_timestamps_do_not_change_the_group(self):
        raw = OktaTenant().add_group(2, "team")
        assert map_group({**raw, "lastMembershipUpdated": "2030-01-01T00:00:00Z",
                          "lastUpdated": "2030-01-01T00:00:00Z"}) == map_group(raw)

    def test_app_is_a_resource_with_an_access_entitlement(self):
        raw = OktaTenant().add_app(1, "Salesforce", "INACTIVE")
        resource, entitlement = map_app(raw)
        r, e = Resource.model_validate(resource), Entitlement.model_validate(entitlement)
        assert (r.resource_type, r.resource_id, r.label) == ("app", raw["id"], "Salesforce")
        assert (e.resource_type, e.resource_id, e.entitlement_id) == ("app", raw["id"], raw["id"])
        assert e.is_assignable is False  # inactive apps cannot be assigned

    def test_only_direct_app_users_are_assignments(self):
        assert map_app_user("0oa1", {"id": "00u1", "scope": "USER"}) == {
            "account_id": "00u1", "entitlement_id": "0oa1", "resource_type": "app", "resource_id": "0oa1"}
        assert map_app_user("0oa1", {"id": "00u2", "scope": "GROUP"}) is None

    def test_a_group_assigned_to_an_app_is_nested_in_its_access(self):
        assert map_app_group("0oa1", {"id": "00g1"}) == {"entitlement_id": "0oa1", "member_entitlement_id": "00g1"}

    def test_standard_roles_map_to_their_type_custom_and_inactive_ones_do_not(self):
        assert map_role(role("SUPER_ADMIN")) == "SUPER_ADMIN"
        assert map_role({**role("ORG_ADMIN"), "status": "INACTIVE"}) is None
        assert map_role({"type": "CUSTOM", "label": "Auditor", "status": "ACTIVE"}) is None
