"""A loopback fake of Microsoft Graph v1.0 (the directory reads ingest uses) and of the Microsoft
identity platform's token endpoint, after the v1.0 reference:

    POST /{tenant}/oauth2/v2.0/token                      client credentials: client_secret, or a client
                                                          assertion signed with an uploaded certificate
    GET  /v1.0/organization                               the tenant
    GET  /v1.0/users?$select=…&$top=                      users; signInActivity only when selected, and then
                                                          403 Authentication_RequestFromNonPremiumTenantOrB2CTenant
                                                          on a tenant without Entra ID P1/P2
    GET  /v1.0/groups?$select=…&$top=                     groups (security, Microsoft 365 "Unified", dynamic)
    GET  /v1.0/groups/{id}/members?$select=id&$top=       direct members, each with "@odata.type"
    GET  /v1.0/roleManagement/directory/roleDefinitions   directory roles
    GET  /v1.0/roleManagement/directory/roleAssignments?$expand=principal
    GET  /v1.0/servicePrincipals?$select=…&$top=          enterprise apps (with appRoles)
    GET  /v1.0/servicePrincipals/{id}/appRoleAssignedTo?$top=

Collections answer ``{"@odata.context": …, "value": [...], "@odata.nextLink": "<whole URL with
$skiptoken>"}``; ``$top`` above 999 is a 400 ``Request_BadRequest``; ``$select`` projects (``id``
always comes). Errors are ``{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}``: 401 ``InvalidAuthenticationToken`` (expired or unknown token, with
``WWW-Authenticate``), 403 ``Authorization_RequestDenied`` (missing application permission),
429 ``TooManyRequests`` / 503 with ``Retry-After``. Tokens expire after ``token_lifetime`` seconds;
``expire_tokens()`` ends every issued token at once.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.servers._vendor import Reply, SeenRequest, VendorServer

__all__ = ["GraphServer", "GraphTenant", "make_tenant", "self_signed_certificate", "PERMISSIONS", "DEFAULT_ACCESS"]

DEFAULT_ACCESS = "00000000-0000-0000-0000-000000000000"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# what each listing needs (any one of): Graph application permissions, least privileged first
PERMISSIONS = {
    "organization": ("Organization.Read.All", "Directory.Read.All"),
    "users": ("User.Read.All", "Directory.Read.All"),
    "signInActivity": ("AuditLog.Read.All",),
    "groups": ("GroupMember.Read.All", "Group.Read.All", "Directory.Read.All"),
    "roleManagement": ("RoleManagement.Read.Directory", "Directory.Read.All"),
    "servicePrincipals": ("Application.Read.All", "Directory.Read.All"),
}
ALL_PERMISSIONS = frozenset(p for ps in PERMISSIONS.values() for p in ps)


def gid(kind: str, n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"graph/{kind}/{n}"))


@dataclass
class GraphTenant:
    tenant_id: str = field(default_factory=lambda: gid("tenant", 0))
    premium: bool = True
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)       # group id -> user or group ids
    role_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_assignments: list[tuple[str, str]] = field(default_factory=list)  # (role definition id, principal id)
    service_principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_role_assignments: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # sp -> (role, principal)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_user(self, n: int, enabled: bool = True, guest: bool = False, last_sign_in: str | None = None) -> dict:
        uid = gid("user", n)
        upn = f"user{n}@contoso.test" if not guest else f"guest{n}_example.org#EXT#@contoso.test"
        self.users[uid] = {
            "id": uid, "displayName": f"User {n}", "givenName": f"Given{n}", "surname": f"Sur{n}",
            "userPrincipalName": upn, "mail": f"user{n}@contoso.test" if not guest else f"guest{n}@example.org",
            "accountEnabled": enabled, "userType": "Guest" if guest else "Member",
            "jobTitle": "Engineer" if n % 2 else None, "department": ("eng", "sales", "ops")[n % 3],
            "employeeId": str(20000 + n), "createdDateTime": "2024-01-02T03:04:05Z",
            "signInActivity": {
                "lastSignInDateTime": last_sign_in, "lastSignInRequestId": str(uuid.uuid4()) if last_sign_in else None,
                "lastNonInteractiveSignInDateTime": None, "lastNonInteractiveSignInRequestId": None,
                "lastSuccessfulSignInDateTime": last_sign_in,
                "lastSuccessfulSignInRequestId": str(uuid.uuid4()) if last_sign_in else None,
            },
        }
        return self.users[uid]

    def add_group(self, n: int, name: str, kind: str = "security") -> dict:
        g = gid("group", n)
        types = {"security": [], "m365": ["Unified"], "dynamic": ["DynamicMembership"]}[kind]
        self.groups[g] = {
            "id": g, "displayName": name, "description": f"{name} ({kind})", "groupTypes": types,
            "securityEnabled": kind != "m365", "mailEnabled": kind == "m365",
            "mail": f"{name}@contoso.test" if kind == "m365" else None,
            "membershipRule": 'user.department -eq "eng"' if kind == "dynamic" else None,
            "membershipRuleProcessingState": "On" if kind == "dynamic" else None,
            "createdDateTime": "2024-01-02T03:04:05Z", "visibility": "Private" if kind == "m365" else None,
        }
        self.members.setdefault(g, [])
        return self.groups[g]

    def add_role(self, template: str, name: str) -> dict:
        self.role_definitions[template] = {"id": template, "displayName": name, "description": f"{name} role",
                                           "isBuiltIn": True, "isEnabled": True, "templateId": template}
        return self.role_definitions[template]

    def add_service_principal(self, n: int, name: str, roles: list[str]) -> dict:
        sp = gid("sp", n)
        self.service_principals[sp] = {
            "id": sp, "appId": gid("app", n), "displayName": name, "accountEnabled": True,
            "servicePrincipalType": "Application", "appOwnerOrganizationId": self.tenant_id,
            "tags": ["WindowsAzureActiveDirectoryIntegratedApp"],
            "appRoles": [{"id": gid(f"approle-{n}", k), "displayName": r, "description": f"{r} of {name}",
                          "value": r.lower(), "isEnabled": True, "allowedMemberTypes": ["User"], "origin": "Application"}
                         for k, r in enumerate(roles)],
        }
        self.app_role_assignments.setdefault(sp, [])
        return self.service_principals[sp]

    def kind_of(self, oid: str) -> str | None:
        if oid in self.users:
            return "user"
        if oid in self.groups:
            return "group"
        if oid in self.service_principals:
            return "servicePrincipal"
        return None


ROLES = {"62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
         "f2ef992c-3afb-46b9-b7cf-a126ee74c451": "Global Reader",
         "fe930be7-5e62-47db-91af-98c3a49a38b1": "User Administrator",
         "729827e3-9c14-49f7-bb1b-9608f156bbb8": "Helpdesk Administrator"}


def make_tenant(n_users: int = 2000, n_groups: int = 40, n_apps: int = 6, big_group: int = 1500,
                premium: bool = True, seed: int = 3) -> GraphTenant:
    """Enabled and disabled members and guests, security / Microsoft 365 / dynamic groups with
    group-in-group nesting, a group of ``big_group`` members (more than a page of 999), directory
    roles held by users and a role-assignable group, enterprise apps with app role assignments to
    users and groups."""
    import random

    rnd = random.Random(seed)
    t = GraphTenant(premium=premium)
    for i in range(n_users):
        last = None if i % 9 == 0 else f"2026-11-{1 + i % 28:02d}T09:{i % 60:02d}:00Z"
        t.add_user(i, enabled=i % 17 != 0, guest=i % 23 == 0, last_sign_in=last)
    users = sorted(t.users)
    big = t.add_group(0, "all-staff", "security")
    t.members[big["id"]] = users[:big_group]
    for g in range(1, n_groups):
        kind = ("security", "m365", "dynamic")[g % 3]
        grp = t.add_group(g, f"group-{g}", kind)
        t.members[grp["id"]] = sorted(rnd.sample(users, min(len(users), rnd.randint(0, 50))))
    gids = sorted(t.groups)
    for k in range(1, min(6, len(gids))):  # nesting: a chain and a diamond
        parent, child = gids[k], gids[k + 1] if k + 1 < len(gids) else gids[1]
        if child != parent and child not in t.members[parent]:
            t.members[parent].append(child)
    for template, name in ROLES.items():
        t.add_role(template, name)
    roles = list(ROLES)
    t.role_assignments = [(roles[0], users[0]), (roles[1], users[1]), (roles[2], users[2]), (roles[3], gids[2 % len(gids)])]
    for a in range(n_apps):
        sp = t.add_service_principal(a, f"App {a}", ["Reader", "Admin"] if a % 2 else [])
        role_ids = [r["id"] for r in sp["appRoles"]] or [DEFAULT_ACCESS]
        picks = rnd.sample(users, min(len(users), 4 + a))
        t.app_role_assignments[sp["id"]] = [(role_ids[k % len(role_ids)], u) for k, u in enumerate(picks)]
        t.app_role_assignments[sp["id"]].append((role_ids[0], gids[(3 + a % 3) % len(gids)]))
    return t


def self_signed_certificate(days: int = 365, name: str = "ingest-graph-reader") -> tuple[str, str]:
    """(private key PEM, certificate PEM) of a fresh RSA key and a self-signed certificate for it, as
    ``New-SelfSignedCertificate`` or ``openssl req -x509`` make one to upload to an app registration;
    ``days`` < 0 makes one that has expired."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    start, end = (now - timedelta(days=1), now + timedelta(days=days)) if days > 0 else \
        (now + timedelta(days=days - 1), now + timedelta(days=days))
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .sign(key, hashes.SHA256()))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return private, cert.public_bytes(serialization.Encoding.PEM).decode()


class GraphServer(VendorServer):
    """The fake. ``clients`` maps client_id -> (client_secret, granted application permissions)."""

    thread_name = "graph-fake"

    def __init__(self, tenant: GraphTenant, clients: dict[str, tuple[str | None, frozenset[str]]] | None = None,
                 token_lifetime: int = 3599, latency: float = 0.0,
                 certificates: dict[str, list[str]] | None = None) -> None:
        self.tenant = tenant
        self.clients = clients if clients is not None else {"app-1": ("s3cret-1", ALL_PERMISSIONS)}
        # client_id -> the certificates (PEM) uploaded to the app registration, by SHA-1 / SHA-256 thumbprint
        self.certificates: dict[str, dict[str, Any]] = {}
        for client_id, pems in (certificates or {}).items():
            for pem in pems:
                self.upload_certificate(client_id, pem)
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (header, claims) of accepted ones
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expires at)
        self.token_requests = 0
        super().__init__(latency=latency)

    def routes(self):
        v = r"/v1\.0"
        return [
            ("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self.token),
            ("GET", v + r"/organization", self.organization),
            ("GET", v + r"/users", self.list_users),
            ("GET", v + r"/groups", self.list_groups),
            ("GET", v + r"/groups/(?P<id>[^/]+)/members", self.list_members),
            ("GET", v + r"/roleManagement/directory/roleDefinitions", self.list_role_definitions),
            ("GET", v + r"/roleManagement/directory/roleAssignments", self.list_role_assignments),
            ("GET", v + r"/servicePrincipals", self.list_service_principals),
            ("GET", v + r"/servicePrincipals/(?P<id>[^/]+)/appRoleAssignedTo", self.list_app_role_assigned_to),
        ]

    # -- errors ----------------------------------------------------------------------------------------
    @staticmethod
    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return Reply(status, {"error": {"code": code, "message": message, "innerError": {
            "date": now, "request-id": str(uuid.uuid4()), "client-request-id": str(uuid.uuid4())}}},
            headers=headers or {})

    def not_found(self, req: SeenRequest) -> Reply:
        return self.error(400, "BadRequest", f"Resource not found for the segment '{req.path.rsplit('/', 1)[-1]}'.")

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens = {t: (c, 0.0) for t, (c, _) in self.tokens.items()}

    def upload_certificate(self, client_id: str, certificate_pem: str) -> None:
        """Certificates & secrets > Upload certificate, on the app registration ``client_id``."""
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
        for digest in (hashes.SHA1(), hashes.SHA256()):
            thumb = base64.urlsafe_b64encode(cert.fingerprint(digest)).decode().rstrip("=")
            self.certificates.setdefault(client_id, {})[thumb] = cert

    # -- token endpoint --------------------------------------------------------------------------------
    @staticmethod
    def aad(status: int, error: str, code: int, text: str) -> Reply:
        """The Microsoft identity platform's error body: ``AADSTS<code>: <text>`` with trace and correlation ids."""
        return Reply(status, {"error": error, "error_description": f"AADSTS{code}: {text}",
                              "error_codes": [code], "timestamp": datetime.now(UTC).isoformat(),
                              "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())})

    def token(self, req: SeenRequest, m) -> Reply:
        form = req.form()
        aad = self.aad
        if m["tenant"] != self.tenant.tenant_id:
            return aad(400, "invalid_request", 90002, f"Tenant '{m['tenant']}' not found.")
        if form.get("grant_type") != "client_credentials":
            return aad(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form.get("scope") != "https://graph.microsoft.com/.default":
            return aad(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            return aad(400, "unauthorized_client", 700016, "Application was not found in the directory.")
        if "client_assertion" in form or "client_assertion_type" in form:
            refused = self._verify_assertion(req, form)
            if refused is not None:
                return refused
        elif "client_secret" not in form:
            return aad(401, "invalid_client", 7000218, "The request body must contain the following parameter: "
                       "'client_assertion' or 'client_secret'.")
        elif client[0] is None or form["client_secret"] != client[0]:
            return aad(401, "invalid_client", 7000215, "Invalid client secret provided.")
        token = base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")
        with self._lock:
            self.token_requests += 1
            self.tokens[token] = (form["client_id"], time.time() + self.token_lifetime)
        return Reply(200, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                           "ext_expires_in": self.token_lifetime, "access_token": token})

    def _verify_assertion(self, req: SeenRequest, form: dict[str, str]) -> Reply | None:
        """A certificate credential (Microsoft identity platform, "certificate credentials"): a JWT signed
        (RS256 or PS256) with the key of a certificate uploaded to the app, named in its header by
        ``x5t#S256`` or ``x5t``; ``aud`` the token endpoint the client addressed, ``iss`` = ``sub`` = the
        client id, ``exp`` / ``nbf`` around now, a ``jti``. Refusals carry Entra's AADSTS codes. (Entra
        does not refuse a reused ``jti``: MSAL reuses an assertion for minutes; neither does the fake.)"""
        aad, client_id = self.aad, form["client_id"]
        if form.get("client_assertion_type") != CLIENT_ASSERTION:
            return aad(401, "invalid_client", 7000218, "The request body must contain the following parameter: "
                       "'client_assertion_type'.")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return aad(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        thumb = header.get("x5t#S256") or header.get("x5t")
        cert = self.certificates.get(client_id, {}).get(str(thumb))
        if cert is None:
            return aad(401, "invalid_client", 700027, "The certificate with identifier used to sign the client "
                       "assertion is not registered on application. [Reason - The key was not found., Thumbprint "
                       f"of key used by client: '{thumb}', Please visit the Azure Portal, Graph Explorer or directly "
                       "use MS Graph to see configured keys for app Id "
                       f"'{client_id}'.]")
        if cert.not_valid_after_utc < datetime.now(UTC):
            return aad(401, "invalid_client", 700027, "Client assertion contains an invalid signature. "
                       "[Reason - The key used is expired.]")
        token_url = self.addressed(req, req.path)
        try:
            claims = jwt.decode(assertion, cert.public_key(), algorithms=["RS256", "PS256"], audience=token_url,
                                options={"require": ["aud", "exp", "iss", "sub", "jti"]}, leeway=60)
        except jwt.InvalidSignatureError:
            return aad(401, "invalid_client", 700027, "Client assertion contains an invalid signature. "
                       "[Reason - The provided signature value did not match the expected signature value.]")
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return aad(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        except jwt.InvalidAudienceError:
            return aad(401, "invalid_client", 700023, "Client assertion audience claim does not match Realm "
                       f"issuer. Review the documentation at https://aka.ms/certCreds. [Expected: {token_url}]")
        except jwt.InvalidTokenError:
            return aad(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        if claims["iss"] != client_id or claims["sub"] != client_id:
            return aad(401, "invalid_client", 700021, "Client assertion application identifier doesn't match "
                       "'client_id' parameter. Review the documentation at https://aka.ms/certCreds.")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            return aad(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        with self._lock:
            self.assertions.append((header, claims))
        return None

    # -- dispatch: auth, permissions -------------------------------------------------------------------
    def dispatch(self, req: SeenRequest) -> Reply:
        if not req.path.startswith("/v1.0/"):
            return super().dispatch(req)
        auth = req.header("Authorization") or ""
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._lock:
            held = self.tokens.get(token)
        challenge = {"WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
                                         'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'}
        if held is None:
            return self.error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.",
                              challenge)
        if held[1] <= time.time():
            return self.error(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.",
                              challenge)
        granted = self.clients[held[0]][1]
        area = req.path.split("/")[2]
        if area in PERMISSIONS and not granted & set(PERMISSIONS[area]):
            return self.error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        return super().dispatch(req)

    # -- collections -----------------------------------------------------------------------------------
    def _collection(self, req: SeenRequest, items: list[Any], context: str, max_top: int = 999,
                    default_top: int = 100, build: Any = None) -> Reply:
        q = req.query
        try:
            top = int(q.get("$top", default_top))
        except ValueError:
            return self.error(400, "BadRequest", f"Invalid value '{q.get('$top')}' for $top.")
        if not 1 <= top <= max_top:
            return self.error(400, "Request_BadRequest",
                              f"Invalid page size specified: '{top}'. Must be between 1 and {max_top} inclusive.")
        start = 0
        if "$skiptoken" in q:
            try:
                start = json.loads(base64.urlsafe_b64decode(q["$skiptoken"] + "==="))["o"]
            except ValueError:
                return self.error(400, "Directory_ExpiredPageToken", "The specified page token value has expired "
                                  "and can no longer be included in your request.")
        select = [s for s in q.get("$select", "").split(",") if s]
        chosen = items[start:start + top]
        if build is not None:  # only the page's items are built: a 50,000-member group costs a page
            chosen = [b for b in (build(i) for i in chosen) if b is not None]
        page = [self._project(i, select) for i in chosen]
        body: dict[str, Any] = {"@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#{context}",
                                "value": page}
        if start + top < len(items):
            token = base64.urlsafe_b64encode(json.dumps({"o": start + top, "n": uuid.uuid4().hex[:8]}).encode())
            keep = [(k, v) for k, v in parse_qsl(req.raw_query, keep_blank_values=True) if k != "$skiptoken"]
            body["@odata.nextLink"] = (f"{self.root_url}{req.path}?"
                                       + urlencode([*keep, ("$skiptoken", token.decode().rstrip("="))], safe="$,()"))
        return Reply(200, body)

    @staticmethod
    def _project(item: dict[str, Any], select: list[str]) -> dict[str, Any]:
        if not select:
            return {k: v for k, v in item.items() if k != "signInActivity"}  # signInActivity only when selected
        out = {k: v for k, v in item.items() if k.startswith("@odata")}
        out["id"] = item.get("id")
        for s in select:
            out[s] = item.get(s)
        return out

    def organization(self, req, m):
        org = {"id": self.tenant.tenant_id, "displayName": "Contoso", "tenantType": "AAD",
               "verifiedDomains": [{"name": "contoso.test", "isDefault": True, "isInitial": False,
                                    "type": "Managed", "capabilities": "Email, OfficeCommunicationsOnline"}]}
        return self._collection(req, [org], "organization")

    def list_users(self, req, m):
        select = req.query.get("$select", "")
        if "signInActivity" in select.split(","):
            with self._lock:
                client = self.tokens[req.header("Authorization")[7:]][0]
            if not self.clients[client][1] & set(PERMISSIONS["signInActivity"]):
                return self.error(403, "Authorization_RequestDenied",
                                  "Insufficient privileges to complete the operation.")
            if not self.tenant.premium:
                return self.error(403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                                  "Neither tenant is B2C or tenant doesn't have premium license")
        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return [self.tenant.users[u] for u in sorted(self.tenant.users)]

        return self._collection(req, self.listing(("users",), build), "users")

    def list_groups(self, req, m):
        def build() -> list[dict[str, Any]]:
            with self.tenant.lock:
                return [self.tenant.groups[g] for g in sorted(self.tenant.groups)]

        return self._collection(req, self.listing(("groups",), build), "groups")

    def list_members(self, req, m):
        with self.tenant.lock:
            if m["id"] not in self.tenant.groups:
                return self.error(404, "Request_ResourceNotFound",
                                  f"Resource '{m['id']}' does not exist or one of its queried reference-property "
                                  "objects are not present.")

        def build() -> list[str]:
            with self.tenant.lock:
                return [oid for oid in self.tenant.members.get(m["id"], []) if self.tenant.kind_of(oid)]

        items = self.listing(("members", m["id"]), build)

        def member(oid: str) -> dict[str, Any] | None:
            kind = self.tenant.kind_of(oid)
            if kind is None:
                return None
            obj = {"user": self.tenant.users, "group": self.tenant.groups,
                   "servicePrincipal": self.tenant.service_principals}[kind][oid]
            return {"@odata.type": f"#microsoft.graph.{kind}", **obj}

        return self._collection(req, items, "directoryObjects", build=member)

    def list_role_definitions(self, req, m):
        with self.tenant.lock:
            items = [self.tenant.role_definitions[r] for r in sorted(self.tenant.role_definitions)]
        return self._collection(req, items, "roleManagement/directory/roleDefinitions")

    def list_role_assignments(self, req, m):
        expand = req.query.get("$expand", "")
        with self.tenant.lock:
            items = []
            for role_id, principal in self.tenant.role_assignments:
                kind = self.tenant.kind_of(principal)
                if kind is None:
                    continue
                a = {"id": f"{role_id[:8]}-{principal}", "principalId": principal, "roleDefinitionId": role_id,
                     "directoryScopeId": "/"}
                if expand.startswith("principal"):
                    a["principal"] = {"@odata.type": f"#microsoft.graph.{kind}", "id": principal}
                items.append(a)
        return self._collection(req, items, "roleManagement/directory/roleAssignments")

    def list_service_principals(self, req, m):
        with self.tenant.lock:
            items = [self.tenant.service_principals[s] for s in sorted(self.tenant.service_principals)]
        return self._collection(req, items, "servicePrincipals")

    def list_app_role_assigned_to(self, req, m):
        with self.tenant.lock:
            sp = self.tenant.service_principals.get(m["id"])
            if sp is None:
                return self.error(404, "Request_ResourceNotFound", f"Resource '{m['id']}' does not exist.")
            items = []
            for role_id, principal in self.tenant.app_role_assignments.get(m["id"], []):
                kind = self.tenant.kind_of(principal)
                if kind is None:
                    continue
                name = (self.tenant.users.get(principal) or self.tenant.groups.get(principal) or {}).get("displayName")
                items.append({"id": f"ara-{role_id[:8]}-{principal}", "appRoleId": role_id,
                              "createdDateTime": "2024-01-02T03:04:05Z", "deletedDateTime": None,
                              "principalDisplayName": name, "principalId": principal,
                              "principalType": {"user": "User", "group": "Group"}.get(kind, "ServicePrincipal"),
                              "resourceDisplayName": sp["displayName"], "resourceId": sp["id"]})
        return self._collection(req, items, "servicePrincipals/appRoleAssignedTo")
