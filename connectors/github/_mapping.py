"""Pure functions from GitHub's REST answers to ingest records.

Ids are GitHub's numeric ids as text (a user or team keeps its id when renamed: a team rename
changes its slug and name, never its id, so it is a modification).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ORG_ROLES",
    "PERMISSIONS",
    "map_account",
    "map_org_role",
    "map_repo",
    "map_team",
    "repo_entitlements",
    "repo_permission",
    "repo_permission_id",
    "team_id",
    "team_maintainer_id",
]

ORG_ROLES = {"admin": "Organization owner", "member": "Organization member"}
PERMISSIONS = ("read", "triage", "write", "maintain", "admin")  # weakest first
_LEGACY = {"pull": "read", "push": "write"}


def _id(raw: dict[str, Any]) -> str | None:
    value = raw.get("id")
    return str(value) if value is not None else None


def team_id(team: Any) -> str:
    return f"team:{team['id'] if isinstance(team, dict) else team}"


def team_maintainer_id(team: Any) -> str:
    return f"{team_id(team)}:maintainer"


def repo_permission_id(repo_id: Any, permission: str) -> str:
    return f"{repo_id}:{permission}"


def map_account(raw: dict[str, Any], relationship: str) -> dict[str, Any]:
    """A simple-user from the member or outside-collaborator listing -> an Account.
    ``relationship`` is ``member`` or ``outside_collaborator`` (the org role is an assignment)."""
    return {
        "account_id": _id(raw),
        "username": raw.get("login"),
        "display_name": raw.get("name") or raw.get("login"),
        "email": raw.get("email") or None,
        "account_type": "service" if raw.get("type") == "Bot" else "user",
        "custom_attributes": {"relationship": relationship},
        "extra": {"login": raw.get("login"), "node_id": raw.get("node_id"), "type": raw.get("type"),
                  "site_admin": raw.get("site_admin")},
    }


def map_team(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """A team -> its membership Entitlement ``team:<id>`` and its maintainer Entitlement
    ``team:<id>:maintainer`` (``extra.parent_id`` is the nesting, also kept as nested_entitlements)."""
    parent = raw.get("parent") if isinstance(raw.get("parent"), dict) else None
    extra = {"slug": raw.get("slug"), "privacy": raw.get("privacy"), "node_id": raw.get("node_id"),
             "parent_id": str(parent["id"]) if parent else None, "type": raw.get("type")}
    return [
        {"entitlement_type": "team", "entitlement_id": team_id(raw), "label": raw.get("name"),
         "description": raw.get("description") or None, "extra": extra},
        {"entitlement_type": "team_maintainer", "entitlement_id": team_maintainer_id(raw),
         "label": f"{raw.get('name')} (maintainer)", "description": None, "extra": {"team_id": _id(raw)}},
    ]


def map_repo(raw: dict[str, Any]) -> dict[str, Any]:
    """A repository -> a Resource (what changes with every push, sizes and counts, left out)."""
    return {
        "resource_type": "repository",
        "resource_id": _id(raw),
        "label": raw.get("full_name"),
        "description": raw.get("description") or None,
        "extra": {k: raw.get(k) for k in ("name", "full_name", "node_id", "private", "visibility", "archived",
                                          "fork", "disabled", "is_template") if k in raw},
    }


def repo_entitlements(repo: dict[str, Any], extra_roles: set[str] | frozenset[str] = frozenset()
                      ) -> list[dict[str, Any]]:
    """The permissions one can hold on a repository (and any custom repository role seen on it)."""
    rid, name = _id(repo), repo.get("full_name")
    return [{"entitlement_type": "repository_permission", "resource_type": "repository", "resource_id": rid,
             "entitlement_id": repo_permission_id(rid, p), "label": f"{p} on {name}",
             "extra": {"permission": p, "custom": p not in PERMISSIONS}}
            for p in (*PERMISSIONS, *sorted(extra_roles - set(PERMISSIONS)))]


def repo_permission(raw: dict[str, Any]) -> str | None:
    """The permission a collaborator or team holds: ``role_name`` (custom roles too), else the
    strongest true flag of ``permissions``."""
    role = raw.get("role_name")
    if isinstance(role, str) and role:
        return _LEGACY.get(role, role)
    flags = raw.get("permissions") if isinstance(raw.get("permissions"), dict) else {}
    for p in reversed(PERMISSIONS):
        if flags.get({"read": "pull", "write": "push"}.get(p, p)):
            return p
    return None


def map_org_role(raw: dict[str, Any]) -> dict[str, Any]:
    """An organization role (custom or predefined) -> an Entitlement ``org_role:<id>``."""
    return {
        "entitlement_type": "organization_role", "entitlement_id": f"org_role:{raw.get('id')}",
        "label": raw.get("name"), "description": raw.get("description") or None,
        "extra": {"base_role": raw.get("base_role"), "source": raw.get("source"),
                  "permissions": sorted(raw.get("permissions") or [])},
    }
