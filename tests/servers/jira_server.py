"""A loopback fake of Jira Cloud's REST API v3 (the read endpoints the jira connector uses), after
Atlassian's reference:

    GET /rest/api/3/myself
    GET /rest/api/3/users/search?startAt&maxResults         bare array; maxResults capped at 100 silently
    GET /rest/api/3/group/bulk?startAt&maxResults           PageBeanGroupDetails; capped at 50
    GET /rest/api/3/group/member?groupId&includeInactiveUsers&startAt&maxResults   PageBeanUserDetails; <= 50
    GET /rest/api/3/project/search?startAt&maxResults       PageBeanProject; capped at 50
    GET /rest/api/3/project/{id}/role                       {"<role name>": "<absolute URL of the role>"}
    GET /rest/api/3/project/{id}/role/{roleId}              ProjectRole with actors

Auth: HTTP Basic e-mail:API token (401 ``{"errorMessages": ["..."], "errors": {}}`` otherwise); or,
with ``oauth=`` an :class:`AtlassianAuth`, an OAuth 2.0 (3LO) access token it issued
(``Authorization: Bearer``), the paths then under ``/ex/jira/{cloudId}`` as on api.atlassian.com
(401 ``{"code": 401, "message": "Unauthorized"}`` for an expired or unknown one, and
``"Unauthorized; scope does not match"`` without the classic scope the endpoint needs:
``read:jira-user``, ``read:jira-work`` for project/search, ``manage:jira-configuration`` for roles).
Page beans carry ``startAt``, ``maxResults`` (the capped value), ``total``, ``isLast``, ``values``.
429 with ``Retry-After`` (seconds) and ``X-RateLimit-*``/``RateLimit-Reason`` is injected with
:meth:`throttle`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["AtlassianAuth", "JiraServer", "JiraSite", "make_site"]


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

    def __init__(self, site: JiraSite, email: str, token: str, latency: float = 0.0,
                 oauth: AtlassianAuth | None = None) -> None:
        self.site = site
        self.basic = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
        self.oauth = oauth
        super().__init__(latency=latency)

    def routes(self):
        a = r"(?:/ex/jira/[0-9a-f-]+)?/rest/api/3"  # the site's own host, or api.atlassian.com/ex/jira/<cloud id>
        return [("GET", a + r"/myself", self.myself), ("GET", a + r"/users/search", self.users_search),
                ("GET", a + r"/group/bulk", self.group_bulk), ("GET", a + r"/group/member", self.group_member),
                ("GET", a + r"/project/search", self.project_search),
                ("GET", a + r"/project/(?P<p>[^/]+)/role", self.project_roles),
                ("GET", a + r"/project/(?P<p>[^/]+)/role/(?P<r>\d+)", self.project_role)]

    @staticmethod
    def scope_for(path: str) -> str:
        """The classic OAuth scope Atlassian's reference names for an endpoint."""
        if "/project/search" in path:
            return "read:jira-work"
        if "/role" in path:
            return "manage:jira-configuration"
        return "read:jira-user"  # myself, users/search, group/bulk, group/member

    def throttle(self, path_pattern: str, retry_after: float = 1) -> None:
        self.inject(path_pattern, [Reply(429, {"errorMessages": ["Rate limit exceeded."]}, headers={
            "Retry-After": f"{retry_after:g}", "X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0",
            "RateLimit-Reason": "jira-burst-based"})])

    def dispatch(self, req: SeenRequest) -> Reply:
        bearer = (req.header("authorization") or "").removeprefix("Bearer ")
        if self.oauth is not None and bearer != req.header("authorization"):
            scopes = self.oauth.accepts(bearer)
            if scopes is None:
                return Reply(401, {"code": 401, "message": "Unauthorized"})
            if self.scope_for(req.path) not in scopes:
                return Reply(401, {"code": 401, "message": "Unauthorized; scope does not match"})
            return super().dispatch(req)
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


class AtlassianAuth(VendorServer):
    """auth.atlassian.com's OAuth 2.0 (3LO) token endpoint, with ROTATING refresh tokens (Atlassian's
    "Implementing the Refresh Token Flow"):

        POST /oauth/token   {"grant_type": "authorization_code", "client_id", "client_secret", "code",
                             "redirect_uri", "code_verifier"}                       (JSON, or a form)
        POST /oauth/token   {"grant_type": "refresh_token", "client_id", "client_secret", "refresh_token"}
        -> 200 {"access_token", "refresh_token", "expires_in", "scope", "token_type": "Bearer"}

    Every refresh returns a NEW refresh token and disables the one used: using it again is
    ``403 {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}``.
    A wrong client is ``401 {"error": "access_denied", ...}``. :meth:`sign_in` stands for the
    browser consent at ``/authorize`` (audience api.atlassian.com, PKCE S256 checked at the code
    exchange). :meth:`expire_after` makes every access token issued so far expire after that many
    more API calls (mid-run); :meth:`expire_all` expires them now (a night passed)."""

    thread_name = "atlassian-auth-fake"

    def __init__(self, client_id: str, client_secret: str, *, expires_in: int = 3600) -> None:
        self.client_id, self.client_secret, self.expires_in = client_id, client_secret, expires_in
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: dict[str, str] = {}  # live refresh token -> scope
        self.disabled: set[str] = set()           # refresh tokens rotated out
        self.access_tokens: dict[str, set[str]] = {}  # live access token -> its scopes
        self.api_calls = 0
        self._expire_at: int | None = None
        self._tokens = threading.Lock()
        super().__init__()

    def routes(self):
        return [("POST", r"/oauth/token", self.token)]

    # -- test controls --------------------------------------------------------------------------------
    def sign_in(self, authorize_url: str) -> str:
        """The redirect a consenting user's browser follows (``?code=...&state=...``)."""
        q = dict(parse_qsl(urlsplit(authorize_url).query))
        assert q.get("client_id") == self.client_id and q.get("response_type") == "code", q
        assert q.get("audience") == "api.atlassian.com" and q.get("code_challenge_method") == "S256", q
        code = secrets.token_urlsafe(16)
        with self._tokens:
            self.codes[code] = {"redirect_uri": q["redirect_uri"], "challenge": q["code_challenge"],
                                "scope": q.get("scope", "")}
        return f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"

    def expire_after(self, api_calls: int) -> None:
        with self._tokens:
            self._expire_at = self.api_calls + api_calls

    def expire_all(self) -> None:
        with self._tokens:
            self.access_tokens.clear()

    def accepts(self, access_token: str) -> set[str] | None:
        """The scopes of a live access token, None for an expired or unknown one (counts an API call)."""
        with self._tokens:
            self.api_calls += 1
            if self._expire_at is not None and self.api_calls > self._expire_at:
                self.access_tokens.clear()
                self._expire_at = None
            return self.access_tokens.get(access_token)

    # -- the endpoint ---------------------------------------------------------------------------------
    def token(self, req: SeenRequest, m) -> Reply:
        json_body = (req.header("content-type") or "").startswith("application/json")
        form = {k: str(v) for k, v in (req.json() if json_body else req.form()).items()}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return Reply(401, {"error": "access_denied", "error_description": "Unauthorized"})
        with self._tokens:
            if form.get("grant_type") == "authorization_code":
                code = self.codes.pop(form.get("code", ""), None)
                verifier = form.get("code_verifier", "").encode()
                challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
                if code is None or code["redirect_uri"] != form.get("redirect_uri") or code["challenge"] != challenge:
                    return Reply(403, {"error": "invalid_grant", "error_description": "Invalid authorization code"})
                return self._issue(code["scope"])
            if form.get("grant_type") == "refresh_token":
                scope = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
                if scope is None:
                    return Reply(403, {"error": "invalid_grant",
                                       "error_description": "Unknown or invalid refresh token."})
                self.disabled.add(form["refresh_token"])
                return self._issue(scope)
        return Reply(400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"})

    def _issue(self, scope: str) -> Reply:
        access, refresh = "eyJ" + secrets.token_urlsafe(24), secrets.token_urlsafe(32)
        self.access_tokens[access] = set(scope.split())
        self.refresh_tokens[refresh] = scope
        return Reply(200, {"access_token": access, "refresh_token": refresh, "expires_in": self.expires_in,
                           "scope": scope, "token_type": "Bearer"})
