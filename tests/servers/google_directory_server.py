"""A loopback fake of Google's Admin SDK Directory API (the reads ingest uses) and of Google's OAuth
token endpoint for service accounts, after the API reference and its discovery document
(``admin.directory_v1.json`` in google-api-python-client):

    POST /token                                                    JWT bearer grant (RFC 7523)
    GET  /admin/directory/v1/customers/{customerKey}               the account (check)
    GET  /admin/directory/v1/users?customer=&maxResults=&pageToken=      (maxResults <= 500)
    GET  /admin/directory/v1/groups?customer=&maxResults=&pageToken=     (maxResults <= 200)
    GET  /admin/directory/v1/groups/{groupKey}/members?maxResults=&pageToken=   (<= 200)
    GET  /admin/directory/v1/customer/{customer}/roles?maxResults=&pageToken=   (<= 100)
    GET  /admin/directory/v1/customer/{customer}/roleassignments?maxResults=&pageToken=  (<= 200)

The token endpoint verifies the assertion with PyJWT against the service account's public key:
signature (RS256), ``iss`` = client_email, ``aud`` = the token URI, ``exp`` / ``iat``, ``sub`` = an
administrator, and that every ``scope`` asked for is granted to the client for domain-wide delegation
(else ``unauthorized_client``, as Google answers). Lists answer ``{"kind", "etag", "<items>": [...],
"nextPageToken"}``; a page token is opaque and bound to its query. Errors are Google's
``{"error": {"code", "message", "errors": [{"message", "domain", "reason"}], "status"}}``: 401
``authError``, 403 ``insufficientPermissions`` / ``forbidden``, 403 ``userRateLimitExceeded`` and 429
``rateLimitExceeded`` (from a per-second quota, ``quota``), 400 ``invalid`` for a bad maxResults.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["GoogleDirectoryServer", "GoogleTenant", "make_tenant", "service_account_key", "SCOPES"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_S = "https://www.googleapis.com/auth/admin.directory."
SCOPES = {"users": _S + "user.readonly", "groups": _S + "group.readonly", "roles": _S + "rolemanagement.readonly",
          "customer": _S + "customer.readonly"}
# a request's area -> scopes that allow it (read-only first)
ALLOWED = {
    "users": {_S + "user.readonly", _S + "user"},
    "groups": {_S + "group.readonly", _S + "group"},
    "members": {_S + "group.readonly", _S + "group", _S + "group.member.readonly", _S + "group.member"},
    "roles": {_S + "rolemanagement.readonly", _S + "rolemanagement"},
    "customers": {_S + "customer.readonly", _S + "customer"},
}
MAX = {"users": 500, "groups": 200, "members": 200, "roles": 100, "roleassignments": 200}
DEFAULT = {"users": 100, "groups": 200, "members": 200, "roles": 100, "roleassignments": 100}
NEVER = "1970-01-01T00:00:00.000Z"


def service_account_key(token_uri: str, client_email: str = "ingest@acme-project.iam.gserviceaccount.com"
                        ) -> dict[str, Any]:
    """A service account key file, as the Cloud console downloads it (a fresh RSA key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "acme-project", "private_key_id": uuid.uuid4().hex,
            "private_key": pem, "client_email": client_email, "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs"}


def _etag() -> str:
    return '"' + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") + '"'


@dataclass
class GoogleTenant:
    customer_id: str = "C01abcd23"
    domain: str = "acme.test"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[tuple[str, str]]] = field(default_factory=dict)   # group id -> (member id, role)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_assignments: list[tuple[str, str]] = field(default_factory=list)     # (role id, user or group id)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_user(self, n: int, suspended: bool = False, archived: bool = False, admin: bool = False,
                 last_login: str = NEVER) -> dict:
        uid = str(100000000000000000000 + n * 7919)
        email = f"user{n}@{self.domain}"
        self.users[uid] = {
            "kind": "admin#directory#user", "id": uid, "etag": _etag(), "primaryEmail": email,
            "name": {"givenName": f"Given{n}", "familyName": f"Family{n}", "fullName": f"Given{n} Family{n}"},
            "isAdmin": admin, "isDelegatedAdmin": False, "lastLoginTime": last_login,
            "creationTime": "2024-01-02T03:04:05.000Z", "agreedToTerms": True, "suspended": suspended,
            **({"suspensionReason": "ADMIN"} if suspended else {}), "archived": archived,
            "changePasswordAtNextLogin": False, "ipWhitelisted": False,
            "emails": [{"address": email, "primary": True}], "customerId": self.customer_id,
            "orgUnitPath": ("/", "/Engineering", "/Sales")[n % 3], "isMailboxSetup": True,
            "isEnrolledIn2Sv": n % 2 == 0, "isEnforcedIn2Sv": False, "includeInGlobalAddressList": True,
        }
        return self.users[uid]

    def add_group(self, n: int, name: str) -> dict:
        gid = f"0{n:04d}abcdefg{n % 97:02d}"
        self.groups[gid] = {"kind": "admin#directory#group", "id": gid, "etag": _etag(),
                            "email": f"{name}@{self.domain}", "name": name, "directMembersCount": "0",
                            "description": f"The {name} group", "adminCreated": True}
        self.members.setdefault(gid, [])
        return self.groups[gid]

    def add_role(self, rid: str, name: str, system: bool = True, super_admin: bool = False) -> dict:
        self.roles[rid] = {"kind": "admin#directory#role", "etag": _etag(), "roleId": rid, "roleName": name,
                           "roleDescription": f"{name} role", "isSystemRole": system, "isSuperAdminRole": super_admin,
                           "rolePrivileges": [{"privilegeName": "USERS_RETRIEVE", "serviceId": "00haapch16h1ysv"}]}
        return self.roles[rid]


def make_tenant(n_users: int = 2000, n_groups: int = 40, big_group: int = 1500, seed: int = 5) -> GoogleTenant:
    """Active, suspended and archived users (admins among them, some never signed in), groups nested
    in groups, a group of ``big_group`` members (several pages of 200), system and custom admin roles
    assigned to users and to a group."""
    rnd = random.Random(seed)
    t = GoogleTenant()
    for i in range(n_users):
        last = NEVER if i % 10 == 0 else f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00.000Z"
        t.add_user(i, suspended=i % 19 == 0, archived=i % 31 == 0, admin=i < 3, last_login=last)
    users = sorted(t.users)
    big = t.add_group(0, "everyone")
    t.members[big["id"]] = [(u, "MEMBER") for u in users[:big_group]]
    for g in range(1, n_groups):
        grp = t.add_group(g, f"team-{g}")
        picked = sorted(rnd.sample(users, min(len(users), rnd.randint(0, 40))))
        t.members[grp["id"]] = [(u, "OWNER" if k == 0 else "MEMBER") for k, u in enumerate(picked)]
    gids = sorted(t.groups)
    for k in range(1, min(6, len(gids) - 1)):
        t.members[gids[k]].append((gids[k + 1], "MEMBER"))  # nesting
    t.add_role("9170516996784129", "_SEED_ADMIN_ROLE", super_admin=True)
    t.add_role("9170516996784130", "_GROUPS_ADMIN_ROLE")
    t.add_role("9170516996784131", "_USER_MANAGEMENT_ADMIN_ROLE")
    t.add_role("9170516996784199", "Help desk", system=False)
    roles = sorted(t.roles)
    t.role_assignments = [(roles[0], users[0]), (roles[0], users[1]), (roles[1], users[2]),
                          (roles[3], gids[min(2, len(gids) - 1)])]
    return t


class GoogleDirectoryServer(VendorServer):
    """The fake. ``clients`` maps a service account's client_email -> (public key PEM, scopes granted to it
    for domain-wide delegation); ``admins`` are the subjects it may act as; ``quota`` = requests per second
    beyond which it answers 403 userRateLimitExceeded (odd seconds) or 429 rateLimitExceeded (even)."""

    thread_name = "google-fake"

    def __init__(self, tenant: GoogleTenant, keys: list[dict[str, Any]] | None = None,
                 granted: set[str] | None = None, admins: set[str] | None = None, quota: int | None = None,
                 token_lifetime: int = 3600, latency: float = 0.0) -> None:
        self.tenant = tenant
        self.granted = granted if granted is not None else set(SCOPES.values())
        self.admins = admins if admins is not None else {f"user0@{tenant.domain}"}
        self.quota = quota
        self.token_lifetime = token_lifetime
        self._public: dict[str, Any] = {}
        self.tokens: dict[str, tuple[set[str], float]] = {}
        self.token_requests = 0
        self.throttled = 0
        self._second = (0, 0)
        self._page_tokens: dict[str, tuple[str, int]] = {}
        super().__init__(latency=latency)
        for key in keys or []:
            self.trust(key)

    def trust(self, key: dict[str, Any]) -> None:
        private = serialization.load_pem_private_key(key["private_key"].encode(), None)
        self._public[key["client_email"]] = private.public_key()

    @property
    def token_uri(self) -> str:
        return self.url("/token")

    def routes(self):
        d = r"/admin/directory/v1"
        return [
            ("POST", r"/token", self.token),
            ("GET", d + r"/customers/(?P<customer>[^/]+)", self.get_customer),
            ("GET", d + r"/users", self.list_users),
            ("GET", d + r"/groups", self.list_groups),
            ("GET", d + r"/groups/(?P<group>[^/]+)/members", self.list_members),
            ("GET", d + r"/customer/(?P<customer>[^/]+)/roles", self.list_roles),
            ("GET", d + r"/customer/(?P<customer>[^/]+)/roleassignments", self.list_role_assignments),
        ]

    # -- errors ----------------------------------------------------------------------------------------
    @staticmethod
    def error(code: int, message: str, reason: str, status: str, domain: str = "global",
              headers: dict[str, str] | None = None) -> Reply:
        return Reply(code, {"error": {"code": code, "message": message, "errors": [
            {"message": message, "domain": domain, "reason": reason}], "status": status}}, headers=headers or {})

    def not_found(self, req: SeenRequest) -> Reply:
        return self.error(404, "Not Found", "notFound", "NOT_FOUND")

    # -- token endpoint --------------------------------------------------------------------------------
    def token(self, req: SeenRequest, m) -> Reply:
        form = req.form()

        def refuse(status: int, error: str, description: str) -> Reply:
            return Reply(status, {"error": error, "error_description": description})

        if form.get("grant_type") != JWT_BEARER:
            return refuse(400, "unsupported_grant_type", "Invalid grant_type: " + form.get("grant_type", ""))
        assertion = form.get("assertion", "")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token and in a "
                                                "reasonable timeframe")
        key = self._public.get(unverified.get("iss", ""))
        if key is None:
            return refuse(401, "invalid_client", "The OAuth client was not found.")
        try:
            claims = jwt.decode(assertion, key, algorithms=["RS256"], audience=self.addressed(req, "/token"),
                                issuer=unverified["iss"], options={"require": ["exp", "iat", "iss", "aud"]})
        except jwt.InvalidSignatureError:
            return refuse(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.ExpiredSignatureError:
            return refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                                                "in a reasonable timeframe. Check your iat and exp values")
        except jwt.InvalidTokenError as e:
            return refuse(400, "invalid_grant", f"Invalid JWT: {e}")
        if claims["exp"] - claims["iat"] > 3600:
            return refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes)")
        scopes = set(str(claims.get("scope", "")).split())
        if not scopes:
            return refuse(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        if claims.get("sub") not in self.admins or not scopes <= self.granted:
            return refuse(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this "
                                                       "method, or client not authorized for any of the scopes "
                                                       "requested.")
        token = "ya29." + base64.urlsafe_b64encode(uuid.uuid4().bytes * 3).decode().rstrip("=")
        with self._lock:
            self.token_requests += 1
            self.tokens[token] = (scopes, time.time() + self.token_lifetime)
        return Reply(200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens = {t: (s, 0.0) for t, (s, _) in self.tokens.items()}

    # -- dispatch: auth, scopes, quota -----------------------------------------------------------------
    def dispatch(self, req: SeenRequest) -> Reply:
        if not req.path.startswith("/admin/"):
            return super().dispatch(req)
        auth = req.header("Authorization") or ""
        with self._lock:
            held = self.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if held is None or held[1] <= time.time():
            return Reply(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials. "
                                         "Expected OAuth 2 access token, login cookie or other valid authentication "
                                         "credential.", "errors": [{"message": "Invalid Credentials",
                                                                    "domain": "global", "reason": "authError",
                                                                    "location": "Authorization",
                                                                    "locationType": "header"}],
                                         "status": "UNAUTHENTICATED"}},
                         headers={"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        parts = req.path.split("/")
        area = "members" if parts[-1] == "members" else "customers" if parts[4] == "customers" else \
            "roles" if parts[4] == "customer" else parts[4]
        if not held[0] & ALLOWED[area]:
            return self.error(403, "Request had insufficient authentication scopes.", "insufficientPermissions",
                              "PERMISSION_DENIED")
        if self.quota is not None:
            now = int(time.time())
            with self._lock:
                second, used = self._second
                used = used + 1 if second == now else 1
                self._second = (now, used)
                over = used > self.quota
                if over:
                    self.throttled += 1
            if over:
                if now % 2:
                    return self.error(403, "Quota exceeded for quota metric 'Queries' and limit 'Queries per "
                                      "minute per user'", "userRateLimitExceeded", "PERMISSION_DENIED",
                                      domain="usageLimits")
                return self.error(429, "Rate Limit Exceeded", "rateLimitExceeded", "RESOURCE_EXHAUSTED",
                                  domain="usageLimits")
        return super().dispatch(req)

    # -- lists -------------------------------------------------------------------------------------------
    def _list(self, req: SeenRequest, what: str, kind: str, key: str, items: list[Any],
              build: Any = None) -> Reply:
        """One page of ``items``; ``build`` turns the page's items into answers (only the page's: a group
        of 50,000 members costs a page, not the group, per request)."""
        q = req.query
        try:
            size = int(q.get("maxResults", DEFAULT[what]))
        except ValueError:
            size = -1
        if not 1 <= size <= MAX[what]:
            return self.error(400, "Invalid Input: maxResults", "invalid", "INVALID_ARGUMENT")
        start = 0
        query_id = json.dumps(sorted((k, v) for k, v in q.items() if k not in ("pageToken", "maxResults"))) + req.path
        if q.get("pageToken"):
            with self._lock:
                saved = self._page_tokens.get(q["pageToken"])
            if saved is None or saved[0] != query_id:
                return self.error(400, "Invalid Input: pageToken", "invalid", "INVALID_ARGUMENT")
            start = saved[1]
        page = items[start:start + size]
        if build is not None:
            page = [b for b in (build(i) for i in page) if b is not None]
        body: dict[str, Any] = {"kind": kind, "etag": _etag(), key: page}
        if start + size < len(items):
            token = base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")
            with self._lock:
                self._page_tokens[token] = (query_id, start + size)
            body["nextPageToken"] = token
        if not page:
            del body[key]  # Google leaves an empty list out
        return Reply(200, body)

    def _customer_ok(self, value: str | None) -> bool:
        return value in ("my_customer", self.tenant.customer_id)

    def get_customer(self, req, m):
        if not self._customer_ok(m["customer"]):
            return self.error(404, "Resource Not Found: customerKey", "notFound", "NOT_FOUND")
        return Reply(200, {"kind": "admin#directory#customer", "id": self.tenant.customer_id, "etag": _etag(),
                           "customerDomain": self.tenant.domain, "alternateEmail": "it@example.org",
                           "customerCreationTime": "2020-01-01T00:00:00.000Z", "language": "en"})

    def list_users(self, req, m):
        if not (self._customer_ok(req.query.get("customer")) or req.query.get("domain") == self.tenant.domain):
            return self.error(400, "Bad Request", "badRequest", "INVALID_ARGUMENT")
        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return [self.tenant.users[u] for u in sorted(self.tenant.users)]

        return self._list(req, "users", "admin#directory#users", "users", self.listing(("users",), build))

    def list_groups(self, req, m):
        if not (self._customer_ok(req.query.get("customer")) or req.query.get("domain") == self.tenant.domain):
            return self.error(400, "Bad Request", "badRequest", "INVALID_ARGUMENT")
        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return [{**self.tenant.groups[g], "directMembersCount": str(len(self.tenant.members.get(g, [])))}
                        for g in sorted(self.tenant.groups)]

        return self._list(req, "groups", "admin#directory#groups", "groups", self.listing(("groups",), build))

    def list_members(self, req, m):
        with self.tenant.lock:
            gid = m["group"]
            if gid not in self.tenant.groups:
                gid = next((g for g, x in self.tenant.groups.items() if x["email"] == m["group"]), None)
            if gid is None:
                return self.error(404, "Resource Not Found: groupKey", "notFound", "NOT_FOUND")

        def build() -> list[tuple[str, str]]:
            with self.tenant.lock:
                return [(oid, role) for oid, role in self.tenant.members.get(gid, [])
                        if oid in self.tenant.users or oid in self.tenant.groups]

        items = self.listing(("members", gid), build)

        def member(entry: tuple[str, str]) -> dict[str, Any] | None:
            oid, role = entry
            obj = self.tenant.users.get(oid) or self.tenant.groups.get(oid)
            if obj is None:
                return None
            return {"kind": "admin#directory#member", "etag": _etag(), "id": oid,
                    "email": obj.get("primaryEmail") or obj.get("email"), "role": role,
                    "type": "USER" if oid in self.tenant.users else "GROUP", "status": "ACTIVE"}

        return self._list(req, "members", "admin#directory#members", "members", items, member)

    def list_roles(self, req, m):
        if not self._customer_ok(m["customer"]):
            return self.error(400, "Bad Request", "badRequest", "INVALID_ARGUMENT")
        with self.tenant.lock:
            roles = [self.tenant.roles[r] for r in sorted(self.tenant.roles)]
        return self._list(req, "roles", "admin#directory#roles", "items", roles)

    def list_role_assignments(self, req, m):
        if not self._customer_ok(m["customer"]):
            return self.error(400, "Bad Request", "badRequest", "INVALID_ARGUMENT")
        with self.tenant.lock:
            items = [{"kind": "admin#directory#roleAssignment", "etag": _etag(),
                      "roleAssignmentId": f"{k + 1:016d}", "roleId": rid, "assignedTo": who,
                      "assigneeType": "group" if who in self.tenant.groups else "user", "scopeType": "CUSTOMER"}
                     for k, (rid, who) in enumerate(self.tenant.role_assignments)
                     if who in self.tenant.users or who in self.tenant.groups]
        return self._list(req, "roleassignments", "admin#directory#roleAssignments", "items", items)
