"""Test directories as LDIF, generated deterministically for ``slapadd``.

Two organisations:

* :func:`openldap_org` — an OpenLDAP-style tree under ``dc=example,dc=org``:
  ``inetOrgPerson``/``posixAccount`` people in OUs nested two deep, a
  ``groupOfNames`` with more members than one AD range (1,600), nested groups,
  a ``groupOfUniqueNames``, a ``posixGroup`` (``memberUid``), more groups than
  the server's size limit, and inactive people (``pwdAccountLockedTime``,
  ``shadowExpire``, ``employeeType: disabled``).
* :func:`ad_org` — an Active-Directory-shaped tree under
  ``dc=corp,dc=example,dc=com`` using the Microsoft schema OpenLDAP ships
  (``msuser.schema``): ``user``/``group``/``computer`` objects with binary
  ``objectGUID``, ``sAMAccountName``, ``userPrincipalName``,
  ``userAccountControl``, ``lastLogonTimestamp``, ``servicePrincipalName`` and
  managed service accounts.

Both return the LDIF text and a small summary of what is in it, so tests can
name entries without re-deriving the layout.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass, field

__all__ = [
    "OPENLDAP_SUFFIX",
    "AD_SUFFIX",
    "READER_DN",
    "AD_READER_DN",
    "OrgSummary",
    "openldap_org",
    "ad_org",
    "ssha",
    "filetime",
    "sid",
]

OPENLDAP_SUFFIX = "dc=example,dc=org"
AD_SUFFIX = "dc=corp,dc=example,dc=com"
READER_DN = f"cn=reader,ou=system,{OPENLDAP_SUFFIX}"
AD_READER_DN = f"cn=reader,ou=system,{AD_SUFFIX}"

# A fixed epoch for lastLogonTimestamp values: 2024-03-01T12:00:00Z as Windows FILETIME.
_FILETIME_EPOCH_OFFSET = 116444736000000000  # 1601-01-01 -> 1970-01-01 in 100 ns ticks


def filetime(unix_seconds: int) -> int:
    """Unix seconds -> Windows FILETIME (100 ns ticks since 1601-01-01 UTC)."""
    return unix_seconds * 10_000_000 + _FILETIME_EPOCH_OFFSET


def ssha(password: str, salt: bytes = b"ingest01") -> str:
    """An RFC 2307 ``{SSHA}`` userPassword value."""
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@dataclass
class OrgSummary:
    suffix: str
    users: list[str] = field(default_factory=list)          # DNs of people
    groups: list[str] = field(default_factory=list)         # DNs of groups
    ous: list[str] = field(default_factory=list)            # DNs of organizational units
    suspended: set[str] = field(default_factory=set)        # DNs the connector must mark SUSPENDED
    employee_disabled: set[str] = field(default_factory=set)  # DNs with employeeType: disabled
    big_group: str = ""                                     # DN of the group with > 1,500 members
    big_group_size: int = 0


def _entry(dn: str, attrs: list[tuple[str, str | bytes]]) -> str:
    lines = [f"dn: {dn}"]
    for name, value in attrs:
        if isinstance(value, bytes):
            lines.append(f"{name}:: {base64.b64encode(value).decode()}")
        elif value != value.strip() or not value.isascii() or value.startswith((":", "<")):
            lines.append(f"{name}:: {base64.b64encode(value.encode()).decode()}")
        else:
            lines.append(f"{name}: {value}")
    return "\n".join(lines) + "\n\n"


def _ou(dn: str, description: str | None = None, guid: bytes | None = None) -> str:
    name = dn.split(",", 1)[0].split("=", 1)[1]
    attrs: list[tuple[str, str | bytes]] = [("objectClass", "organizationalUnit")]
    if guid is not None:  # values of one attribute must be contiguous for slapadd
        attrs += [("objectClass", "ingestTestADObject"), ("objectGUID", guid)]
    attrs.append(("ou", name))
    if description:
        attrs.append(("description", description))
    return _entry(dn, attrs)


# Surnames / given names cycle to make plausible, mostly unique display names.
_GIVEN = ["Ada", "Alan", "Grace", "Linus", "Barbara", "Ken", "Dennis", "Margaret", "Edsger", "Frances",
          "John", "Radia", "Vint", "Hedy", "Tim", "Sophie", "Niklaus", "Karen", "Donald", "Shafi"]
_FAMILY = ["Lovelace", "Turing", "Hopper", "Torvalds", "Liskov", "Thompson", "Ritchie", "Hamilton",
           "Dijkstra", "Allen", "McCarthy", "Perlman", "Cerf", "Lamarr", "Berners-Lee", "Wilson",
           "Wirth", "Jones", "Knuth", "Goldwasser", "Kay", "Backus", "Naur", "Meyer", "Stroustrup"]


def openldap_org(
    n_users: int = 3000,
    big_group_size: int = 1600,
    n_project_groups: int = 520,
    reader_password: str = "reader-password",
) -> tuple[str, OrgSummary]:
    """The OpenLDAP test organisation (see the module docstring)."""
    s = OPENLDAP_SUFFIX
    out: list[str] = []
    summary = OrgSummary(suffix=s)
    out.append(_entry(s, [("objectClass", "dcObject"), ("objectClass", "organization"),
                          ("dc", "example"), ("o", "Example Org")]))
    ous = [
        (f"ou=people,{s}", "Everyone"),
        (f"ou=engineering,ou=people,{s}", "Engineering"),
        (f"ou=platform,ou=engineering,ou=people,{s}", "Platform team"),
        (f"ou=sales,ou=people,{s}", "Sales"),
        (f"ou=contractors,ou=people,{s}", None),
        (f"ou=groups,{s}", None),
        (f"ou=teams,ou=groups,{s}", "Team groups"),
        (f"ou=system,{s}", "Service bind accounts"),
    ]
    for dn, desc in ous:
        out.append(_ou(dn, desc))
        summary.ous.append(dn)
    out.append(_entry(READER_DN, [("objectClass", "applicationProcess"), ("objectClass", "simpleSecurityObject"),
                                  ("cn", "reader"), ("userPassword", ssha(reader_password))]))

    eng, platform, sales = [], [], []
    uids: list[str] = []
    for i in range(1, n_users + 1):
        uid = f"u{i:05d}"
        bucket = i % 10
        if bucket == 0:
            ou = f"ou=platform,ou=engineering,ou=people,{s}"
        elif bucket <= 3:
            ou = f"ou=engineering,ou=people,{s}"
        elif bucket <= 6:
            ou = f"ou=sales,ou=people,{s}"
        elif bucket <= 8:
            ou = f"ou=people,{s}"
        else:
            ou = f"ou=contractors,ou=people,{s}"
        dn = f"uid={uid},{ou}"
        given, family = _GIVEN[i % len(_GIVEN)], _FAMILY[i % len(_FAMILY)]
        attrs: list[tuple[str, str | bytes]] = [
            ("objectClass", "inetOrgPerson"), ("objectClass", "posixAccount"), ("objectClass", "shadowAccount"),
            ("uid", uid), ("cn", f"{given} {family} {i}"), ("sn", family), ("givenName", given),
            ("displayName", f"{given} {family}"), ("mail", f"{uid}@example.org"),
            ("uidNumber", str(10000 + i)), ("gidNumber", "10000"), ("homeDirectory", f"/home/{uid}"),
        ]
        if i % 50 == 7:
            attrs.append(("pwdAccountLockedTime", "000001010000Z"))
            summary.suspended.add(dn)
        if i % 97 == 3:
            attrs.append(("shadowExpire", "1"))  # expired on 1970-01-02
            summary.suspended.add(dn)
        if i % 71 == 5:
            attrs.append(("employeeType", "disabled"))
            summary.employee_disabled.add(dn)
        out.append(_entry(dn, attrs))
        summary.users.append(dn)
        uids.append(uid)
        if bucket == 0:
            platform.append(dn)
        elif bucket <= 3:
            eng.append(dn)
        elif bucket <= 6:
            sales.append(dn)

    g = f"ou=groups,{s}"
    t = f"ou=teams,ou=groups,{s}"

    def group(dn: str, cls: str, member_attr: str, members: list[str], description: str | None = None,
              extra: list[tuple[str, str]] | None = None) -> None:
        cn = dn.split(",", 1)[0].split("=", 1)[1]
        attrs: list[tuple[str, str | bytes]] = [("objectClass", cls), ("cn", cn)]
        if description:
            attrs.append(("description", description))
        attrs += extra or []
        attrs += [(member_attr, m) for m in members]
        out.append(_entry(dn, attrs))
        summary.groups.append(dn)

    summary.big_group = f"cn=all-staff,{g}"
    summary.big_group_size = min(big_group_size, n_users)
    group(summary.big_group, "groupOfNames", "member", summary.users[:big_group_size], "All staff")
    group(f"cn=platform-team,{t}", "groupOfNames", "member", platform, "Platform engineers")
    group(f"cn=engineering,{t}", "groupOfNames", "member", eng + [f"cn=platform-team,{t}"], "All engineers")
    group(f"cn=sales,{t}", "groupOfUniqueNames", "uniqueMember", sales, "Sales team")
    group(f"cn=admins,{g}", "groupOfNames", "member",
          summary.users[:3] + [f"cn=platform-team,{t}"], "Directory administrators")
    dev_uids = [dn.split(",", 1)[0].split("=", 1)[1] for dn in platform[:40]] + ["ghost-user"]
    group(f"cn=developers,{g}", "posixGroup", "memberUid", dev_uids, "POSIX developers",
          extra=[("gidNumber", "20000")])
    group(f"cn=placeholder,{g}", "groupOfNames", "member", [f"cn=nobody,{s}"], "Only a placeholder member")
    for p in range(n_project_groups):
        members = [summary.users[(p * 5 + k) % n_users] for k in range(5)]
        group(f"cn=project-{p:03d},{g}", "groupOfNames", "member", members)
    return "".join(out), summary


def _guid(name: str) -> bytes:
    """A stable binary objectGUID (as AD stores it: little-endian field order)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "ad:" + name).bytes_le


DOMAIN_SID = (21, 1004336348, 1177238915, 682003330)


def sid(rid: int) -> bytes:
    """The binary objectSid S-1-5-21-1004336348-1177238915-682003330-<rid>."""
    subs = (*DOMAIN_SID, rid)
    return bytes([1, len(subs)]) + (5).to_bytes(6, "big") + b"".join(x.to_bytes(4, "little") for x in subs)


def ad_org(n_users: int = 40, reader_password: str = "reader-password") -> tuple[str, OrgSummary]:
    """The Active-Directory-shaped test organisation (see the module docstring)."""
    s = AD_SUFFIX
    out: list[str] = []
    summary = OrgSummary(suffix=s)
    category = f"CN=Person,CN=Schema,CN=Configuration,{s}"
    group_category = f"CN=Group,CN=Schema,CN=Configuration,{s}"
    computer_category = f"CN=Computer,CN=Schema,CN=Configuration,{s}"
    sd = b"\x01\x00\x04\x80" + b"\x00" * 16  # a minimal self-relative security descriptor header
    mstop = [("instanceType", "4"), ("nTSecurityDescriptor", sd)]
    # slapd's person class requires sn (AD's does not), so machine-ish objects carry one too.

    out.append(_entry(s, [("objectClass", "dcObject"), ("objectClass", "organization"),
                          ("dc", "corp"), ("o", "Corp")]))
    ous = [f"ou=Corp,{s}", f"ou=Staff,ou=Corp,{s}", f"ou=Interns,ou=Staff,ou=Corp,{s}",
           f"ou=Service Accounts,ou=Corp,{s}", f"ou=Groups,ou=Corp,{s}", f"ou=system,{s}"]
    for dn in ous:
        out.append(_ou(dn, guid=_guid(dn)))
        summary.ous.append(dn)
    out.append(_entry(AD_READER_DN, [("objectClass", "applicationProcess"), ("objectClass", "simpleSecurityObject"),
                                     ("cn", "reader"), ("userPassword", ssha(reader_password))]))

    base_login = 1_709_294_400  # 2024-03-01T12:00:00Z
    for i in range(1, n_users + 1):
        given, family = _GIVEN[i % len(_GIVEN)], _FAMILY[i % len(_FAMILY)]
        cn = f"{given} {family} {i}"
        ou = f"ou=Interns,ou=Staff,ou=Corp,{s}" if i % 8 == 0 else f"ou=Staff,ou=Corp,{s}"
        dn = f"cn={cn},{ou}"
        sam = f"{given[0].lower()}{family.lower()}{i}"
        uac = 512
        if i % 7 == 3:
            uac = 514  # NORMAL_ACCOUNT | ACCOUNTDISABLE
            summary.suspended.add(dn)
        elif i % 11 == 4:
            uac = 66048  # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
        attrs: list[tuple[str, str | bytes]] = [
            ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
            ("objectClass", "user"), ("objectClass", "securityPrincipal"), ("cn", cn), ("sn", family), ("givenName", given),
            ("displayName", f"{given} {family}"), ("sAMAccountName", sam),
            ("userPrincipalName", f"{sam}@corp.example.com"), ("mail", f"{sam}@example.com"),
            ("userAccountControl", str(uac)), ("objectGUID", _guid(dn)), ("objectCategory", category), *mstop,
            ("objectSid", sid(1000 + i)), ("primaryGroupID", "1101" if i == 6 else "513"),
        ]
        if i % 5 != 0:  # every fifth user never logged on
            attrs.append(("lastLogonTimestamp", str(filetime(base_login - i * 3600))))
        out.append(_entry(dn, attrs))
        summary.users.append(dn)

    svc = f"ou=Service Accounts,ou=Corp,{s}"
    # A plain user object with an SPN: a service account by AD's own marking.
    spn_user = f"cn=svc-sql,{svc}"
    out.append(_entry(spn_user, [
        ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
        ("objectClass", "user"), ("objectClass", "securityPrincipal"), ("cn", "svc-sql"), ("sn", "svc-sql"), ("sAMAccountName", "svc-sql"),
        ("userPrincipalName", "svc-sql@corp.example.com"), ("userAccountControl", "66048"),
        ("servicePrincipalName", "MSSQLSvc/sql01.corp.example.com:1433"),
        ("objectGUID", _guid(spn_user)), ("objectCategory", category), *mstop,
        ("objectSid", sid(2000)), ("primaryGroupID", "513"),
    ]))
    summary.users.append(spn_user)
    # A (group) managed service account.
    for name, cls in (("msa-web", "msDS-ManagedServiceAccount"), ("gmsa-batch", "msDS-GroupManagedServiceAccount")):
        dn = f"cn={name},{svc}"
        out.append(_entry(dn, [
            ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
            ("objectClass", "user"), ("objectClass", "securityPrincipal"), ("objectClass", "computer"), ("objectClass", cls), ("cn", name), ("sn", name),
            ("sAMAccountName", name + "$"), ("userAccountControl", "4096"),
            ("objectGUID", _guid(dn)), ("objectCategory", f"CN={cls},CN=Schema,CN=Configuration,{s}"), *mstop,
            ("objectSid", sid(2001 if cls.startswith("msDS-M") else 2002)), ("primaryGroupID", "515"),
        ]))
        summary.users.append(dn)
    # A workstation: a computer object is not an account.
    pc = f"cn=WS001,ou=Corp,{s}"
    out.append(_entry(pc, [
        ("objectClass", "top"), ("objectClass", "person"), ("objectClass", "organizationalPerson"),
        ("objectClass", "user"), ("objectClass", "securityPrincipal"), ("objectClass", "computer"), ("cn", "WS001"), ("sn", "WS001"), ("sAMAccountName", "WS001$"),
        ("userAccountControl", "4096"), ("servicePrincipalName", "HOST/ws001.corp.example.com"),
        ("objectGUID", _guid(pc)), ("objectCategory", computer_category), *mstop,
    ]))

    groups = f"ou=Groups,ou=Corp,{s}"

    def group(cn: str, members: list[str], description: str | None = None, rid: int | None = None) -> str:
        dn = f"cn={cn},{groups}"
        attrs: list[tuple[str, str | bytes]] = [
            ("objectClass", "top"), ("objectClass", "group"), ("objectClass", "securityPrincipal"), ("cn", cn),
            ("sAMAccountName", cn), ("groupType", "-2147483646"), ("objectGUID", _guid(dn)),
            ("objectCategory", group_category), *mstop, ("objectSid", sid(rid or 1100 + len(summary.groups))),
        ]
        if description:
            attrs.append(("description", description))
        attrs += [("member", m) for m in members]
        out.append(_entry(dn, attrs))
        summary.groups.append(dn)
        return dn

    people = summary.users[:n_users]
    # Primary groups are not in member: everyone's is Domain Users (RID 513), user 6's is IT Admins (1101).
    group("Domain Users", [], "All domain users", rid=513)
    sql_admins = group("SQL Admins", [spn_user, people[0]], "Database administrators", rid=1102)
    group("IT Admins", [people[1], people[2], sql_admins], "IT administrators", rid=1101)
    group("All Staff", people, "Everyone in Staff")
    group("Web Servers", [f"cn=msa-web,{svc}", f"cn=gmsa-batch,{svc}"])
    return "".join(out), summary
