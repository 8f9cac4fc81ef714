"""A loopback fake of GitHub's REST API (the read endpoints the github connector uses), after
GitHub's REST reference and its OpenAPI description (npm ``@octokit/openapi``, which
tests/test_github_conformance.py checks every answer against):

    GET /orgs/{org}                                         organization-full
    GET /orgs/{org}/members?role=all|admin|member           simple-user[]
    GET /orgs/{org}/outside_collaborators                   simple-user[]
    GET /orgs/{org}/teams                                   team[] (``parent``: nullable team-simple)
    GET /orgs/{org}/teams/{team_slug}/members?role=all|member|maintainer
                                                            team-member[]: a parent team's listing includes
                                                            its child teams' members; ``role`` and
                                                            ``inherited`` only when ``member_marks`` is on
    GET /orgs/{org}/teams/{team_slug}/repos                 minimal-repository[] with the team's
                                                            ``permissions`` and ``role_name``
    GET /orgs/{org}/repos?type=all                          minimal-repository[]
    GET /repos/{owner}/{repo}/collaborators?affiliation=direct   collaborator[] with ``permissions``, ``role_name``
    GET /orgs/{org}/organization-roles                      {"total_count", "roles": organization-role[]}
    GET /orgs/{org}/organization-roles/{id}/users | /teams  user-role-assignment[] / team-role-assignment[]

Paging: ``per_page`` (default 30, at most 100) and ``page``; ``Link`` with rel next, last, first,
prev as GitHub sends them. Every answer carries ``x-ratelimit-limit``, ``-remaining``, ``-used``,
``-reset`` (epoch seconds) and ``-resource: core``; once ``rate_limit`` requests are used in a
window of ``rate_window`` seconds the answer is 403 "API rate limit exceeded" with remaining 0, as
GitHub does, until the reset. Secondary limits are injected with :meth:`secondary_limit`: 403 with
the documented message, with or without ``retry-after``, while the primary window shows plenty
left and a reset an hour away (the trap a peer fell into). Errors have GitHub's body
``{"message", "documentation_url", "status"}``; a wrong token gets 401 "Bad credentials". A team
is found by its slug; renaming a team changes its slug and name, never its id.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["GithubOrg", "GithubServer", "make_org"]

DOCS = "https://docs.github.com/rest"
T0 = "2024-01-02T03:04:05Z"
PERMS = ("read", "triage", "write", "maintain", "admin")
FLAGS = {"read": "pull", "triage": "triage", "write": "push", "maintain": "maintain", "admin": "admin"}


@dataclass
class GithubOrg:
    """The organisation's state; tests change it between runs (under ``lock`` while serving)."""

    login: str = "octo-org"
    id: int = 9000
    users: dict[int, str] = field(default_factory=dict)             # id -> login
    members: dict[int, str] = field(default_factory=dict)           # id -> "admin" | "member"
    outside: set[int] = field(default_factory=set)
    teams: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {name, slug, parent, members}
    repos: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {name, private, collaborators, teams}
    roles: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {name, base_role, users, teams}
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_user(self, uid: int, login: str, role: str | None = "member") -> None:
        self.users[uid] = login
        if role:
            self.members[uid] = role

    def add_team(self, tid: int, name: str, parent: int | None = None, **members: str) -> None:
        self.teams[tid] = {"name": name, "slug": slugify(name), "parent": parent, "description": f"{name} team",
                           "members": {int(k[1:]): v for k, v in members.items()}}

    def add_repo(self, rid: int, name: str, private: bool = True) -> None:
        self.repos[rid] = {"name": name, "private": private, "collaborators": {}, "teams": {}}

    def descendants(self, tid: int) -> list[int]:
        kids = [t for t, v in self.teams.items() if v["parent"] == tid]
        return kids + [d for k in kids for d in self.descendants(k)]


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def make_org(n_members: int = 250, n_repos: int = 120, n_teams: int = 12) -> GithubOrg:
    """Members (every 25th an owner), outside collaborators, nested teams with maintainers, repos
    with direct collaborators and team grants, and two organization roles."""
    org = GithubOrg()
    for i in range(1, n_members + 1):
        org.add_user(1000 + i, f"user{i}", "admin" if i % 25 == 0 else "member")
    for i in range(1, 6):
        org.add_user(5000 + i, f"outside{i}", None)
        org.outside.add(5000 + i)
    for t in range(1, n_teams + 1):  # a binary tree of teams: 101 > 102, 103; 102 > 104, 105; ...
        members = {f"u{1000 + i}": ("maintainer" if i % 7 == t % 7 else "member")
                   for i in range(t * 5, t * 5 + 12)}
        org.add_team(100 + t, f"Team {t:02d}", 100 + t // 2 if t > 1 else None, **members)
    ids = sorted(org.teams)
    for r in range(1, n_repos + 1):
        org.add_repo(20000 + r, f"repo-{r:03d}", private=r % 4 != 0)
        repo = org.repos[20000 + r]
        for k in range(r % 4):
            repo["collaborators"][1000 + (r * 7 + k * 13) % n_members + 1] = PERMS[(r + k) % 5]
        if r % 10 == 0:
            repo["collaborators"][5000 + r // 10 % 5 + 1] = "read"
        repo["teams"][ids[r % len(ids)]] = PERMS[(r * 3) % 5]
    org.roles[8001] = {"name": "security_manager", "base_role": None, "permissions": ["read_audit_logs"],
                       "users": {1003}, "teams": {ids[0]}}
    org.roles[8002] = {"name": "ci_admin", "base_role": "write", "permissions": ["write_organization_actions"],
                       "users": {1004, 1005}, "teams": set()}
    return org


class GithubServer(VendorServer):
    thread_name = "github-fake"

    def __init__(self, org: GithubOrg, token: str, *, rate_limit: int = 5000, rate_window: float = 3600.0,
                 member_marks: bool = True, latency: float = 0.0, app: tuple[str, str, bytes] | None = None,
                 token_lifetime: float = 3600.0) -> None:
        self.org, self.token = org, token
        self.tokens = {token}  # the PAT and every installation token issued
        self.app = app  # (app id, installation id, the App's public key PEM)
        self.token_lifetime = token_lifetime
        self.rate_limit, self.rate_window = rate_limit, rate_window
        self.member_marks = member_marks
        self._window_start = time.time()
        self._used = 0
        super().__init__(latency=latency)

    # -- routes -------------------------------------------------------------------------------------------
    def routes(self):
        o = r"/orgs/(?P<org>[^/]+)"
        return [
            ("GET", o, self.get_org),
            ("GET", o + r"/members", self.list_members),
            ("GET", o + r"/outside_collaborators", self.list_outside),
            ("GET", o + r"/teams", self.list_teams),
            ("GET", o + r"/teams/(?P<slug>[^/]+)/members", self.list_team_members),
            ("GET", o + r"/teams/(?P<slug>[^/]+)/repos", self.list_team_repos),
            ("GET", o + r"/repos", self.list_repos),
            ("GET", r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/collaborators", self.list_collaborators),
            ("GET", o + r"/organization-roles", self.list_roles),
            ("GET", o + r"/organization-roles/(?P<rid>\d+)/users", self.list_role_users),
            ("GET", o + r"/organization-roles/(?P<rid>\d+)/teams", self.list_role_teams),
        ]

    def secondary_limit(self, path_pattern: str, retry_after: float | None = None, status: int = 403) -> None:
        """The next request to ``path_pattern`` hits a secondary limit (primary window: plenty left,
        reset an hour away)."""
        headers = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4990", "x-ratelimit-used": "10",
                   "x-ratelimit-reset": str(int(time.time()) + 3600), "x-ratelimit-resource": "core"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        self.inject(path_pattern, [Reply(status, error_body(
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you "
            "reach out to GitHub Support for help, please include the request ID ABCD:1234.", status),
            headers=headers)])

    # -- framing: auth, rate limit, paging ------------------------------------------------------------------
    def dispatch(self, req: SeenRequest) -> Reply:
        auth = req.header("authorization") or ""
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", req.path)
        if m and req.method == "POST":
            return self.installation_token(req, m.group(1))
        scheme, _, value = auth.partition(" ")
        if scheme not in ("Bearer", "token") or value not in self.tokens:
            return self._limited(Reply(401, error_body("Bad credentials", 401)), count=False)
        if req.header("accept") != "application/vnd.github+json":
            return Reply(415, error_body("Unsupported 'Accept' header", 415))
        with self._lock:
            now = time.time()
            if now >= self._window_start + self.rate_window:
                self._window_start, self._used = now, 0
            exhausted = self._used >= self.rate_limit
        if exhausted:
            return self._limited(Reply(403, error_body(
                "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, please "
                "include the request ID ABCD:5678.", 403)), count=False)
        return self._limited(super().dispatch(req), count=True)

    def installation_token(self, req: SeenRequest, installation: str) -> Reply:
        """``POST /app/installations/{id}/access_tokens`` with the App's RS256 JWT (``iss`` = app id,
        ``exp`` at most 10 minutes after ``iat``) -> 201 installation-token."""
        import jwt

        if self.app is None or installation != self.app[1]:
            return not_found()
        scheme, _, assertion = (req.header("authorization") or "").partition(" ")
        try:
            claims = jwt.decode(assertion, self.app[2], algorithms=["RS256"], options={"require": ["iat", "exp",
                                                                                                    "iss"]})
        except jwt.PyJWTError as e:
            return Reply(401, error_body(f"A JSON web token could not be decoded ({type(e).__name__})", 401))
        if scheme != "Bearer" or str(claims["iss"]) != self.app[0] or claims["exp"] - claims["iat"] > 600:
            return Reply(401, error_body("'Expiration time' claim ('exp') is too far in the future", 401))
        token = f"ghs_{uuid.uuid4().hex}"
        with self._lock:
            self.tokens.add(token)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.token_lifetime))
        return Reply(201, {"token": token, "expires_at": expires, "repository_selection": "all",
                           "permissions": {"members": "read", "administration": "read", "metadata": "read",
                                           "organization_custom_org_roles": "read"}})

    def _limited(self, reply: Reply, count: bool) -> Reply:
        if "x-ratelimit-remaining" in reply.headers:  # an injected answer brings its own
            return reply
        with self._lock:
            if count:
                self._used += 1
            remaining = max(0, self.rate_limit - self._used)
            reset = math.ceil(self._window_start + self.rate_window)
            used = self._used
        reply.headers.update({"x-ratelimit-limit": str(self.rate_limit), "x-ratelimit-remaining": str(remaining),
                              "x-ratelimit-used": str(used), "x-ratelimit-reset": str(reset),
                              "x-ratelimit-resource": "core"})
        return reply

    def page(self, req: SeenRequest, items: list[Any], build=None) -> Reply:
        """One page of ``items`` with GitHub's Link header (``build`` turns only that page's items into JSON)."""
        try:
            per_page = min(100, max(1, int(req.query.get("per_page", 30))))
            page = max(1, int(req.query.get("page", 1)))
        except ValueError:
            return Reply(422, error_body("Invalid request.", 422))
        last = max(1, math.ceil(len(items) / per_page))
        links = []
        for rel, n in (("prev", page - 1), ("next", page + 1), ("last", last), ("first", 1)):
            if (rel in ("prev", "first") and page > 1) or (rel in ("next", "last") and page < last):
                q = {**req.query, "per_page": per_page, "page": n}
                links.append(f'<{self.root_url}{req.path}?{urlencode(q)}>; rel="{rel}"')
        headers = {"Link": ", ".join(links)} if links else {}
        chunk = items[(page - 1) * per_page: page * per_page]
        return Reply(200, [build(i) for i in chunk] if build else chunk, headers=headers)

    def _org(self, m: re.Match) -> GithubOrg | None:
        return self.org if m.group("org").lower() == self.org.login.lower() else None

    def _team(self, slug: str) -> int | None:
        return next((t for t, v in self.org.teams.items() if v["slug"] == slug), None)

    # -- JSON shapes ------------------------------------------------------------------------------------------
    def user(self, uid: int) -> dict[str, Any]:
        login = self.org.users[uid]
        api = f"{self.root_url}/users/{login}"
        return {"login": login, "id": uid, "node_id": f"U_{uid}", "avatar_url": f"https://avatars.example/u/{uid}",
                "gravatar_id": "", "url": api, "html_url": f"https://github.example/{login}",
                "followers_url": f"{api}/followers", "following_url": f"{api}/following{{/other_user}}",
                "gists_url": f"{api}/gists{{/gist_id}}", "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
                "subscriptions_url": f"{api}/subscriptions", "organizations_url": f"{api}/orgs",
                "repos_url": f"{api}/repos", "events_url": f"{api}/events{{/privacy}}",
                "received_events_url": f"{api}/received_events", "type": "User", "site_admin": False,
                "user_view_type": "public"}

    def team_simple(self, tid: int) -> dict[str, Any]:
        t = self.org.teams[tid]
        api = f"{self.root_url}/organizations/{self.org.id}/team/{tid}"
        return {"id": tid, "node_id": f"T_{tid}", "url": api, "html_url": f"https://github.example/orgs/"
                f"{self.org.login}/teams/{t['slug']}", "name": t["name"], "slug": t["slug"],
                "description": t["description"], "privacy": "closed", "notification_setting":
                "notifications_enabled", "permission": "pull", "members_url": f"{api}/members{{/member}}",
                "repositories_url": f"{api}/repos", "type": "organization", "organization_id": self.org.id}

    def team(self, tid: int) -> dict[str, Any]:
        parent = self.org.teams[tid]["parent"]
        return {**self.team_simple(tid), "parent": self.team_simple(parent) if parent else None}

    def repo(self, rid: int, permission: str | None = None) -> dict[str, Any]:
        r = self.org.repos[rid]
        full = f"{self.org.login}/{r['name']}"
        api = f"{self.root_url}/repos/{full}"
        out = {"id": rid, "node_id": f"R_{rid}", "name": r["name"], "full_name": full,
               "owner": self.user_org(), "private": r["private"], "html_url": f"https://github.example/{full}",
               "description": f"The {r['name']} service", "fork": False, "url": api,
               "visibility": "private" if r["private"] else "public", "archived": False, "disabled": False}
        for k in ("archive", "assignees", "blobs", "branches", "collaborators", "comments", "commits", "compare",
                  "contents", "contributors", "deployments", "downloads", "events", "forks", "git_commits",
                  "git_refs", "git_tags", "hooks", "issue_comment", "issue_events", "issues", "keys", "labels",
                  "languages", "merges", "milestones", "notifications", "pulls", "releases", "stargazers",
                  "statuses", "subscribers", "subscription", "tags", "teams", "trees"):
            out[f"{k}_url"] = f"{api}/{k}"
        if permission:
            out["role_name"] = permission
            out["permissions"] = {FLAGS[p]: PERMS.index(p) <= PERMS.index(permission) for p in PERMS}
        return out

    def user_org(self) -> dict[str, Any]:
        api = f"{self.root_url}/users/{self.org.login}"
        return {**{k: v for k, v in self._user_like(api).items()}, "login": self.org.login, "id": self.org.id,
                "node_id": f"O_{self.org.id}", "type": "Organization"}

    def _user_like(self, api: str) -> dict[str, Any]:
        return {"avatar_url": "https://avatars.example/o", "gravatar_id": "", "url": api,
                "html_url": "https://github.example/o", "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
                "site_admin": False}

    # -- handlers ----------------------------------------------------------------------------------------------
    def get_org(self, req, m):
        if not self._org(m):
            return not_found()
        api = f"{self.root_url}/orgs/{self.org.login}"
        return Reply(200, {"login": self.org.login, "id": self.org.id, "node_id": f"O_{self.org.id}", "url": api,
                           "repos_url": f"{api}/repos", "events_url": f"{api}/events", "hooks_url": f"{api}/hooks",
                           "issues_url": f"{api}/issues", "members_url": f"{api}/members{{/member}}",
                           "public_members_url": f"{api}/public_members{{/member}}",
                           "avatar_url": "https://avatars.example/o", "description": "The octo org",
                           "name": "Octo Org", "html_url": "https://github.example/octo-org",
                           "has_organization_projects": True, "has_repository_projects": True,
                           "public_repos": 1, "public_gists": 0, "followers": 0, "following": 0,
                           "type": "Organization", "created_at": T0, "updated_at": T0, "archived_at": None,
                           "two_factor_requirement_enabled": True, "default_repository_permission": "read"})

    def list_members(self, req, m):
        if not self._org(m):
            return not_found()
        role = req.query.get("role", "all")
        if role not in ("all", "admin", "member"):
            return Reply(422, error_body("Validation Failed", 422))
        with self.org.lock:
            ids = sorted(u for u, r in self.org.members.items() if role == "all" or r == role)
            return self.page(req, ids, self.user)

    def list_outside(self, req, m):
        if not self._org(m):
            return not_found()
        with self.org.lock:
            return self.page(req, [self.user(u) for u in sorted(self.org.outside)])

    def list_teams(self, req, m):
        if not self._org(m):
            return not_found()
        with self.org.lock:
            return self.page(req, [self.team(t) for t in sorted(self.org.teams)])

    def list_team_members(self, req, m):
        role = req.query.get("role", "all")
        if role not in ("all", "member", "maintainer"):
            return Reply(422, error_body("Validation Failed", 422))
        with self.org.lock:
            tid = self._team(m.group("slug"))
            if not self._org(m) or tid is None:
                return not_found()
            listed: dict[int, tuple[str, bool]] = {}
            for d in self.org.descendants(tid):  # GitHub: "Team members will include the members of child teams"
                for uid in self.org.teams[d]["members"]:
                    listed[uid] = ("member", True)
            for uid, r in self.org.teams[tid]["members"].items():
                listed[uid] = (r, False)
            items = []
            for uid in sorted(listed):
                r, inherited = listed[uid]
                if role != "all" and r != role:
                    continue
                item = self.user(uid)
                if self.member_marks:
                    item.update(role=r, inherited=inherited)
                items.append(item)
            return self.page(req, items)

    def list_team_repos(self, req, m):
        with self.org.lock:
            tid = self._team(m.group("slug"))
            if not self._org(m) or tid is None:
                return not_found()
            return self.page(req, [self.repo(r, v["teams"][tid]) for r, v in sorted(self.org.repos.items())
                                   if tid in v["teams"]])

    def list_repos(self, req, m):
        if not self._org(m):
            return not_found()
        with self.org.lock:
            return self.page(req, [self.repo(r) for r in sorted(self.org.repos)])

    def list_collaborators(self, req, m):
        if m.group("owner") != self.org.login:
            return not_found()
        if req.query.get("affiliation", "all") not in ("outside", "direct", "all"):
            return Reply(422, error_body("Validation Failed", 422))
        with self.org.lock:
            rid = next((r for r, v in self.org.repos.items() if v["name"] == m.group("repo")), None)
            if rid is None:
                return not_found()
            items = []
            for uid, perm in sorted(self.org.repos[rid]["collaborators"].items()):
                items.append({**self.user(uid), "role_name": perm,
                              "permissions": {FLAGS[p]: PERMS.index(p) <= PERMS.index(perm) for p in PERMS}})
            return self.page(req, items)

    def list_roles(self, req, m):
        if not self._org(m):
            return not_found()
        with self.org.lock:
            roles = [{"id": rid, "name": r["name"], "description": f"{r['name']} role", "base_role": r["base_role"],
                      "source": "Organization", "permissions": r["permissions"], "organization": self.user_org(),
                      "created_at": T0, "updated_at": T0} for rid, r in sorted(self.org.roles.items())]
        return Reply(200, {"total_count": len(roles), "roles": roles})

    def list_role_users(self, req, m):
        with self.org.lock:
            role = self.org.roles.get(int(m.group("rid")))
            if not self._org(m) or role is None:
                return not_found()
            direct = set(role["users"])
            via = {uid: t for t in role["teams"] for uid in self.org.teams[t]["members"]}
            items = [{**self.user(u), "assignment": ("mixed" if u in via else "direct") if u in direct else "indirect",
                      "inherited_from": [self.team_simple(via[u])] if u in via else []}
                     for u in sorted(direct | set(via))]
            return self.page(req, items)

    def list_role_teams(self, req, m):
        with self.org.lock:
            role = self.org.roles.get(int(m.group("rid")))
            if not self._org(m) or role is None:
                return not_found()
            return self.page(req, [{**self.team(t), "assignment": "direct"} for t in sorted(role["teams"])])


def error_body(message: str, status: int) -> dict[str, Any]:
    return {"message": message, "documentation_url": DOCS, "status": str(status)}


def not_found() -> Reply:
    return Reply(404, error_body("Not Found", 404))
