"""A fake "Acme" JSON API for the ``rest`` connector tests: one organisation, a different pagination on
every endpoint, served by :class:`~tests.servers.fake_api.FakeApi` (bearer token required)::

    /users                     cursor in the body   {"data": [...], "next_cursor": "..." | null}
    /groups                    RFC 8288 Link header (a JSON array per page)
    /groups/{id}/members       offset + total       {"items": [...], "total": T}
    /groups/{id}/subgroups     single page          {"groups": [...]}
    /apps                      page number          {"data": [...], "total_pages": P}

``AcmeOrg`` is pure data; ``serve(api, org)`` (re)publishes it, so a test changes the organisation
between two runs by editing it and serving again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from tests.servers.fake_api import FakeApi, Reply

TOKEN = "acme-rest-token-4c1d"


@dataclass
class AcmeOrg:
    users: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)  # group id -> user ids
    subgroups: dict[str, list[str]] = field(default_factory=dict)  # group id -> group ids
    apps: list[dict[str, Any]] = field(default_factory=list)

    def copy(self) -> AcmeOrg:
        return copy.deepcopy(self)


def make_org(n_users: int = 130, n_groups: int = 9) -> AcmeOrg:
    users = [{"id": 1000 + i, "login": f"user{i}",
              "profile": {"first": f"First{i}", "last": f"Last{i}", "email": f"user{i}@acme.example"},
              "state": "locked" if i % 17 == 0 else "active", "last_login": "2026-11-30T08:00:00Z"}
             for i in range(n_users)]
    groups = [{"id": f"grp-{g}", "name": f"Team {g}", "kind": "team"} for g in range(n_groups)]
    members = {g["id"]: [str(1000 + (k * 7 + j) % n_users) for j in range(k * 11)] for k, g in enumerate(groups)}
    members = {gid: sorted(set(ids), key=ids.index) for gid, ids in members.items()}
    subgroups = {"grp-0": ["grp-1", "grp-2"], "grp-3": ["grp-4"]}
    apps = [{"app_id": f"app{a}", "title": f"App {a}"} for a in range(23)]
    return AcmeOrg(users, groups, members, subgroups, apps)


def serve(api: FakeApi, org: AcmeOrg) -> None:
    api.require_bearer(TOKEN)
    api.serve_records("/users", org.users, style="cursor", page_size=25)
    api.serve_records("/groups", org.groups, style="link", page_size=4)
    for g in org.groups:
        api.serve_records(f"/groups/{g['id']}/members", [{"user_id": u} for u in org.members.get(g["id"], [])],
                          style="offset", page_size=10)
        subs = [{"id": s} for s in org.subgroups.get(g["id"], [])]
        api.route(f"/groups/{g['id']}/subgroups", lambda _r, subs=subs: Reply(200, {"groups": subs}))
    api.serve_records("/apps", org.apps, style="page", page_size=10)


CONFIG: dict[str, Any] = {
    "paginator": {"type": "cursor", "cursor_path": "next_cursor", "cursor_param": "cursor"},
    "streams": {
        "accounts": {
            "path": "/users", "params": {"limit": 25}, "selector": "data",
            "map": {"account_id": "id", "email": "profile.email", "username": "login",
                    "display_name": "{profile.first} {profile.last}",
                    "status": {"path": "state", "values": {"active": "ACTIVE", "locked": "SUSPENDED"},
                               "default": "ACTIVE"},
                    "last_activity_at": "last_login", "custom_attributes.first_name": "profile.first"},
        },
        "resources": {
            "path": "/apps", "selector": "data", "paginator": {"type": "page_number", "size": 10,
                                                               "total_pages_path": "total_pages"},
            "map": {"resource_type": {"const": "app"}, "resource_id": "app_id", "label": "title"},
        },
        "entitlements": {
            "path": "/groups", "paginator": {"type": "link_header"}, "params": {"per_page": 4},
            "map": {"entitlement_id": "id", "label": "name", "entitlement_type": {"const": "group"}},
        },
        "assignments": {
            "for_each": "entitlements", "path": "/groups/{parent.entitlement_id}/members",
            "paginator": {"type": "offset", "limit": 10, "total_path": "total"}, "selector": "items",
            "map": {"account_id": "user_id", "entitlement_id": "{parent.entitlement_id}"},
        },
        "nested_entitlements": {
            "for_each": "entitlements", "path": "/groups/{parent.entitlement_id}/subgroups",
            "paginator": {"type": "single_page"}, "selector": "groups",
            "map": {"entitlement_id": "{parent.entitlement_id}", "member_entitlement_id": "id"},
        },
    },
}
