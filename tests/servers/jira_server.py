"""A loopback fake of Jira Cloud's REST API v3 (the read endpoints the jira connector uses), after
Atlassian's reference:

    GET /rest/api/3/myself
    GET /rest/api/3/users/search?startAt&maxResults         bare array; maxResults capped at 100 silently
    GET /rest/api/3/group/bulk?startAt&maxResults           PageBeanGroupDetails; capped at 50
    GET /rest/api/3/group/member?groupId&includeInactiveUsers&startAt&maxResults   PageBeanUserDetails; <= 50
    GET /rest/api/3/project/search?startAt&maxResults       PageBeanProject; capped at 50
    GET /rest/api/3/project/{id}/role                       {"<role name>": "<absolute URL of the role>"}
    GET /rest/api/3/project/{id}/role/{roleId}              ProjectRole with actors

Auth: HTTP Basic e-mail:API token (401 ``{"errorMessages": ["..."], "errors": {}}`` otherwise).
Page beans carry ``startAt``, ``maxResults`` (the capped value), ``total``, ``isLast``, ``values``.
429 with ``Retry-After`` (seconds) and ``X-RateLimit-*``/``RateLimit-Reason`` is injected with
:meth:`throttle`.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["JiraServer", "JiraSite", "make_site"]


@dataclass
class JiraSite:
    users: dict[str, dict[str, Any]] = field(default_factory=dict)     # accountId -> {name, email, type, active}
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)    # groupId -> {name, members: set}
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {key, name, roles: {rid: actors}}
    roles: dict[str, str] = field(default_factory=lambda: {"10002": "Administrators", "10003": "Developers",
                                                            "10004": "Viewers"})
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def make_site(n_users: int = 260, n_groups: int = 5, n_projects: int = 7) -> JiraSite:
    site = JiraSite()
    for i in range(n_users):
        site.users[f"5b10ac8d82e05b22cc7d{i:04d}"] = {
            "name": f"User {i}", "email": f"u{i}@example.com" if i % 3 else None,
            "type": "app" if i % 40 == 39 else ("customer" if i % 50 == 49 else "atlassian"), "active": i % 17 != 0}
    ids = sorted(site.users)
    for g in range(n_groups):
        site.groups[f"276f955c-63d7-42c8-9520-92d01dca{g:04d}"] = {
            "name": f"group-{g}", "members": {ids[(g * 31 + k) % n_users] for k in range(20 + g * 30)}}
    gids = sorted(site.groups)
    for p in range(n_projects):
        site.projects[str(10000 + p)] = {"key": f"P{p}", "name": f"Project {p}", "roles": {
            "10002": [("user", ids[p])], "10003": [("group", gids[p % n_groups]), ("user", ids[(p + 10) % n_users])],
            "10004": [("group", gids[(p + 1) % n_groups])]}}
    return site


class JiraServer(VendorServer):
    thread_name = "jira-fake"
    CAPS = {"users/search": 100, "group/bulk": 50, "group/member": 50, "project/search": 50}

    def __init__(self, site: JiraSite, email: str, token: str, latency: float = 0.0) -> None:
        self.site = site
        self.basic = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        super().__init__(latency=latency)

    def routes(self):
        a = r"/rest/api/3"
        return [("GET", a + r"/myself", self.myself), ("GET", a + r"/users/search", self.users_search),
                ("GET", a + r"/group/bulk", self.group_bulk), ("GET", a + r"/group/member", self.group_member),
                ("GET", a + r"/project/search", self.project_search),
                ("GET", a + r"/project/(?P<p>[^/]+)/role", self.project_roles),
                ("GET", a + r"/project/(?P<p>[^/]+)/role/(?P<r>\d+)", self.project_role)]

    def throttle(self, path_pattern: str, retry_after: float = 1) -> None:
        self.inject(path_pattern, [Reply(429, {"errorMessages": ["Rate limit exceeded."]}, headers={
            "Retry-After": f"{retry_after:g}", "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0",
            "RateLimit-Reason": "jira-burst-based"})])

    def dispatch(self, req: SeenRequest) -> Reply:
        if req.header("authorization") != self.basic:
            return Reply(401, {"errorMessages": ["Client must be authenticated to access this resource."],
                               "errors": {}})
        return super().dispatch(req)

    def _window(self, req: SeenRequest, endpoint: str, default: int) -> tuple[int, int]:
        start = max(0, int(req.query.get("startAt", 0)))
        asked = max(1, int(req.query.get("maxResults", default)))
        return start, min(asked, self.CAPS[endpoint])

    def bean(self, req: SeenRequest, endpoint: str, items: list[Any]) -> Reply:
        start, size = self._window(req, endpoint, 50)
        values = items[start: start + size]
        return Reply(200, {"self": f"{self.root_url}{req.path}", "maxResults": size, "startAt": start,
                           "total": len(items), "isLast": start + size >= len(items), "values": values})

    def user(self, uid: str) -> dict[str, Any]:
        u = self.site.users[uid]
        out = {"self": f"{self.root_url}/rest/api/3/user?accountId={uid}", "accountId": uid,
               "accountType": u["type"], "displayName": u["name"], "active": u["active"], "timeZone": "UTC",
               "locale": "en_US", "avatarUrls": {"48x48": "https://avatar.example/48"}}
        if u["email"]:
            out["emailAddress"] = u["email"]
        return out

    def myself(self, req, m):
        return Reply(200, self.user(sorted(self.site.users)[1]))

    def users_search(self, req, m):
        start, size = self._window(req, "users/search", 50)
        with self.site.lock:
            ids = sorted(self.site.users)[start: start + size]
            return Reply(200, [self.user(u) for u in ids])

    def group_bulk(self, req, m):
        with self.site.lock:
            return self.bean(req, "group/bulk", [{"groupId": g, "name": v["name"]}
                                                 for g, v in sorted(self.site.groups.items())])

    def group_member(self, req, m):
        with self.site.lock:
            group = self.site.groups.get(req.query.get("groupId", ""))
            if group is None:
                return Reply(404, {"errorMessages": ["Specified group does not exist."], "errors": {}})
            members = sorted(group["members"])
            if req.query.get("includeInactiveUsers") != "true":
                members = [u for u in members if self.site.users[u]["active"]]
            return self.bean(req, "group/member", [self.user(u) for u in members])

    def project_search(self, req, m):
        with self.site.lock:
            return self.bean(req, "project/search", [
                {"self": f"{self.root_url}/rest/api/3/project/{p}", "id": p, "key": v["key"], "name": v["name"],
                 "projectTypeKey": "software", "simplified": False, "style": "classic", "isPrivate": False}
                for p, v in sorted(self.site.projects.items())])

    def project_roles(self, req, m):
        with self.site.lock:
            project = self.site.projects.get(m.group("p"))
            if project is None:
                return Reply(404, {"errorMessages": ["No project could be found."], "errors": {}})
            return Reply(200, {self.site.roles[r]: f"{self.root_url}/rest/api/3/project/{m.group('p')}/role/{r}"
                               for r in project["roles"]})

    def project_role(self, req, m):
        with self.site.lock:
            project = self.site.projects.get(m.group("p"))
            if project is None or m.group("r") not in project["roles"]:
                return Reply(404, {"errorMessages": ["No project role could be found."], "errors": {}})
            actors = []
            for n, (kind, ident) in enumerate(project["roles"][m.group("r")]):
                if kind == "user":
                    actors.append({"id": n, "type": "atlassian-user-role-actor", "displayName":
                                   self.site.users[ident]["name"], "actorUser": {"accountId": ident}})
                else:
                    name = self.site.groups[ident]["name"]
                    actors.append({"id": n, "type": "atlassian-group-role-actor", "displayName": name,
                                   "name": name, "actorGroup": {"name": name, "displayName": name, "groupId": ident}})
            rid = m.group("r")
            return Reply(200, {"self": f"{self.root_url}{req.path}", "name": self.site.roles[rid], "id": int(rid),
                               "description": f"{self.site.roles[rid]} of the project", "actors": actors})
