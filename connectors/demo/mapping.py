"""Demo API payload -> normalized record (pure functions, tested without HTTP).

Grants from ``/api/memberships`` already have the Assignment shape
(``account_id``, ``entitlement_id``, ``resource_type``, ``resource_id``) and are
passed through untouched: at millions of grants a per-record copy costs seconds.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CUSTOM_ATTRIBUTES",
    "map_group",
    "map_license",
    "map_nested_group",
    "map_user",
    "map_workspace",
    "map_workspace_role",
]

# The custom attributes (the API's ``profile`` holds exactly these, leaving out unknown ones).
CUSTOM_ATTRIBUTES: dict[str, str] = {
    "department": "Department the person works in.",
    "title": "Job title.",
    "cost_center": "Cost centre the seat is charged to.",
    "manager": "account_id of the person's manager (the owner, for a service account).",
    "location": "Office or 'Remote'.",
    "employee_id": "HR employee number.",
}
_STATUS = {"active": "ACTIVE", "suspended": "SUSPENDED", "deactivated": "DEPROVISIONED", "invited": "PENDING"}


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``/api/users`` object -> Account. An unknown status passes through (and fails validation)."""
    status = raw.get("status")
    return {
        "account_id": raw["id"],
        "email": raw.get("email"),
        "username": raw.get("username"),
        "display_name": raw.get("display_name"),
        "given_name": raw.get("first_name"),
        "family_name": raw.get("last_name"),
        "status": _STATUS.get(status, status),
        "account_type": "service" if raw.get("type") == "service" else "user",
        "custom_attributes": raw.get("profile") or {},
        "extra": {"created_at": raw.get("created_at")},
        "last_activity_at": raw.get("last_login_at"),
    }


def map_workspace(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``/api/workspaces`` object -> Resource (workspaces form a tree through ``parent_id``)."""
    parent = raw.get("parent_id")
    return {
        "resource_type": "workspace",
        "resource_id": raw["id"],
        "label": raw.get("name"),
        "description": raw.get("description"),
        "parent_resource_type": "workspace" if parent else None,
        "parent_resource_id": parent,
        "extra": {"created_at": raw.get("created_at")},
    }


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``/api/groups`` object -> Entitlement (global: no resource)."""
    return {
        "entitlement_type": "group",
        "entitlement_id": raw["id"],
        "label": raw.get("name"),
        "description": raw.get("description"),
        "extra": {"created_at": raw.get("created_at")},
    }


def map_nested_group(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A group that sits inside another -> NestedEntitlement (None for a top-level group)."""
    parent = raw.get("parent_id")
    return {"entitlement_id": parent, "member_entitlement_id": raw["id"]} if parent else None


def map_workspace_role(workspace: dict[str, Any], role: dict[str, Any]) -> dict[str, Any]:
    """A role (``/api/roles``) in a workspace -> Entitlement scoped to that workspace: the role's id
    is the entitlement id, the workspace its resource (as in ``/api/memberships``)."""
    return {
        "entitlement_type": "role",
        "resource_type": "workspace",
        "resource_id": workspace["id"],
        "entitlement_id": role["id"],
        "label": role.get("name"),
        "description": role.get("description"),
    }


def map_license(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``/api/licenses`` object -> Entitlement (global; one licence per person)."""
    return {
        "entitlement_type": "license",
        "entitlement_id": raw["id"],
        "label": raw.get("name"),
        "description": raw.get("description"),
    }
