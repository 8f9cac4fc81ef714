"""SCIM resources -> records: the scim connector's pure functions (see :mod:`connectors.scim`).

They live apart from the connector so that a staging worker that maps pages handed on undecoded
(:mod:`ingest.pages`) imports them and nothing of the HTTP layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ingest.errors import ProtocolError
from ingest.records import AccountStatus

__all__ = ["ENTERPRISE_USER", "LIST_RESPONSE", "group_resource", "list_response_resources", "map_group",
           "map_group_members", "map_members", "map_user", "primary_email"]

ENTERPRISE_USER = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
_ENTERPRISE_FIELDS = ("employeeNumber", "costCenter", "organization", "division", "department")
_CORE_FIELDS = ("title", "userType", "externalId")


# -- pagination --------------------------------------------------------------------------------------

def list_response_resources(data: Any, what: str = "response") -> list[Any]:
    """The ``Resources`` of a SCIM ListResponse; ProtocolError when ``data`` is not one."""
    if not isinstance(data, dict) or not (
        LIST_RESPONSE in (data.get("schemas") or []) or "Resources" in data or "totalResults" in data
    ):
        raise ProtocolError(f"the answer to {what} is not a SCIM ListResponse (no Resources / totalResults)")
    resources = data.get("Resources")
    if resources is None:  # RFC 7644: Resources may be left out when totalResults is 0
        if data.get("totalResults") not in (0, None):
            raise ProtocolError(f"the answer to {what} announces totalResults={data.get('totalResults')} "
                                "but has no Resources")
        return []
    if not isinstance(resources, list):
        raise ProtocolError(f"the answer to {what} has Resources that is not a list")
    return resources


# -- mapping (pure functions) --------------------------------------------------------------------------

def primary_email(emails: Any) -> str | None:
    """The ``primary`` address, else the first ``work`` one, else the first; None when there is none."""
    if not isinstance(emails, list):
        return None
    first = work = None
    for e in emails:  # one pass (this runs for every user)
        if not isinstance(e, dict):
            continue
        v = e.get("value")
        if not isinstance(v, str) or not (v := v.strip()):
            continue
        if _true(e.get("primary")):
            return v
        if first is None:
            first = v
        if work is None and str(e.get("type") or "").lower() == "work":
            work = v
    return work if work is not None else first


def _true(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _false(v: Any) -> bool:
    return v is False or (isinstance(v, str) and v.strip().lower() == "false")


def _str(v: Any) -> str | None:
    if type(v) is str:
        return v
    if v is None or isinstance(v, (dict, list)):
        return None
    return v if isinstance(v, str) else str(v)


def _without_location(raw: dict[str, Any], *drop_meta: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw resource minus fields that say how it was fetched, not what it is."""
    out = {k: v for k, v in raw.items() if k not in drop} if drop and not raw.keys().isdisjoint(drop) else dict(raw)
    meta = out.get("meta")
    if isinstance(meta, dict):
        meta = dict(meta)
        for k in ("location", *drop_meta):
            meta.pop(k, None)
        out["meta"] = meta
    return out


# what map_user never reads (extra leaves them out): the users stream's ignored_fields (ingest.memo)
USER_IGNORED_FIELDS = ("groups", "meta.location", "meta.lastModified", "meta.version")


def map_user(raw: Any) -> dict[str, Any]:
    """A SCIM User resource -> an Account record (dict). ``extra`` keeps the raw resource
    without what changes when the user does not: ``meta.location`` (depends on the URL it
    was fetched from), ``meta.lastModified`` / ``meta.version`` (provider bookkeeping, moved
    by logins and membership changes) and the read-only ``groups`` attribute (memberships
    are assignments, read from the groups)."""
    if not isinstance(raw, dict):
        return {"account_id": None, "extra": {"raw": raw}}
    get, text = raw.get, _str  # this runs for every user: no more function layers than needed
    name = get("name")
    if not isinstance(name, dict):
        name = {}
    ent = get(ENTERPRISE_USER)
    custom: dict[str, Any] = {}
    if isinstance(ent, dict):
        for key in _ENTERPRISE_FIELDS:
            if (v := text(ent.get(key))) is not None:
                custom[key] = v
        manager = ent.get("manager")
        if (v := text(manager.get("value") if isinstance(manager, dict) else manager)) is not None:
            custom["manager"] = v
    for key in _CORE_FIELDS:
        if (v := text(get(key))) is not None:
            custom[key] = v
    active = get("active")
    return {
        "account_id": text(get("id")),
        "email": primary_email(get("emails")),
        "username": text(get("userName")),
        "display_name": text(get("displayName")) or text(name.get("formatted")),
        "given_name": text(name.get("givenName")),
        "family_name": text(name.get("familyName")),
        "status": _SUSPENDED if active is False or (active is not True and _false(active)) else _ACTIVE,
        "account_type": "user",
        "custom_attributes": custom,
        "extra": _without_location(raw, "lastModified", "version", drop=("groups",)),
    }


_ACTIVE, _SUSPENDED = AccountStatus.ACTIVE.value, AccountStatus.SUSPENDED.value


def map_group(raw: Any) -> dict[str, Any]:
    """A SCIM Group resource -> a global Entitlement of type ``group`` (dict).

    ``extra`` keeps the group without ``members`` (they are assignments) and
    without ``meta.lastModified`` / ``meta.version`` / ``meta.location``, which
    change with every membership change or fetch URL, so that an entitlement
    changes only when the group itself does.
    """
    if not isinstance(raw, dict):
        return {"entitlement_type": "group", "entitlement_id": None, "extra": {"raw": raw}}
    return {
        "entitlement_type": "group",
        "resource_type": "",
        "resource_id": "",
        "entitlement_id": _str(raw.get("id")),
        "label": _str(raw.get("displayName")),
        "description": _str(raw.get("description")),
        "is_assignable": True,
        "extra": _without_location(raw, "lastModified", "version", drop=("members",)),
    }


def map_members(group_id: str, members: Any, group_ids: Iterable[str] | set[str]) -> list[dict[str, Any]]:
    """A group's ``members`` -> Assignment dicts (accounts) and NestedEntitlement dicts (groups).

    A member is a group when its ``type`` says ``Group`` or its ``value`` is the
    id of a known group; each member is reported once.
    """
    if members is None:
        return []
    if not isinstance(members, list):
        raise ProtocolError(f"group {group_id}: members is not a list")
    out: list[dict[str, Any]] = []
    add = out.append
    seen_accounts: set[str] = set()
    seen_groups: set[str] = set()
    text = _str
    for m in members:  # this runs for every membership (5 million in a large tenant): one layer, no lower() for "User"
        if type(m) is dict or isinstance(m, dict):
            value = m.get("value")
            if type(value) is not str:
                value = text(value)
            kind = m.get("type")
            if kind is None or kind == "User":
                nested = value is not None and value in group_ids
            else:
                kind = kind.lower() if type(kind) is str else str(kind or "").lower()
                nested = kind == "group" or (value is not None and value in group_ids)
        else:
            value, nested = None, False
        if nested:
            if value is not None:
                if value in seen_groups:
                    continue
                seen_groups.add(value)
            add({"entitlement_id": group_id, "member_entitlement_id": value})
        else:
            if value is not None:
                if value in seen_accounts:
                    continue
                seen_accounts.add(value)
            add({"account_id": value, "entitlement_id": group_id, "resource_type": "", "resource_id": ""})
    return out


def group_resource(body: Any, *, base_url: str, connector: str | None = None) -> list[Any]:
    """The answer to ``GET /Groups/{id}`` as the one record of its page (``base_url``, redacted, and
    ``connector`` name where a wrong answer came from)."""
    if not isinstance(body, dict):
        raise ProtocolError(
            f"{base_url} does not answer like a SCIM 2.0 service (GET /Groups/{{id}} is not a Group resource); "
            "check settings.base_url: it must be the SCIM root that /Users hangs off (often ending in /scim/v2), "
            "not a web page or another API", connector=connector)
    return [body]


def map_group_members(group: dict[str, Any], parent: dict[str, Any], *, group_ids: frozenset[str]
                      ) -> list[dict[str, Any]]:
    """The members of a group read on its own (absent members = no members: RFC 7643 leaves
    unassigned attributes out); ``parent`` is its entitlement record."""
    return map_members(parent["entitlement_id"], group.get("members"), group_ids)
