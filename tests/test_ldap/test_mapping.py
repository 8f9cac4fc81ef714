"""Pure mapping functions of the LDAP connector: no server, no I/O."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from pydantic import ValidationError

from connectors.ldap import LdapAuth, LdapSettings
from connectors.ldap._mapping import (
    Dialect,
    account_record,
    entry_id,
    filetime_to_datetime,
    generalized_time,
    group_record,
    guid_to_str,
    member_dn,
    member_dns,
    next_range,
    normalize_dn,
    ou_record,
    parent_dn,
    primary_group_sid,
    ranged_attribute,
    sid_to_str,
)
from ingest.records import Account, Entitlement, Resource

OL = Dialect()
AD = Dialect(mode="active_directory", id_attribute="objectGUID", username_attribute="sAMAccountName")
TODAY = date(2024, 6, 1)


def b(*vals: str) -> list[bytes]:
    return [v.encode() for v in vals]


def person(**extra: list[bytes]) -> dict[str, list[bytes]]:
    attrs = {
        "entryuuid": b("2f5c1a4e-7b52-1041-9734-e1fad8ce53e7"),
        "objectclass": b("inetOrgPerson", "posixAccount"),
        "uid": b("ada"), "mail": b("ada@example.org", "a.lovelace@example.org"), "cn": b("Ada Lovelace"),
        "givenname": b("Ada"), "sn": b("Lovelace"), "uidnumber": b("10001"),
    }
    attrs.update(extra)
    return attrs


def ad_user(**extra: list[bytes]) -> dict[str, list[bytes]]:
    attrs = {
        "objectguid": [bytes.fromhex("78563412341278560123456789abcdef")],
        "objectclass": b("top", "person", "organizationalPerson", "user"),
        "samaccountname": b("alovelace"), "userprincipalname": b("alovelace@corp.example.com"),
        "mail": b("ada@example.com"), "displayname": b("Ada Lovelace"), "useraccountcontrol": b("512"),
        "lastlogontimestamp": b("133537644000000000"),
    }
    attrs.update(extra)
    return attrs


class TestIds:
    def test_objectguid_is_formatted_as_the_standard_guid_string(self):
        raw = uuid.UUID("12345678-1234-5678-0123-456789abcdef").bytes_le
        assert guid_to_str(raw) == "12345678-1234-5678-0123-456789abcdef"
        assert guid_to_str(bytes.fromhex("78563412341278560123456789abcdef")) == "12345678-1234-5678-0123-456789abcdef"

    def test_a_guid_of_the_wrong_length_is_rejected(self):
        with pytest.raises(ValueError):
            guid_to_str(b"\x01\x02")

    def test_entry_id_reads_entryuuid_or_objectguid_and_never_the_dn(self):
        assert entry_id(person(), OL) == "2f5c1a4e-7b52-1041-9734-e1fad8ce53e7"
        assert entry_id(ad_user(), AD) == "12345678-1234-5678-0123-456789abcdef"
        assert entry_id({"cn": b("x")}, OL) is None
        assert entry_id({"objectguid": [b"short"]}, AD) is None


class TestSids:
    SID = bytes([1, 5]) + (5).to_bytes(6, "big") + b"".join(
        x.to_bytes(4, "little") for x in (21, 1004336348, 1177238915, 682003330, 1105))

    def test_a_binary_sid_is_formatted(self):
        assert sid_to_str(self.SID) == "S-1-5-21-1004336348-1177238915-682003330-1105"
        assert sid_to_str(bytes([1, 1]) + (5).to_bytes(6, "big") + (18).to_bytes(4, "little")) == "S-1-5-18"

    def test_a_truncated_sid_is_rejected(self):
        with pytest.raises(ValueError):
            sid_to_str(self.SID[:-1])

    def test_the_primary_group_is_a_rid_in_the_users_domain(self):
        attrs = {"objectsid": [self.SID], "primarygroupid": b("513")}
        assert primary_group_sid(attrs) == "S-1-5-21-1004336348-1177238915-682003330-513"
        assert primary_group_sid({"primarygroupid": b("513")}) is None
        assert primary_group_sid({"objectsid": [self.SID]}) is None


class TestTimes:
    def test_filetime_converts_to_utc(self):
        # 2024-03-01T11:00:00Z
        assert filetime_to_datetime(133537644000000000) == datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
        assert filetime_to_datetime("116444736000000000") == datetime(1970, 1, 1, tzinfo=UTC)

    def test_filetime_zero_and_never_mean_no_activity(self):
        assert filetime_to_datetime(0) is None
        assert filetime_to_datetime(0x7FFFFFFFFFFFFFFF) is None
        assert filetime_to_datetime(None) is None

    def test_generalized_time_with_fraction_and_offset(self):
        assert generalized_time("20240301120000Z") == datetime(2024, 3, 1, 12, tzinfo=UTC)
        assert generalized_time("20240301120000.5Z") == datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC)
        assert generalized_time("20240301140000+0200") == datetime(2024, 3, 1, 12, tzinfo=UTC)
        assert generalized_time("000001010000Z") is None
        assert generalized_time("garbage") is None


class TestDns:
    def test_normalize_is_case_and_spacing_insensitive(self):
        assert normalize_dn("CN=Ada Lovelace,OU=Staff,DC=corp") == "cn=ada lovelace,ou=staff,dc=corp"
        assert normalize_dn("cn=Ada Lovelace , ou=Staff,  dc=corp") == "cn=ada lovelace,ou=staff,dc=corp"

    def test_normalize_keeps_escaped_commas(self):
        assert normalize_dn(r"CN=Smith\, John,OU=Staff") == r"cn=smith\, john,ou=staff"

    def test_parent_dn_skips_escaped_commas(self):
        assert parent_dn(r"cn=Smith\, John,ou=Staff,dc=x") == "ou=Staff,dc=x"
        assert parent_dn("dc=x") is None

    def test_unique_member_loses_its_optional_uid(self):
        assert member_dn(b"uid=ada,ou=people,dc=x#'0101'B", "uniqueMember") == "uid=ada,ou=people,dc=x"
        assert list(member_dns({"member": b("cn=a"), "uniquemember": b("cn=b#'1'B")})) == ["cn=a", "cn=b"]


class TestRanges:
    def test_a_ranged_key_is_found_and_parsed(self):
        assert ranged_attribute({"member;range=0-1499": []}, "member") == ("member;range=0-1499", 0, 1499)
        assert ranged_attribute({"member;range=3000-*": []}, "Member") == ("member;range=3000-*", 3000, None)
        assert ranged_attribute({"member": []}, "member") is None
        assert ranged_attribute({"memberof;range=0-1499": []}, "member") is None

    def test_the_next_range_starts_after_the_last_one(self):
        assert next_range("member", 1499) == "member;range=1500-*"


class TestOpenLdapAccounts:
    def test_a_person_maps_to_an_active_user(self):
        rec = account_record("uid=ada,ou=people,dc=example,dc=org", person(), OL, today=TODAY)
        assert rec["account_id"] == "2f5c1a4e-7b52-1041-9734-e1fad8ce53e7"
        assert rec["username"] == "ada"
        assert rec["email"] == "ada@example.org"
        assert rec["display_name"] == "Ada Lovelace"  # cn when there is no displayName
        assert (rec["given_name"], rec["family_name"]) == ("Ada", "Lovelace")
        assert rec["status"] == "ACTIVE" and rec["account_type"] == "user"
        assert rec["extra"] == {"dn": "uid=ada,ou=people,dc=example,dc=org", "uid_number": 10001}
        Account.model_validate(rec)

    @pytest.mark.parametrize("extra", [
        {"pwdaccountlockedtime": b("000001010000Z")},
        {"nsaccountlock": b("TRUE")},
        {"shadowexpire": b(str((TODAY - date(1970, 1, 1)).days))},
    ])
    def test_locked_or_expired_people_are_suspended(self, extra):
        assert account_record("uid=ada,dc=x", person(**extra), OL, today=TODAY)["status"] == "SUSPENDED"

    def test_future_shadow_expiry_and_minus_one_keep_the_account_active(self):
        future = str((TODAY - date(1970, 1, 1)).days + 1)
        assert account_record("uid=a,dc=x", person(shadowexpire=b(future)), OL, today=TODAY)["status"] == "ACTIVE"
        assert account_record("uid=a,dc=x", person(shadowexpire=b("-1")), OL, today=TODAY)["status"] == "ACTIVE"

    def test_a_match_of_the_disabled_filter_suspends(self):
        assert account_record("uid=a,dc=x", person(), OL, disabled=True, today=TODAY)["status"] == "SUSPENDED"

    def test_last_bind_time_is_the_last_activity(self):
        rec = account_record("uid=a,dc=x", person(pwdlastsuccess=b("20240301120000Z")), OL, today=TODAY)
        assert rec["last_activity_at"] == datetime(2024, 3, 1, 12, tzinfo=UTC)

    def test_custom_attributes_are_copied(self):
        d = Dialect(custom_attributes=("departmentNumber", "title", "missing"))
        rec = account_record("uid=a,dc=x", person(departmentnumber=b("42"), title=b("a", "b")), d, today=TODAY)
        assert rec["custom_attributes"] == {"departmentNumber": "42", "title": ["a", "b"]}

    def test_an_entry_without_id_gives_an_invalid_record_not_a_silent_drop(self):
        attrs = person()
        del attrs["entryuuid"]
        rec = account_record("uid=a,dc=x", attrs, OL, today=TODAY)
        with pytest.raises(ValidationError):
            Account.model_validate(rec)


class TestActiveDirectoryAccounts:
    def test_a_user_maps_with_guid_sam_upn_and_last_logon(self):
        rec = account_record("CN=Ada,OU=Staff,DC=corp", ad_user(), AD)
        assert rec["account_id"] == "12345678-1234-5678-0123-456789abcdef"
        assert rec["username"] == "alovelace"
        assert rec["extra"]["user_principal_name"] == "alovelace@corp.example.com"
        assert rec["extra"]["user_account_control"] == 512
        assert rec["last_activity_at"] == datetime(2024, 3, 1, 11, tzinfo=UTC)
        assert rec["status"] == "ACTIVE" and rec["account_type"] == "user"
        Account.model_validate(rec)

    @pytest.mark.parametrize("uac,status", [("512", "ACTIVE"), ("514", "SUSPENDED"), ("66050", "SUSPENDED"),
                                            ("66048", "ACTIVE"), ("16", "ACTIVE")])
    def test_accountdisable_bit_suspends(self, uac, status):
        assert account_record("CN=a", ad_user(useraccountcontrol=b(uac)), AD)["status"] == status

    def test_never_logged_on_has_no_last_activity(self):
        assert account_record("CN=a", ad_user(lastlogontimestamp=b("0")), AD)["last_activity_at"] is None
        attrs = ad_user()
        del attrs["lastlogontimestamp"]
        assert account_record("CN=a", attrs, AD)["last_activity_at"] is None

    @pytest.mark.parametrize("extra", [
        {"objectclass": b("top", "person", "user", "computer", "msDS-ManagedServiceAccount")},
        {"objectclass": b("top", "person", "user", "computer", "msDS-GroupManagedServiceAccount")},
        {"serviceprincipalname": b("MSSQLSvc/sql01:1433")},
    ])
    def test_service_accounts_are_recognised(self, extra):
        assert account_record("CN=svc", ad_user(**extra), AD)["account_type"] == "service"


class TestGroupsAndOus:
    def test_a_group_is_a_global_group_entitlement(self):
        attrs = {"entryuuid": b("g-1"), "objectclass": b("top", "groupOfNames"), "cn": b("admins"),
                 "description": b("Admins")}
        rec = group_record("cn=admins,ou=groups,dc=x", attrs, OL)
        assert rec == {"entitlement_type": "group", "resource_type": "", "resource_id": "", "entitlement_id": "g-1",
                       "label": "admins", "description": "Admins", "is_assignable": True,
                       "extra": {"dn": "cn=admins,ou=groups,dc=x", "object_class": "groupOfNames"}}
        Entitlement.model_validate(rec)

    def test_posix_group_keeps_its_gid(self):
        attrs = {"entryuuid": b("g-2"), "objectclass": b("posixGroup"), "cn": b("dev"), "gidnumber": b("20000")}
        assert group_record("cn=dev,dc=x", attrs, OL)["extra"]["gid_number"] == 20000

    def test_ad_group_type_gives_scope_and_security(self):
        attrs = {"objectguid": [bytes(range(16))], "objectclass": b("top", "group"), "cn": b("IT"),
                 "samaccountname": b("IT"), "grouptype": b("-2147483646")}
        rec = group_record("CN=IT,DC=corp", attrs, AD)
        assert rec["extra"]["group_scope"] == "global" and rec["extra"]["security_group"] is True
        attrs["grouptype"] = b("8")
        rec = group_record("CN=IT,DC=corp", attrs, AD)
        assert rec["extra"]["group_scope"] == "universal" and rec["extra"]["security_group"] is False

    def test_an_ou_points_at_its_parent(self):
        rec = ou_record("ou=platform,ou=eng,dc=x", {"entryuuid": b("ou-2"), "ou": b("platform")}, OL, "ou-1")
        assert (rec["resource_type"], rec["resource_id"], rec["label"]) == ("ou", "ou-2", "platform")
        assert (rec["parent_resource_type"], rec["parent_resource_id"]) == ("ou", "ou-1")
        top = ou_record("ou=eng,dc=x", {"entryuuid": b("ou-1"), "ou": b("eng")}, OL, None)
        assert top["parent_resource_type"] is None and top["parent_resource_id"] is None
        Resource.model_validate(rec)


class TestSettings:
    def test_defaults_depend_on_mode(self):
        s = LdapSettings(host="dc1", base_dn="dc=corp", mode="active_directory")
        assert "objectClass=user" in s.filter_for("user") and s.filter_for("group") == "(objectClass=group)"
        assert s.url == "ldap://dc1:389" and s.base_for("group") == "dc=corp"

    def test_a_url_host_sets_ssl_and_port(self):
        s = LdapSettings(host="ldaps://dc1.corp:3269", base_dn="dc=corp")
        assert (s.host, s.port, s.use_ssl, s.url) == ("dc1.corp", 3269, True, "ldaps://dc1.corp:3269")
        assert LdapSettings(host="ldaps://dc1", base_dn="dc=x").effective_port == 636

    def test_ssl_and_starttls_are_exclusive(self):
        with pytest.raises(ValidationError, match="exclusive"):
            LdapSettings(host="h", base_dn="dc=x", use_ssl=True, start_tls=True)

    def test_a_filter_without_parentheses_is_a_config_error(self):
        with pytest.raises(ValidationError, match="parentheses"):
            LdapSettings(host="h", base_dn="dc=x", user_filter="objectClass=person")

    def test_unknown_settings_are_rejected(self):
        with pytest.raises(ValidationError):
            LdapSettings(host="h", base_dn="dc=x", page_sise=10)

    def test_an_empty_password_is_refused_rather_than_binding_anonymously(self):
        with pytest.raises(ValidationError):
            LdapAuth(bind_dn="cn=reader,dc=x", password="")
        assert "s3cret" not in repr(LdapAuth(bind_dn="cn=reader,dc=x", password="s3cret"))
