"""The LDAP connector against a real OpenLDAP slapd (OpenLDAP and AD-shaped trees)."""

from __future__ import annotations

import time
import uuid

import ldap3
import pytest
import structlog

from ingest.errors import AuthError, NotFoundError, RetryableError, SourceError
from ingest.records import Account, Assignment, Entitlement, NestedEntitlement, Resource
from tests.servers.ldap_data import AD_SUFFIX, OPENLDAP_SUFFIX, READER_DN, filetime
from tests.servers.slapd import CuttingProxy, free_port
from tests.test_ldap.conftest import READER_PASSWORD, Directory, collect


def _oracle(directory: Directory, suffix: str = OPENLDAP_SUFFIX, id_attr: str = "entryUUID"):
    """What the directory holds, read as the rootdn (no size limit) without the connector's code."""
    c = directory.root(suffix)
    fmt = (lambda raw: str(uuid.UUID(bytes_le=raw))) if id_attr == "objectGUID" else (lambda raw: raw.decode())

    def ids(filt: str, extra: list[str] = ()) -> dict[str, tuple[str, dict]]:
        c.search(suffix, filt, attributes=[id_attr, *extra])
        assert c.result["description"] == "success"
        return {e["dn"].lower(): (fmt(e["raw_attributes"][id_attr][0]), e["raw_attributes"]) for e in c.response}

    return c, ids


@pytest.fixture(scope="module")
def openldap_records(directory: Directory) -> dict[str, list[dict]]:
    with directory.connector() as conn:
        return collect(conn)


class TestPaging:
    def test_the_server_refuses_an_unpaged_read_of_the_whole_tree(self, directory: Directory):
        c = ldap3.Connection(directory.server.url, READER_DN, READER_PASSWORD, auto_bind=True)
        c.search(OPENLDAP_SUFFIX, "(objectClass=inetOrgPerson)", attributes=["entryUUID"])
        assert c.result["description"] == "sizeLimitExceeded" and len(c.response) == 500

    def test_every_account_arrives_once_through_paged_results(self, directory: Directory, openldap_records):
        accounts = openldap_records["account"]
        assert len(accounts) == 3000
        assert len({a["account_id"] for a in accounts}) == 3000

    def test_a_page_size_above_the_server_limit_is_capped_by_the_server_not_fatal(self, directory: Directory):
        with directory.connector(page_size=2000) as conn:
            assert sum(1 for _ in conn.list_accounts()) == 3000

    def test_groups_past_the_size_limit_are_paged_too(self, openldap_records):
        assert len(openldap_records["entitlement"]) == 527


class TestOpenLdap:
    def test_accounts_match_the_directory(self, directory: Directory, openldap_records):
        _, ids = _oracle(directory)
        people = ids("(objectClass=inetOrgPerson)", ["uid", "mail"])
        got = {a["account_id"]: a for a in openldap_records["account"]}
        assert set(got) == {v[0] for v in people.values()}
        for dn, (aid, raw) in list(people.items())[:50]:
            a = got[aid]
            assert a["extra"]["dn"].lower() == dn
            assert a["username"] == raw["uid"][0].decode() and a["email"] == raw["mail"][0].decode()
            Account.model_validate(a)

    def test_locked_and_expired_people_are_suspended(self, directory: Directory, openldap_records):
        suspended = {a["extra"]["dn"] for a in openldap_records["account"] if a["status"] == "SUSPENDED"}
        assert suspended == directory.openldap.suspended
        assert len(suspended) > 50

    def test_the_disabled_filter_suspends_its_matches(self, directory: Directory):
        with directory.connector(disabled_filter="(employeeType=disabled)") as conn:
            accounts = list(conn.list_accounts())
        assert len(accounts) == 3000
        suspended = {a["extra"]["dn"] for a in accounts if a["status"] == "SUSPENDED"}
        assert suspended == directory.openldap.suspended | directory.openldap.employee_disabled

    def test_ous_form_a_tree(self, directory: Directory, openldap_records):
        ous = {r["extra"]["dn"]: r for r in openldap_records["resource"]}
        assert set(ous) == set(directory.openldap.ous)
        for r in ous.values():
            Resource.model_validate(r)
        platform = ous[f"ou=platform,ou=engineering,ou=people,{OPENLDAP_SUFFIX}"]
        engineering = ous[f"ou=engineering,ou=people,{OPENLDAP_SUFFIX}"]
        people = ous[f"ou=people,{OPENLDAP_SUFFIX}"]
        assert platform["parent_resource_id"] == engineering["resource_id"]
        assert engineering["parent_resource_id"] == people["resource_id"]
        assert people["parent_resource_id"] is None and people["parent_resource_type"] is None
        assert platform["parent_resource_type"] == "ou"

    def test_groups_are_global_entitlements_with_stable_ids(self, directory: Directory, openldap_records):
        _, ids = _oracle(directory)
        groups = ids("(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))")
        got = {e["entitlement_id"]: e for e in openldap_records["entitlement"]}
        assert set(got) == {v[0] for v in groups.values()}
        for e in got.values():
            Entitlement.model_validate(e)
            assert e["entitlement_type"] == "group" and e["resource_id"] == ""
        classes = {e["label"]: e["extra"]["object_class"] for e in got.values()}
        assert classes["sales"] == "groupOfUniqueNames" and classes["developers"] == "posixGroup"

    def test_memberships_match_the_directory(self, directory: Directory, openldap_records):
        c, ids = _oracle(directory)
        people = ids("(objectClass=inetOrgPerson)", ["uid"])
        by_uid = {raw["uid"][0].decode(): aid for aid, raw in people.values()}
        groups = ids("(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))",
                     ["member", "uniqueMember", "memberUid"])
        expected_assign, expected_nested = set(), set()
        for gid, raw in groups.values():
            for v in raw.get("member", []) + raw.get("uniqueMember", []):
                key = v.decode().lower()
                if key in people:
                    expected_assign.add((people[key][0], gid))
                elif key in groups:
                    expected_nested.add((gid, groups[key][0]))
            for v in raw.get("memberUid", []):
                if v.decode() in by_uid:
                    expected_assign.add((by_uid[v.decode()], gid))
        got_assign = {(a["account_id"], a["entitlement_id"]) for a in openldap_records["assignment"]}
        got_nested = {(n["entitlement_id"], n["member_entitlement_id"]) for n in openldap_records["nested_entitlement"]}
        assert len(got_assign) == len(openldap_records["assignment"])  # no duplicates
        assert got_assign == expected_assign
        assert got_nested == expected_nested and len(got_nested) == 2
        Assignment.model_validate(openldap_records["assignment"][0])
        NestedEntitlement.model_validate(openldap_records["nested_entitlement"][0])

    def test_the_big_group_has_all_its_members_and_nested_groups_are_not_accounts(self, directory: Directory,
                                                                                 openldap_records):
        label = {e["entitlement_id"]: e["label"] for e in openldap_records["entitlement"]}
        per_group: dict[str, int] = {}
        for a in openldap_records["assignment"]:
            per_group[label[a["entitlement_id"]]] = per_group.get(label[a["entitlement_id"]], 0) + 1
        assert per_group["all-staff"] == directory.openldap.big_group_size == 1600
        assert per_group["developers"] == 40  # memberUid resolved by uid; the unknown uid is skipped
        assert "placeholder" not in per_group
        nested = {(label[n["entitlement_id"]], label[n["member_entitlement_id"]])
                  for n in openldap_records["nested_entitlement"]}
        assert nested == {("engineering", "platform-team"), ("admins", "platform-team")}
        account_ids = {a["account_id"] for a in openldap_records["account"]}
        assert all(a["account_id"] in account_ids for a in openldap_records["assignment"])

    def test_unresolved_members_are_reported(self, directory: Directory):
        with directory.connector() as conn, structlog.testing.capture_logs() as logs:
            list(conn.find_entitlement_associations())
        warning = next(e for e in logs if e["event"] == "ldap_unresolved_members")
        assert warning["count"] == 2 and warning["log_level"] == "warning"
        assert "memberUid=ghost-user" in warning["examples"]

    def test_associations_alone_resolve_the_same_as_after_listing(self, directory: Directory, openldap_records):
        with directory.connector() as conn:
            records = list(conn.find_entitlement_associations())
        assert sorted(map(str, records)) == sorted(
            map(str, openldap_records["assignment"] + openldap_records["nested_entitlement"]))


class TestActiveDirectory:
    @pytest.fixture(scope="class")
    @classmethod
    def ad_records(cls, directory: Directory):
        with directory.connector("active_directory") as conn:
            return collect(conn)

    def test_accounts_are_users_and_service_accounts_not_computers(self, directory: Directory, ad_records):
        _, ids = _oracle(directory, AD_SUFFIX, "objectGUID")
        users = ids("(&(objectClass=user)(!(objectClass=computer)))")
        msas = ids("(|(objectClass=msDS-ManagedServiceAccount)(objectClass=msDS-GroupManagedServiceAccount))")
        got = {a["account_id"]: a for a in ad_records["account"]}
        assert set(got) == {v[0] for v in {**users, **msas}.values()}
        assert len(got) == 43 and not any(a["username"] == "WS001$" for a in got.values())

    def test_ids_are_object_guids_as_strings(self, directory: Directory, ad_records):
        c = directory.root(AD_SUFFIX)
        dn = directory.ad.users[0]
        c.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["objectGUID"])
        raw = c.response[0]["raw_attributes"]["objectGUID"][0]
        account = next(a for a in ad_records["account"] if a["extra"]["dn"] == dn)
        assert account["account_id"] == str(uuid.UUID(bytes_le=raw))
        assert account["extra"]["user_principal_name"] == account["username"] + "@corp.example.com"

    def test_disabled_accounts_are_suspended(self, directory: Directory, ad_records):
        suspended = {a["extra"]["dn"] for a in ad_records["account"] if a["status"] == "SUSPENDED"}
        assert suspended == directory.ad.suspended and suspended

    def test_service_accounts_are_recognised(self, ad_records):
        services = {a["extra"]["dn"].split(",")[0] for a in ad_records["account"] if a["account_type"] == "service"}
        assert services == {"cn=svc-sql", "cn=msa-web", "cn=gmsa-batch"}

    def test_last_logon_timestamp_is_the_last_activity(self, directory: Directory, ad_records):
        by_dn = {a["extra"]["dn"]: a for a in ad_records["account"]}
        # user i logged on at 2024-03-01T12:00Z minus i hours; every fifth never did (see ldap_data.ad_org)
        first, fifth = by_dn[directory.ad.users[0]], by_dn[directory.ad.users[4]]
        assert first["last_activity_at"].timestamp() == 1_709_294_400 - 3600
        assert filetime(1_709_294_400 - 3600) == 133537644000000000
        assert fifth["last_activity_at"] is None

    def test_groups_ous_and_nesting(self, ad_records):
        labels = {e["entitlement_id"]: e["label"] for e in ad_records["entitlement"]}
        assert set(labels.values()) == {"Domain Users", "SQL Admins", "IT Admins", "All Staff", "Web Servers"}
        nested = {(labels[n["entitlement_id"]], labels[n["member_entitlement_id"]])
                  for n in ad_records["nested_entitlement"]}
        assert nested == {("IT Admins", "SQL Admins")}
        per_group: dict[str, int] = {}
        for a in ad_records["assignment"]:
            per_group[labels[a["entitlement_id"]]] = per_group.get(labels[a["entitlement_id"]], 0) + 1
        # Domain Users has no member values: everyone but user 6 (whose primary group is IT Admins) and
        # svc-sql get it through primaryGroupID; the MSAs' primary group (Domain Computers) is not in the tree.
        assert per_group == {"Domain Users": 40, "SQL Admins": 2, "IT Admins": 3, "All Staff": 40, "Web Servers": 2}

        ous = {r["label"]: r for r in ad_records["resource"]}
        assert ous["Interns"]["parent_resource_id"] == ous["Staff"]["resource_id"]
        assert ous["Staff"]["parent_resource_id"] == ous["Corp"]["resource_id"]
        assert all(uuid.UUID(r["resource_id"]) for r in ad_records["resource"])

    def test_primary_groups_can_be_left_out(self, directory: Directory):
        with directory.connector("active_directory", primary_group_membership=False) as conn:
            records = collect(conn)
        labels = {e["entitlement_id"]: e["label"] for e in records["entitlement"]}
        assert "Domain Users" not in {labels[a["entitlement_id"]] for a in records["assignment"]}
        assert len(records["assignment"]) == 2 + 2 + 40 + 2


class TestCheck:
    def test_check_reports_the_server(self, directory: Directory):
        with directory.connector() as conn:
            info = conn.validate_credentials()
        assert OPENLDAP_SUFFIX in info["naming_contexts"] and info["paged_results"] is True
        assert info["bound_as"] == READER_DN and info["server"] == directory.server.url

    def test_a_wrong_password_is_an_auth_error(self, directory: Directory):
        with directory.connector(password="not-the-password") as conn, pytest.raises(AuthError) as err:
            conn.validate_credentials()
        assert "invalidCredentials" in str(err.value) and READER_DN in str(err.value)
        assert "not-the-password" not in str(err.value)

    def test_an_unknown_bind_dn_is_an_auth_error(self, directory: Directory):
        with directory.connector(bind_dn="not a dn") as conn, pytest.raises(AuthError):
            conn.validate_credentials()

    def test_an_unreachable_host_is_a_clear_source_error(self, directory: Directory):
        with directory.connector(port=free_port(), max_retries=1, connect_timeout=2) as conn:
            started = time.monotonic()
            with pytest.raises(RetryableError) as err:
                conn.validate_credentials()
        assert isinstance(err.value, SourceError) and not isinstance(err.value, AuthError)
        assert "cannot connect to the LDAP server ldap://127.0.0.1:" in str(err.value)
        assert time.monotonic() - started < 10

    def test_a_missing_base_dn_is_not_found(self, directory: Directory):
        with directory.connector(base_dn="dc=nowhere,dc=org") as conn, pytest.raises(NotFoundError) as err:
            conn.validate_credentials()
        assert "base_dn 'dc=nowhere,dc=org' does not exist" in str(err.value)

    def test_a_missing_group_base_is_not_found_and_named(self, directory: Directory):
        with directory.connector(group_search_base=f"ou=nope,{OPENLDAP_SUFFIX}") as conn:
            with pytest.raises(NotFoundError, match="group_search_base"):
                conn.validate_credentials()

    def test_searching_a_missing_base_fails_rather_than_returning_nothing(self, directory: Directory):
        with directory.connector(user_search_base=f"ou=nope,{OPENLDAP_SUFFIX}") as conn:
            with pytest.raises(NotFoundError):
                list(conn.list_accounts())


class TestFaults:
    def test_a_connection_cut_mid_search_is_retried_without_duplicates(self, directory: Directory):
        with CuttingProxy(("127.0.0.1", directory.server.port), cut={0}, cut_after=400_000) as proxy:
            with directory.connector(port=proxy.port) as conn, structlog.testing.capture_logs() as logs:
                accounts = list(conn.list_accounts())
                stats = conn.ctx.stats
        assert proxy.cuts == 1 and proxy.accepted >= 2
        assert len(accounts) == 3000 and len({a["account_id"] for a in accounts}) == 3000
        assert stats.retries >= 1
        events = [e["event"] for e in logs]
        assert "ldap_retry" in events and "ldap_search_restarted" in events

    def test_persistent_failure_gives_up_after_the_retries(self, directory: Directory):
        with CuttingProxy(("127.0.0.1", directory.server.port), cut=set(range(100)), cut_after=50_000) as proxy:
            with directory.connector(port=proxy.port, max_retries=2) as conn:
                with pytest.raises(RetryableError, match="connection to ldap://127.0.0.1"):
                    list(conn.list_accounts())
        assert proxy.cuts == 3


def test_the_whole_3000_user_organisation_is_read(directory: Directory):
    """Every page of the big directory arrives (speed is measured by `make bench`, never asserted here)."""
    with directory.connector() as conn:
        records = collect(conn)
    assert len(records["account"]) >= 3_000
    assert sum(len(v) for v in records.values()) > 9_000
