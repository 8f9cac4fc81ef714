"""A loopback fake of Okta's management API (the read endpoints ingest uses), after Okta's
published reference and the ``@okta/openapi`` description:

    GET /api/v1/org                                 OrgSetting
    GET /api/v1/users?limit=&after=&filter=         User[]; DEPROVISIONED users only with
                                                    filter=status eq "DEPROVISIONED" (as Okta does)
    GET /api/v1/groups?limit=&after=                Group[] (OKTA_GROUP, APP_GROUP, BUILT_IN)
    GET /api/v1/groups/{id}/users?limit=&after=     User[] (members)
    GET /api/v1/groups/{id}/roles                   Role[] (admin roles held by the group)
    GET /api/v1/apps?limit=&after=                  Application[]
    GET /api/v1/apps/{id}/users?limit=&after=       AppUser[] (scope USER = direct, GROUP = via a group)
    GET /api/v1/apps/{id}/groups?limit=&after=      ApplicationGroupAssignment[]
    GET /api/v1/iam/assignees/users?limit=&after=   {"value": [{id, orn, _links}], "_links": {"next": {"href"}}}
    GET /api/v1/users/{id}/roles                    Role[]
    POST /oauth2/v1/token                           OAuth service app: client credentials with a private_key_jwt
                                                    client assertion (verified with PyJWT), okta.*.read scopes

Paging: ``limit`` (capped silently at the endpoint's maximum) and an opaque ``after`` cursor
(the last id sent) in ``Link: <…>; rel="next"`` (plus ``rel="self"``); the last page has no next
link. Rate limits per endpoint bucket and window: ``X-Rate-Limit-Limit``, ``-Remaining`` and
``-Reset`` (epoch seconds) on every answer, and 429 ``E0000047`` once the bucket is empty, as Okta
does. Errors are Okta's body ``{"errorCode", "errorSummary", "errorLink", "errorId", "errorCauses"}``:
401 ``E0000011`` (invalid token), 403 ``E0000006`` (no permission; with OAuth a
``WWW-Authenticate: Bearer … error="insufficient_scope"``), 404 ``E0000007``, 400 ``E0000031``.

``make_tenant(n)`` builds a tenant with every user status, the three group types, apps with user
and group assignments and admin roles held by users and groups.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["OktaServer", "OktaTenant", "make_tenant", "STATUSES", "LIMITS"]

STATUSES = ("ACTIVE", "PROVISIONED", "STAGED", "RECOVERY", "LOCKED_OUT", "PASSWORD_EXPIRED", "SUSPENDED",
            "DEPROVISIONED")
# endpoint -> (default limit, max limit), from Okta's reference
LIMITS = {
    "users": (200, 200),
    "groups": (10000, 10000),
    "group_users": (1000, 1000),
    "apps": (20, 200),
    "app_users": (50, 500),
    "app_groups": (20, 200),
    "assignees": (100, 100),
}
SCOPES = {"users": "okta.users.read", "groups": "okta.groups.read", "apps": "okta.apps.read",
          "roles": "okta.roles.read", "org": "okta.orgs.read"}
T0 = "2024-01-02T03:04:05.000Z"


def _oid(prefix: str, n: int) -> str:
    return f"{prefix}{n:05d}{uuid.uuid5(uuid.NAMESPACE_OID, f'{prefix}{n}').hex[:12]}"


def role(rtype: str, assignment: str = "USER", n: int = 0) -> dict[str, Any]:
    labels = {"SUPER_ADMIN": "Super Organization Administrator", "ORG_ADMIN": "Organizational Administrator",
              "APP_ADMIN": "Application Administrator", "USER_ADMIN": "Group Administrator",
              "HELP_DESK_ADMIN": "Help Desk Administrator", "READ_ONLY_ADMIN": "Read Only Administrator",
              "REPORT_ADMIN": "Report Administrator", "GROUP_MEMBERSHIP_ADMIN": "Group Membership Administrator"}
    return {"id": f"ra{n:06d}{rtype.lower()[:6]}", "label": labels.get(rtype, rtype.title()), "type": rtype,
            "status": "ACTIVE", "created": T0, "lastUpdated": T0, "assignmentType": assignment}


@dataclass
class OktaTenant:
    """The tenant's state; tests change it between runs (under ``lock`` when the server is up)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)         # group id -> user ids
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_users: dict[str, list[str]] = field(default_factory=dict)       # app id -> directly assigned users
    app_groups: dict[str, list[str]] = field(default_factory=dict)      # app id -> assigned groups
    user_roles: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    group_roles: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_user(self, n: int, status: str = "ACTIVE", last_login: str | None = T0, **profile: Any) -> dict:
        uid = _oid("00u", n)
        login = f"user{n}@example.com"
        user = {
            "id": uid, "status": status, "created": T0,
            "activated": None if status in ("STAGED",) else T0,
            "statusChanged": T0, "lastLogin": last_login, "lastUpdated": T0, "passwordChanged": T0,
            "type": {"id": "oty1default"},
            "profile": {"firstName": f"First{n}", "lastName": f"Last{n}", "email": login, "login": login,
                        "displayName": f"First{n} Last{n}", "department": ("eng", "sales", "ops")[n % 3],
                        "title": "Engineer", "employeeNumber": str(10000 + n), "userType": "Employee",
                        "mobilePhone": None, "secondEmail": None, **profile},
            "credentials": {"password": {}, "provider": {"type": "OKTA", "name": "OKTA"}},
            "_links": {"self": {"href": f"https://example.okta.com/api/v1/users/{uid}"}},
        }
        self.users[uid] = user
        return user

    def add_group(self, n: int, name: str, gtype: str = "OKTA_GROUP", description: str | None = None) -> dict:
        gid = _oid("00g", n)
        group = {
            "id": gid, "created": T0, "lastUpdated": T0, "lastMembershipUpdated": T0,
            "objectClass": ["okta:windows_security_principal" if gtype == "APP_GROUP" else "okta:user_group"],
            "type": gtype, "profile": {"name": name, "description": description},
            "_links": {"users": {"href": f"https://example.okta.com/api/v1/groups/{gid}/users"}},
        }
        self.groups[gid] = group
        self.members.setdefault(gid, [])
        return group

    def add_app(self, n: int, label: str, status: str = "ACTIVE", mode: str = "SAML_2_0") -> dict:
        aid = _oid("0oa", n)
        app = {"id": aid, "name": label.lower().replace(" ", "_"), "label": label, "status": status,
               "created": T0, "lastUpdated": T0, "signOnMode": mode, "features": [],
               "accessibility": {"selfService": False}, "visibility": {"autoSubmitToolbar": False},
               "_links": {"users": {"href": f"https://example.okta.com/api/v1/apps/{aid}/users"}}}
        self.apps[aid] = app
        self.app_users.setdefault(aid, [])
        self.app_groups.setdefault(aid, [])
        return app

    def app_user_list(self, aid: str) -> list[dict[str, Any]]:
        """Okta's answer to /apps/{id}/users: direct users (scope USER) and members of assigned groups
        (scope GROUP), one entry per user, ordered by id."""
        scope: dict[str, str] = {}
        for gid in self.app_groups.get(aid, []):
            for uid in self.members.get(gid, []):
                scope.setdefault(uid, "GROUP")
        for uid in self.app_users.get(aid, []):
            scope[uid] = "USER"
        out = []
        for uid in sorted(scope):
            u = self.users.get(uid)
            if u is None:
                continue
            out.append({"id": uid, "externalId": None, "created": T0, "lastUpdated": T0, "scope": scope[uid],
                        "status": "PROVISIONED", "statusChanged": T0, "syncState": "DISABLED",
                        "credentials": {"userName": u["profile"]["login"]},
                        "profile": {"email": u["profile"]["email"]},
                        "_links": {"user": {"href": f"https://example.okta.com/api/v1/users/{uid}"}}})
        return out


def make_tenant(n_users: int = 2000, n_groups: int = 40, n_apps: int = 12, big_group: int = 1500,
                seed: int = 7) -> OktaTenant:
    """Every status, the three group types, a group with ``big_group`` members (more than one page of
    1000), apps with user and group assignments, roles held by users and by a group."""
    rnd = random.Random(seed)
    t = OktaTenant()
    for i in range(n_users):
        status = STATUSES[i % len(STATUSES)] if i < 80 else "ACTIVE"
        last = None if i % 11 == 0 else f"2026-11-{1 + i % 28:02d}T08:{i % 60:02d}:00.000Z"
        t.add_user(i, status, last)
    live = [uid for uid, u in t.users.items() if u["status"] != "DEPROVISIONED"]
    everyone = t.add_group(0, "Everyone", "BUILT_IN", "All users in your organization")
    t.members[everyone["id"]] = sorted(live)
    big = t.add_group(1, "All Engineering", "OKTA_GROUP")
    t.members[big["id"]] = sorted(live[:big_group])
    for g in range(2, n_groups):
        kind = "APP_GROUP" if g % 7 == 0 else "OKTA_GROUP"
        grp = t.add_group(g, f"team-{g}", kind, f"Team {g}")
        t.members[grp["id"]] = sorted(rnd.sample(live, min(len(live), rnd.randint(0, 60))))
    gids = list(t.groups)
    for a in range(n_apps):
        app = t.add_app(a, f"App {a}", "INACTIVE" if a == n_apps - 1 else "ACTIVE",
                        ("SAML_2_0", "OPENID_CONNECT", "BOOKMARK")[a % 3])
        t.app_users[app["id"]] = sorted(rnd.sample(live, min(len(live), 5 + a * 3)))
        t.app_groups[app["id"]] = sorted(rnd.sample(gids[2:], min(2, len(gids[2:]))))
    t.user_roles[live[0]] = [role("SUPER_ADMIN", n=0)]
    t.user_roles[live[1]] = [role("ORG_ADMIN", n=1), role("REPORT_ADMIN", n=2)]
    t.user_roles[live[2]] = [role("READ_ONLY_ADMIN", n=3)]
    t.group_roles[gids[min(3, len(gids) - 1)]] = [role("HELP_DESK_ADMIN", "GROUP", n=4)]
    return t


@dataclass
class _Bucket:
    limit: int
    window_start: float = 0.0
    used: int = 0


class OktaServer(VendorServer):
    """The fake. ``api_tokens`` maps an SSWS token to the scopes it may read (None = everything);
    ``rate_limit`` = (requests, window seconds) per endpoint bucket, None = unlimited."""

    thread_name = "okta-fake"

    def __init__(self, tenant: OktaTenant, api_tokens: dict[str, set[str] | None] | None = None,
                 rate_limit: tuple[int, int] | None = None, latency: float = 0.0,
                 public_host: str | None = None, oauth_clients: dict[str, tuple[str, set[str]]] | None = None,
                 token_lifetime: int = 3600) -> None:
        self.tenant = tenant
        self.api_tokens = api_tokens if api_tokens is not None else {"ssws-test-token": None}
        self.oauth_clients = oauth_clients or {}  # client_id -> (public key PEM, scopes granted to the service app)
        self.token_lifetime = token_lifetime
        self.access_tokens: dict[str, tuple[set[str], float]] = {}
        self.token_requests = 0
        self.rate_limit = rate_limit
        self.public_host = public_host
        self._buckets: dict[str, _Bucket] = {}
        self.throttled = 0
        self.org = {"id": "00o1acme", "companyName": "Acme Inc", "subdomain": "acme", "website": "https://acme.test",
                    "status": "ACTIVE", "created": T0, "lastUpdated": T0, "expiresAt": None,
                    "_links": {"self": {"href": "https://example.okta.com/api/v1/org"}}}
        super().__init__(latency=latency)

    def routes(self):
        u = r"/api/v1"
        return [
            ("POST", r"/oauth2/v1/token", self.token),
            ("GET", u + r"/org", self.get_org),
            ("GET", u + r"/users", self.list_users),
            ("GET", u + r"/users/(?P<uid>[^/]+)/roles", self.list_user_roles),
            ("GET", u + r"/groups", self.list_groups),
            ("GET", u + r"/groups/(?P<gid>[^/]+)/users", self.list_group_users),
            ("GET", u + r"/groups/(?P<gid>[^/]+)/roles", self.list_group_roles),
            ("GET", u + r"/apps", self.list_apps),
            ("GET", u + r"/apps/(?P<aid>[^/]+)/users", self.list_app_users),
            ("GET", u + r"/apps/(?P<aid>[^/]+)/groups", self.list_app_groups),
            ("GET", u + r"/iam/assignees/users", self.list_assignees),
        ]

    # -- errors ---------------------------------------------------------------------------------------
    @staticmethod
    def error(status: int, code: str, summary: str, headers: dict[str, str] | None = None) -> Reply:
        return Reply(status, {"errorCode": code, "errorSummary": summary, "errorLink": code,
                              "errorId": "oae" + uuid.uuid4().hex[:19], "errorCauses": []}, headers=headers or {})

    def not_found(self, req: SeenRequest) -> Reply:
        return self.error(404, "E0000022", "The endpoint does not support the provided HTTP method")

    # -- auth and rate limits -------------------------------------------------------------------------
    def _bucket_name(self, path: str) -> str:
        parts = path.split("/")  # '', api, v1, users, {id}, roles
        return "/".join(parts[3:4] + (["{id}"] + parts[5:6] if len(parts) > 4 else []))

    def _rate_headers(self, path: str) -> tuple[dict[str, str], bool]:
        if self.rate_limit is None:
            return {}, True
        limit, window = self.rate_limit
        now = time.time()
        start = math.floor(now / window) * window
        with self._lock:
            b = self._buckets.setdefault(self._bucket_name(path), _Bucket(limit))
            if b.window_start != start:
                b.window_start, b.used = start, 0
            ok = b.used < limit
            if ok:
                b.used += 1
            else:
                self.throttled += 1
            remaining = limit - b.used
        return {"X-Rate-Limit-Limit": str(limit), "X-Rate-Limit-Remaining": str(remaining),
                "X-Rate-Limit-Reset": str(int(start + window))}, ok

    def dispatch(self, req: SeenRequest) -> Reply:
        if not req.path.startswith("/api/v1/"):
            return super().dispatch(req)
        headers, ok = self._rate_headers(req.path)
        if not ok:
            r = self.error(429, "E0000047", "API call exceeded rate limit due to too many requests.")
        else:
            r = self._authorized(req) or super().dispatch(req)
        r.headers = {**headers, **r.headers}
        return r

    def _authorized(self, req: SeenRequest) -> Reply | None:
        auth = req.header("Authorization") or ""
        kind, _, token = auth.partition(" ")
        needed = self._scope(req.path)
        if kind == "Bearer":
            with self._lock:
                held = self.access_tokens.get(token)
            if held is None or held[1] <= time.time():
                return self.error(401, "E0000011", "Invalid token provided",
                                  {"WWW-Authenticate": 'Bearer authorization_uri="http://okta/oauth2/v1/authorize", '
                                                       'realm="http://okta", error="invalid_token", '
                                                       'error_description="The token is not valid."'})
            if needed not in held[0]:
                return self.error(403, "E0000006", "You do not have permission to perform the requested action",
                                  {"WWW-Authenticate": 'Bearer error="insufficient_scope", error_description="The '
                                                       'access token provided does not contain the required scopes."'})
            return None
        if kind != "SSWS" or token not in self.api_tokens:
            return self.error(401, "E0000011", "Invalid token provided")
        allowed = self.api_tokens[token]
        if allowed is not None and needed not in allowed:
            return self.error(403, "E0000006", "You do not have permission to perform the requested action")
        return None

    # -- OAuth 2.0 service app: client credentials with a private_key_jwt client assertion -------------
    def token(self, req: SeenRequest, m) -> Reply:
        import jwt

        form = req.form()

        def refuse(status: int, error: str, description: str) -> Reply:
            return Reply(status, {"error": error, "error_description": description})

        if form.get("grant_type") != "client_credentials":
            return refuse(400, "unsupported_grant_type", "The authorization grant type is not supported.")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return refuse(401, "invalid_client", "Client authentication failed.")
        client = self.oauth_clients.get(form.get("client_id", ""))
        if client is None:
            return refuse(401, "invalid_client", "The client_id is not valid.")
        try:
            claims = jwt.decode(form.get("client_assertion", ""), client[0], algorithms=["RS256"],
                                audience=self.addressed(req, "/oauth2/v1/token"), issuer=form["client_id"],
                                options={"require": ["exp", "iat", "iss", "sub", "aud", "jti"]})
        except jwt.InvalidTokenError as e:
            return refuse(401, "invalid_client", f"The client_assertion token is invalid: {e}")
        if claims["sub"] != form["client_id"]:
            return refuse(401, "invalid_client", "The client_assertion sub must be the client_id.")
        asked = set(form.get("scope", "").split())
        if not asked:
            return refuse(400, "invalid_scope", "The authorization server resource does not have any configured "
                                                "default scopes, 'scope' must be provided.")
        refused = sorted(asked - client[1])
        if refused:
            return refuse(400, "invalid_scope", "The following scopes were requested but not granted to the "
                                                f"client: {' '.join(refused)}")
        token = "eyJ" + uuid.uuid4().hex + uuid.uuid4().hex
        with self._lock:
            self.token_requests += 1
            self.access_tokens[token] = (asked, time.time() + self.token_lifetime)
        return Reply(200, {"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token,
                           "scope": " ".join(sorted(asked))})

    def expire_tokens(self) -> None:
        with self._lock:
            self.access_tokens = {t: (s, 0.0) for t, (s, _) in self.access_tokens.items()}

    @staticmethod
    def _scope(path: str) -> str:
        if "/roles" in path or "/iam/" in path:
            return SCOPES["roles"]
        return SCOPES[{"users": "users", "groups": "groups", "apps": "apps"}.get(path.split("/")[3], "org")]

    # -- paging ---------------------------------------------------------------------------------------
    def _page(self, req: SeenRequest, items: list[dict[str, Any]], kind: str,
              body: Any = None, key: Any = None) -> Reply:
        default, most = LIMITS[kind]
        try:
            limit = int(req.query.get("limit", default))
        except ValueError:
            return self.error(400, "E0000001", "Api validation failed: limit")
        limit = most if limit <= 0 else min(limit, most)
        after = req.query.get("after")
        start = 0
        if after:
            at = self.listing(("after", key), lambda: {i["id"]: k for k, i in enumerate(items)}) \
                if self.frozen and key is not None else {}
            if after in at:
                start = at[after] + 1
            else:
                ids = [i["id"] for i in items]
                start = next((k + 1 for k, v in enumerate(ids) if v > after), len(ids)) if after not in ids \
                    else ids.index(after) + 1
        page = items[start:start + limit]
        host = self.public_host or f"127.0.0.1:{self.port}"
        base = f"http://{host}{req.path}"
        keep = {k: v for k, v in req.query.items() if k not in ("after", "limit")}
        links = [f'<{base}?{urlencode({**keep, "limit": limit})}>; rel="self"']
        if start + limit < len(items):
            links.append(f'<{base}?{urlencode({**keep, "limit": limit, "after": page[-1]["id"]})}>; rel="next"')
        return Reply(200, page if body is None else body(page, links), headers={"Link": ", ".join(links)})

    # -- endpoints -------------------------------------------------------------------------------------
    def get_org(self, req, m):
        return Reply(200, self.org)

    def list_users(self, req, m):
        flt = req.query.get("filter")
        fm = re.fullmatch(r'\s*status\s+eq\s+"([A-Z_]+)"\s*', flt) if flt is not None else None
        if flt is not None and not fm:
            return self.error(400, "E0000031", "Invalid search criteria.")

        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                users = sorted(self.tenant.users.values(), key=lambda u: u["id"])
            if fm is None:
                return [u for u in users if u["status"] != "DEPROVISIONED"]
            return [u for u in users if u["status"] == fm.group(1)]

        key = ("users", fm.group(1) if fm else None)
        return self._page(req, self.listing(key, build), "users", key=key)

    def list_user_roles(self, req, m):
        with self.tenant.lock:
            if m["uid"] not in self.tenant.users:
                return self.error(404, "E0000007", f"Not found: Resource not found: {m['uid']} (User)")
            return Reply(200, list(self.tenant.user_roles.get(m["uid"], [])))

    def list_groups(self, req, m):
        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return sorted(self.tenant.groups.values(), key=lambda g: g["id"])

        return self._page(req, self.listing(("groups",), build), "groups", key=("groups",))

    def list_group_users(self, req, m):
        with self.tenant.lock:
            if m["gid"] not in self.tenant.groups:
                return self.error(404, "E0000007", f"Not found: Resource not found: {m['gid']} (UserGroup)")

        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return [self.tenant.users[u] for u in sorted(self.tenant.members.get(m["gid"], []))
                        if u in self.tenant.users]

        key = ("group_users", m["gid"])
        return self._page(req, self.listing(key, build), "group_users", key=key)

    def list_group_roles(self, req, m):
        with self.tenant.lock:
            if m["gid"] not in self.tenant.groups:
                return self.error(404, "E0000007", f"Not found: Resource not found: {m['gid']} (UserGroup)")
            return Reply(200, list(self.tenant.group_roles.get(m["gid"], [])))

    def list_apps(self, req, m):
        with self.tenant.lock:
            apps = sorted(self.tenant.apps.values(), key=lambda a: a["id"])
        return self._page(req, apps, "apps")

    def list_app_users(self, req, m):
        with self.tenant.lock:
            if m["aid"] not in self.tenant.apps:
                return self.error(404, "E0000007", f"Not found: Resource not found: {m['aid']} (AppInstance)")
            items = self.tenant.app_user_list(m["aid"])
        return self._page(req, items, "app_users")

    def list_app_groups(self, req, m):
        with self.tenant.lock:
            if m["aid"] not in self.tenant.apps:
                return self.error(404, "E0000007", f"Not found: Resource not found: {m['aid']} (AppInstance)")
            items = [{"id": gid, "lastUpdated": T0, "priority": k, "profile": {},
                      "_links": {"group": {"href": f"https://example.okta.com/api/v1/groups/{gid}"}}}
                     for k, gid in enumerate(sorted(self.tenant.app_groups.get(m["aid"], [])))
                     if gid in self.tenant.groups]
        return self._page(req, items, "app_groups")

    def list_assignees(self, req, m):
        with self.tenant.lock:
            uids = sorted(u for u, roles in self.tenant.user_roles.items() if roles and u in self.tenant.users)
        items = [{"id": u, "orn": f"orn:okta:directory:{self.org['id']}:users:{u}",
                  "_links": {"self": {"href": f"https://example.okta.com/api/v1/users/{u}"}}} for u in uids]

        def body(page, links):
            out: dict[str, Any] = {"value": page}
            nxt = [link for link in links if 'rel="next"' in link]
            if nxt:
                out["_links"] = {"next": {"href": nxt[0].split(">")[0].lstrip("<")}}
            return out

        return self._page(req, items, "assignees", body=body)
