"""Directory entry -> normalized record: pure functions, no I/O.

An entry is ``(dn, attrs)`` where ``attrs`` maps the *lower-cased* attribute
description to its raw values (``list[bytes]``), exactly as the server sent
them. Mapping functions return dicts of the :mod:`ingest.records` shape; a
record that lacks its id comes out with ``None`` there, so the engine counts it
invalid instead of the connector dropping it silently.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ldap3.utils.dn import parse_dn

__all__ = [
    "Attrs",
    "Dialect",
    "UF_ACCOUNTDISABLE",
    "SERVICE_ACCOUNT_CLASSES",
    "account_record",
    "group_record",
    "ou_record",
    "entry_id",
    "first",
    "values",
    "guid_to_str",
    "sid_to_str",
    "primary_group_sid",
    "filetime_to_datetime",
    "generalized_time",
    "normalize_dn",
    "parent_dn",
    "MEMBER_ATTRIBUTES",
    "member_dn",
    "member_dns",
    "member_uids",
    "ranged_attribute",
    "next_range",
]

Attrs = Mapping[str, Sequence[bytes]]

UF_ACCOUNTDISABLE = 0x0002
SERVICE_ACCOUNT_CLASSES = frozenset({
    "msds-managedserviceaccount",
    "msds-groupmanagedserviceaccount",
    "msds-delegatedmanagedserviceaccount",
})
# AD groupType bits.
_GROUP_SCOPES = {0x2: "global", 0x4: "domain_local", 0x8: "universal"}
_GROUP_SECURITY = 0x80000000
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC)
_FILETIME_NEVER = 0x7FFFFFFFFFFFFFFF
_GROUP_CLASSES = ("groupofnames", "groupofuniquenames", "posixgroup", "groupofmembers", "group")


@dataclass(frozen=True)
class Dialect:
    """How one directory names things (derived from the settings)."""

    mode: str = "openldap"  # or "active_directory"
    id_attribute: str = "entryUUID"
    username_attribute: str = "uid"
    custom_attributes: tuple[str, ...] = ()

    @property
    def ad(self) -> bool:
        return self.mode == "active_directory"


# -- values --------------------------------------------------------------------
def values(attrs: Attrs, name: str) -> list[str]:
    """All values of ``name`` as text (undecodable bytes are replaced, never dropped)."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in attrs.get(name.lower(), ())]


def first(attrs: Attrs, name: str) -> str | None:
    vals = attrs.get(name.lower())
    if not vals:
        return None
    v = vals[0]
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _int(attrs: Attrs, name: str) -> int | None:
    v = first(attrs, name)
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def guid_to_str(raw: bytes) -> str:
    """AD's binary objectGUID -> its standard string form (first three fields little-endian).

    >>> guid_to_str(bytes.fromhex("78563412341278560123456789abcdef"))
    '12345678-1234-5678-0123-456789abcdef'
    """
    if len(raw) != 16:
        raise ValueError(f"an objectGUID is 16 bytes, got {len(raw)}")
    return str(uuid.UUID(bytes_le=bytes(raw)))


def sid_to_str(raw: bytes) -> str:
    """A binary Windows security identifier -> ``S-1-5-21-…-RID``.

    Layout: revision (1 byte), sub-authority count (1), identifier authority (6, big-endian),
    then that many 32-bit little-endian sub-authorities.
    """
    raw = bytes(raw)
    if len(raw) < 8 or len(raw) != 8 + 4 * raw[1]:
        raise ValueError(f"not a binary SID ({len(raw)} bytes)")
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i:12 + 4 * i], "little") for i in range(raw[1])]
    return "-".join(["S", str(raw[0]), str(authority), *map(str, subs)])


def primary_group_sid(attrs: Attrs) -> str | None:
    """The SID of an AD user's primary group: its own domain SID plus ``primaryGroupID`` (a RID).

    AD does not list primary-group members in the group's ``member`` (everyone's "Domain Users").
    """
    rid = _int(attrs, "primaryGroupID")
    raw = attrs.get("objectsid")
    if rid is None or not raw:
        return None
    try:
        own = sid_to_str(raw[0])
    except ValueError:
        return None
    return own.rsplit("-", 1)[0] + f"-{rid}"


def filetime_to_datetime(value: int | str | None) -> datetime | None:
    """Windows FILETIME (100 ns ticks since 1601-01-01 UTC) -> aware datetime; 0 and 'never' -> None."""
    if value is None:
        return None
    ticks = int(value)
    if ticks <= 0 or ticks >= _FILETIME_NEVER:
        return None
    return _FILETIME_EPOCH + timedelta(microseconds=ticks // 10)


_GENERALIZED = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})?(\d{2})?(?:[.,](\d+))?(Z|[+-]\d{2}(?:\d{2})?)?$")


def generalized_time(value: str | None) -> datetime | None:
    """LDAP GeneralizedTime (``20240301120000Z``, fractions and offsets allowed) -> aware datetime."""
    if not value:
        return None
    m = _GENERALIZED.match(value.strip())
    if not m:
        return None
    y, mo, d, h, mi, s, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi or 0), int(s or 0),
                      int((frac or "0")[:6].ljust(6, "0")), tzinfo=UTC)
    except ValueError:  # e.g. 000001010000Z, OpenLDAP's "locked forever"
        return None
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5] or 0))
        dt -= sign * offset
    return dt


# -- DNs -------------------------------------------------------------------------
_SPACE_AT_SEPARATOR = re.compile(r"\s[,=+]|[,=+]\s|^\s|\s$|\\")


def normalize_dn(dn: str) -> str:
    """A DN in the form used as a map key: lower-case, no spaces around separators.

    Only DNs with spaces next to a separator or escapes take the slow, exact path.
    """
    dn = dn.lower()
    if not _SPACE_AT_SEPARATOR.search(dn):
        return dn
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except Exception:
        return dn.strip()
    out = []
    for attr, value, sep in parts:
        out.append(f"{attr.strip()}={value.strip()}{sep or ''}")
    return "".join(out)


def parent_dn(dn: str) -> str | None:
    """The DN one level up (handles escaped commas), or None at the top."""
    i = 0
    while i < len(dn):
        c = dn[i]
        if c == "\\":
            i += 2
            continue
        if c == ",":
            return dn[i + 1:].strip() or None
        i += 1
    return None


_OPTIONAL_UID = re.compile(r"#'[01]*'B$")


MEMBER_ATTRIBUTES = ("member", "uniqueMember")


def member_dn(value: bytes | str, attribute: str = "member") -> str:
    """One member value as a DN (``uniqueMember`` loses its optional ``#'0101'B`` UID suffix)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if attribute.lower() == "uniquemember":
        text = _OPTIONAL_UID.sub("", text)
    return text


def member_dns(attrs: Attrs) -> Iterator[str]:
    """Member DNs of a group entry as sent (``member`` and ``uniqueMember``), without ranged parts."""
    for name in MEMBER_ATTRIBUTES:
        for v in attrs.get(name.lower(), ()):
            yield member_dn(v, name)


def member_uids(attrs: Attrs) -> list[str]:
    """``memberUid`` values of a posixGroup (login names, resolved to accounts by uid)."""
    return values(attrs, "memberUid")


# -- ranged retrieval (Active Directory) ----------------------------------------
_RANGE = re.compile(r"^(?P<attr>[^;]+)(?:;[^;]+)*;range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.I)


def ranged_attribute(attrs: Attrs, name: str) -> tuple[str, int, int | None] | None:
    """The ``name;range=LOW-HIGH`` key in an entry as (key, low, high); high None when it is ``*``."""
    name = name.lower()
    for key in attrs:
        m = _RANGE.match(key)
        if m and m.group("attr").lower() == name:
            high = m.group("high")
            return key, int(m.group("low")), None if high == "*" else int(high)
    return None


def next_range(name: str, high: int) -> str:
    """The attribute description asking for the values after ``high``: ``member;range=1500-*``."""
    return f"{name};range={high + 1}-*"


# -- ids -------------------------------------------------------------------------
def entry_id(attrs: Attrs, dialect: Dialect) -> str | None:
    """The entry's stable id: entryUUID, or objectGUID as the standard GUID string."""
    raw = attrs.get(dialect.id_attribute.lower())
    if not raw:
        return None
    value = raw[0]
    if dialect.id_attribute.lower() == "objectguid":
        try:
            return guid_to_str(value if isinstance(value, bytes) else str(value).encode("latin-1"))
        except ValueError:
            return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- records -----------------------------------------------------------------------
def _object_classes(attrs: Attrs) -> set[str]:
    return {v.lower() for v in values(attrs, "objectClass")}


def _custom(attrs: Attrs, names: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        vals = values(attrs, name)
        if vals:
            out[name] = vals[0] if len(vals) == 1 else vals
    return out


def _openldap_suspended(attrs: Attrs, today: date) -> bool:
    if attrs.get("pwdaccountlockedtime"):
        return True
    if (first(attrs, "nsAccountLock") or "").lower() == "true":
        return True
    expire = _int(attrs, "shadowExpire")
    if expire is not None and expire >= 0 and (today - date(1970, 1, 1)).days >= expire:
        return True
    return False


def account_record(dn: str, attrs: Attrs, dialect: Dialect, *, disabled: bool = False,
                   today: date | None = None) -> dict[str, Any]:
    """A person (or service) entry -> Account.

    OpenLDAP: SUSPENDED when ``pwdAccountLockedTime`` is set, ``nsAccountLock`` is true, ``shadowExpire``
    has passed or the entry matched ``disabled_filter`` (``disabled``). Active Directory: SUSPENDED when
    ``userAccountControl`` has ACCOUNTDISABLE; ``service`` for managed service accounts and users with a
    ``servicePrincipalName``; ``lastLogonTimestamp`` is the last activity.
    """
    classes = _object_classes(attrs)
    extra: dict[str, Any] = {"dn": dn}
    account_type = "user"
    if dialect.ad:
        uac = _int(attrs, "userAccountControl")
        suspended = disabled or bool(uac is not None and uac & UF_ACCOUNTDISABLE)
        if classes & SERVICE_ACCOUNT_CLASSES or attrs.get("serviceprincipalname"):
            account_type = "service"
        last = filetime_to_datetime(_int(attrs, "lastLogonTimestamp"))
        upn = first(attrs, "userPrincipalName")
        if upn:
            extra["user_principal_name"] = upn
        if uac is not None:
            extra["user_account_control"] = uac
    else:
        suspended = disabled or _openldap_suspended(attrs, today or datetime.now(UTC).date())
        last = generalized_time(first(attrs, "pwdLastSuccess") or first(attrs, "authTimestamp"))
        uid_number = _int(attrs, "uidNumber")
        if uid_number is not None:
            extra["uid_number"] = uid_number
    return {
        "account_id": entry_id(attrs, dialect),
        "email": first(attrs, "mail"),
        "username": first(attrs, dialect.username_attribute),
        "display_name": first(attrs, "displayName") or first(attrs, "cn"),
        "given_name": first(attrs, "givenName"),
        "family_name": first(attrs, "sn"),
        "status": "SUSPENDED" if suspended else "ACTIVE",
        "account_type": account_type,
        "custom_attributes": _custom(attrs, dialect.custom_attributes),
        "extra": extra,
        "last_activity_at": last,
    }


def group_record(dn: str, attrs: Attrs, dialect: Dialect) -> dict[str, Any]:
    """A group entry -> Entitlement (type ``group``, global)."""
    classes = _object_classes(attrs)
    extra: dict[str, Any] = {"dn": dn}
    kind = next((c for c in _GROUP_CLASSES if c in classes), None)
    if kind:
        extra["object_class"] = {"groupofnames": "groupOfNames", "groupofuniquenames": "groupOfUniqueNames",
                                 "posixgroup": "posixGroup", "groupofmembers": "groupOfMembers",
                                 "group": "group"}[kind]
    gid = _int(attrs, "gidNumber")
    if gid is not None:
        extra["gid_number"] = gid
    if dialect.ad:
        sam = first(attrs, "sAMAccountName")
        if sam:
            extra["sam_account_name"] = sam
        group_type = _int(attrs, "groupType")
        if group_type is not None:
            bits = group_type & 0xFFFFFFFF
            extra["group_scope"] = next((v for k, v in _GROUP_SCOPES.items() if bits & k), None)
            extra["security_group"] = bool(bits & _GROUP_SECURITY)
    return {
        "entitlement_type": "group",
        "resource_type": "",
        "resource_id": "",
        "entitlement_id": entry_id(attrs, dialect),
        "label": first(attrs, "cn") or first(attrs, "sAMAccountName"),
        "description": first(attrs, "description"),
        "is_assignable": True,
        "extra": extra,
    }


def ou_record(dn: str, attrs: Attrs, dialect: Dialect, parent_id: str | None) -> dict[str, Any]:
    """An organizationalUnit -> Resource of type ``ou``; ``parent_id`` is the enclosing OU's id, if any."""
    return {
        "resource_type": "ou",
        "resource_id": entry_id(attrs, dialect),
        "label": first(attrs, "ou") or first(attrs, "name"),
        "description": first(attrs, "description"),
        "parent_resource_type": "ou" if parent_id else None,
        "parent_resource_id": parent_id,
        "extra": {"dn": dn},
    }
