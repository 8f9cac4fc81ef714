"""Microsoft Entra ID (Azure AD) through Microsoft Graph v1.0: users, groups with their direct
members and group-in-group nesting, directory roles and who holds them, enterprise apps (service
principals) with their app role assignments, and sign-in activity when the tenant is licensed.

Token: OAuth 2.0 client credentials at ``{authority}/{tenant_id}/oauth2/v2.0/token`` with scope
``https://graph.microsoft.com/.default``, the app proving itself with a client secret or with a
certificate (a client assertion, RFC 7523: PS256 or RS256, the certificate's thumbprints in ``x5t#S256``
/ ``x5t``, ``aud`` the token endpoint, ``iss`` = ``sub`` = the client id, a fresh ``jti``, five
minutes long); refreshed before it expires and once on a 401. What it
reads, all with GET, ``$top=999`` where Graph pages, ``$select`` only what is mapped, following
``@odata.nextLink`` whole::

    /v1.0/organization                                         check: the tenant
    /v1.0/users?$select=…,signInActivity&$top=999              accounts (+ last sign-in)
    /v1.0/servicePrincipals?$select=…&$top=999                 resources (enterprise apps) + app roles
    /v1.0/groups?$select=…&$top=999                            entitlements: security, Microsoft 365, dynamic
    /v1.0/roleManagement/directory/roleDefinitions             entitlements: directory roles
    /v1.0/groups/{id}/members?$select=id&$top=999              direct members: users -> assignments,
                                                               groups -> nested (devices, contacts, apps skipped)
    /v1.0/roleManagement/directory/roleAssignments?$expand=principal   role holders (users; groups nested)
    /v1.0/servicePrincipals/{id}/appRoleAssignedTo?$top=999    app role assignments (users; groups nested)

``signInActivity`` needs AuditLog.Read.All and an Entra ID P1/P2 licence; without them Graph
answers 403 (``Authentication_RequestFromNonPremiumTenantOrB2CTenant`` or
``Authorization_RequestDenied``) and the users are read again without it, saying so once
(``entra_sign_in_activity_unavailable``). 429 and 503 are retried after ``Retry-After``.

Ids: Graph object ids; an app role is ``{servicePrincipalId}:{appRoleId}`` (the "Default Access"
role id ``00000000-…`` is the same in every app). Mapping: :func:`map_user`, :func:`last_sign_in`,
:func:`map_group`, :func:`map_member`, :func:`map_role_definition`, :func:`map_role_assignment`,
:func:`map_service_principal`, :func:`map_app_role_assignment` (pure functions).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.credentials import OAuth2ClientCredentials, check_key_matches_certificate
from ingest.errors import AuthError
from ingest.http import HttpClient, HttpSettings, NextUrlPaginator
from ingest.records import AccountStatus
from ingest.streams import Stream, StreamReader

__all__ = [
    "DEFAULT_ACCESS",
    "EntraAuth",
    "EntraConnector",
    "EntraSettings",
    "PERMISSIONS",
    "last_sign_in",
    "map_app_role_assignment",
    "map_group",
    "map_member",
    "map_role_assignment",
    "map_role_definition",
    "map_service_principal",
    "map_user",
]

DEFAULT_ACCESS = "00000000-0000-0000-0000-000000000000"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TOP = 999
USER_FIELDS = ("id", "displayName", "givenName", "surname", "userPrincipalName", "mail", "accountEnabled",
               "userType", "jobTitle", "department", "employeeId", "createdDateTime")
GROUP_FIELDS = ("id", "displayName", "description", "groupTypes", "securityEnabled", "mailEnabled",
                "membershipRule", "createdDateTime")
SP_FIELDS = ("id", "appId", "displayName", "accountEnabled", "servicePrincipalType", "appOwnerOrganizationId",
             "appRoles")
# least-privileged application permissions, by what they let the connector read
PERMISSIONS = {
    "users": "User.Read.All",
    "groups": "GroupMember.Read.All",
    "roles": "RoleManagement.Read.Directory",
    "apps": "Application.Read.All",
    "sign_ins": "AuditLog.Read.All (with an Entra ID P1 or P2 licence)",
}
_NEVER = "0001-01-01T00:00:00Z"


# -- configuration ---------------------------------------------------------------------------------

class EntraSettings(HttpSettings):
    """Which tenant (plus the shared HTTP settings)."""

    tenant_id: str = Field(description="Directory (tenant) id, a GUID, or the tenant's primary domain.")
    sign_in_activity: bool = Field(True, description="Read signInActivity (last sign-in; needs AuditLog.Read.All "
                                   "and Entra ID P1/P2); without the licence the users are read without it.")
    graph_url: str = Field("https://graph.microsoft.com", description="Microsoft Graph root (national clouds: "
                           "https://graph.microsoft.us, https://microsoftgraph.chinacloudapi.cn).")
    authority: str = Field("https://login.microsoftonline.com", description="Token authority (national clouds: "
                           "https://login.microsoftonline.us, https://login.chinacloudapi.cn).")
    max_concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, v: str) -> str:
        v = v.strip()
        if not v or "/" in v or " " in v:
            raise ValueError("must be the directory (tenant) id, e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47")
        return v

    @field_validator("graph_url", "authority")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an https:// URL")
        return v


_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


def pem_blocks(text: str) -> dict[str, str]:
    """The PEM blocks of a text by label (``PRIVATE KEY``, ``RSA PRIVATE KEY``, ``CERTIFICATE``; the first of each)."""
    out: dict[str, str] = {}
    for m in _PEM_BLOCK.finditer(text):
        out.setdefault(m.group(1), m.group(0) + "\n")
    return out


class EntraAuth(BaseModel):
    """An app registration's client id (application permissions, admin-consented) with either a client
    secret, or a certificate: ``private_key`` (PEM) of a certificate uploaded to the app registration
    and ``certificate`` (PEM; may be left out when the private key's PEM file holds it too, as
    ``az ad sp create-for-rbac --create-cert`` writes it). With a certificate the token request carries
    a client assertion signed with the key (RFC 7523; ``algorithm`` PS256, or RS256) that names the
    certificate by its thumbprints (``x5t#S256``, ``x5t``) - no secret travels."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["client_secret"]}, {"required": ["private_key"]}]})

    client_id: str = Field(description="Application (client) id of the app registration.")
    client_secret: SecretStr | None = Field(None, description="A client secret of the app registration.",
                                            json_schema_extra={"writeOnly": True})
    private_key: SecretStr | None = Field(None, description="PEM private key of a certificate uploaded to the app "
                                          "registration (Certificates & secrets), instead of a client secret.",
                                          json_schema_extra={"writeOnly": True})
    certificate: str | None = Field(None, description="That certificate (PEM), unless the private_key PEM holds it.")
    algorithm: Literal["PS256", "RS256"] = Field("PS256", description="Signature of the client assertion "
                                                 "(Microsoft recommends PS256).")

    @model_validator(mode="after")
    def _one_kind(self) -> EntraAuth:
        if (self.client_secret is None) == (self.private_key is None):
            raise ValueError("give client_secret, or private_key (+ certificate) of an uploaded certificate, not both")
        if self.client_secret is not None:
            if not self.client_secret.get_secret_value().strip():
                raise ValueError("client_secret is empty (is its environment variable set?)")
            if self.certificate is not None:
                raise ValueError("certificate goes with private_key, not with client_secret")
            return self
        blocks = pem_blocks(self.private_key.get_secret_value())
        key = next((v for k, v in blocks.items() if k.endswith("PRIVATE KEY")), None)
        if key is None:
            raise ValueError("private_key holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        if self.certificate is None:
            if "CERTIFICATE" not in blocks:
                raise ValueError("give certificate (PEM): the private_key PEM does not hold it")
            self.certificate = blocks["CERTIFICATE"]
        check_key_matches_certificate(key, self.certificate)
        return self

    @property
    def kind(self) -> str:
        return "client secret" if self.client_secret is not None else "certificate"

    @property
    def fields(self) -> str:
        if self.client_secret is not None:
            return "auth.client_id / auth.client_secret (expired secrets are refused)"
        return ("auth.client_id / auth.private_key / auth.certificate (the certificate must be uploaded to this app "
                "registration and not expired)")

    def httpx_auth(self, token_url: str) -> httpx.Auth:
        """Client credentials at ``token_url`` for Graph: with the secret, or a certificate-signed assertion."""
        if self.client_secret is not None:
            cred = OAuth2ClientCredentials(client_id=self.client_id, token_url=token_url, scopes=[GRAPH_SCOPE],
                                           client_secret=self.client_secret.get_secret_value().strip())
        else:
            key = next(v for k, v in pem_blocks(self.private_key.get_secret_value()).items()
                       if k.endswith("PRIVATE KEY"))
            cred = OAuth2ClientCredentials(client_id=self.client_id, token_url=token_url, scopes=[GRAPH_SCOPE],
                                           private_key=key, certificate=self.certificate, algorithm=self.algorithm)
        return cred.httpx_auth()


# -- mapping (pure functions) -------------------------------------------------------------------------

def _str(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list)):
        return None
    s = v if isinstance(v, str) else str(v)
    return s if s.strip() else None


def _kind(obj: dict[str, Any]) -> str:
    """``#microsoft.graph.user`` -> ``user``."""
    return str(obj.get("@odata.type") or "").rsplit(".", 1)[-1]


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    """A Graph user -> an Account. ``accountEnabled: false`` is SUSPENDED; ``userType`` (Member,
    Guest) is kept in custom_attributes; signInActivity is last activity, not part of the account."""
    upn = _str(raw.get("userPrincipalName"))
    email = _str(raw.get("mail")) or (upn if upn and "@" in upn and "#EXT#" not in upn else None)
    custom = {k: v for k in ("userType", "jobTitle", "department", "employeeId") if (v := _str(raw.get(k)))}
    return {
        "account_id": _str(raw.get("id")),
        "email": email,
        "username": upn,
        "display_name": _str(raw.get("displayName")),
        "given_name": _str(raw.get("givenName")),
        "family_name": _str(raw.get("surname")),
        "status": (AccountStatus.SUSPENDED if raw.get("accountEnabled") is False else AccountStatus.ACTIVE).value,
        "account_type": "user",
        "custom_attributes": custom,
        "extra": {k: v for k, v in raw.items() if k != "signInActivity" and not k.startswith("@odata")},
    }


def last_sign_in(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``signInActivity.lastSignInDateTime`` as a LastActivity; None when absent or never."""
    activity = raw.get("signInActivity") if isinstance(raw.get("signInActivity"), dict) else {}
    value = _str(activity.get("lastSignInDateTime"))
    if not value or value == _NEVER or not _str(raw.get("id")):
        return None
    return {"account_id": raw["id"], "last_activity_at": datetime.fromisoformat(value.replace("Z", "+00:00"))}


def group_kind(raw: dict[str, Any]) -> str:
    types = raw.get("groupTypes") or []
    if "DynamicMembership" in types:
        return "dynamic"
    if "Unified" in types:
        return "microsoft365"
    return "security" if raw.get("securityEnabled") else "distribution"


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    """A Graph group -> an Entitlement of type ``group`` (``extra.kind``: security, microsoft365,
    dynamic, distribution). A dynamic group's members follow its rule: it is not assignable."""
    kind = group_kind(raw)
    return {
        "entitlement_type": "group", "resource_type": "", "resource_id": "",
        "entitlement_id": _str(raw.get("id")),
        "label": _str(raw.get("displayName")),
        "description": _str(raw.get("description")),
        "is_assignable": kind != "dynamic",
        "extra": {"kind": kind, **{k: raw.get(k) for k in GROUP_FIELDS[3:] if k in raw}},
    }


def map_member(group_id: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    """A directory object in a group's members: a user is an Assignment, a group is nested; devices,
    contacts and service principals are not accounts (None)."""
    oid, kind = _str(obj.get("id")), _kind(obj)
    if not oid:
        return None
    if kind == "user":
        return {"account_id": oid, "entitlement_id": group_id, "resource_type": "", "resource_id": ""}
    if kind == "group":
        return {"entitlement_id": group_id, "member_entitlement_id": oid}
    return None


def map_role_definition(raw: dict[str, Any]) -> dict[str, Any]:
    """A unifiedRoleDefinition -> an Entitlement of type ``directory_role``."""
    return {"entitlement_type": "directory_role", "resource_type": "", "resource_id": "",
            "entitlement_id": _str(raw.get("id")), "label": _str(raw.get("displayName")),
            "description": _str(raw.get("description")), "is_assignable": raw.get("isEnabled") is not False,
            "extra": {"isBuiltIn": raw.get("isBuiltIn"), "templateId": raw.get("templateId")}}


def map_role_assignment(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A unifiedRoleAssignment (with ``principal`` expanded): a user holds the role (Assignment), a
    role-assignable group is nested in it; a service principal is not an account (None)."""
    role, principal = _str(raw.get("roleDefinitionId")), raw.get("principal") or {}
    pid = _str(raw.get("principalId")) or _str(principal.get("id"))
    if not role or not pid:
        return None
    kind = _kind(principal)
    if kind == "user":
        return {"account_id": pid, "entitlement_id": role, "resource_type": "", "resource_id": ""}
    if kind == "group":
        return {"entitlement_id": role, "member_entitlement_id": pid}
    return None


def app_role_id(sp_id: str, role_id: str) -> str:
    return f"{sp_id}:{role_id}"


def map_service_principal(raw: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A service principal -> (a Resource of type ``service_principal``, its app roles as
    Entitlements of type ``app_role``, "Default Access" included)."""
    sp = _str(raw.get("id"))
    resource = {"resource_type": "service_principal", "resource_id": sp, "label": _str(raw.get("displayName")),
                "description": None,
                "extra": {k: raw.get(k) for k in ("appId", "accountEnabled", "servicePrincipalType",
                                                   "appOwnerOrganizationId") if k in raw}}
    roles = [{"id": DEFAULT_ACCESS, "displayName": "Default Access", "description": "Assigned without a role",
              "value": None, "isEnabled": True}]
    roles += [r for r in raw.get("appRoles") or [] if isinstance(r, dict) and r.get("id")]
    entitlements = [{"entitlement_type": "app_role", "resource_type": "service_principal", "resource_id": sp,
                     "entitlement_id": app_role_id(sp, r["id"]), "label": _str(r.get("displayName")),
                     "description": _str(r.get("description")), "is_assignable": r.get("isEnabled") is not False,
                     "extra": {"value": r.get("value"), "app_role_id": r["id"]}} for r in roles] if sp else []
    return resource, entitlements


def map_app_role_assignment(sp_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """An appRoleAssignment on a service principal: a user gets the role (Assignment), a group is
    nested in it; a service principal is not an account (None)."""
    pid, role = _str(raw.get("principalId")), _str(raw.get("appRoleId")) or DEFAULT_ACCESS
    ent = app_role_id(sp_id, role)
    ptype = str(raw.get("principalType") or "")
    if not pid:
        return None
    if ptype == "User":
        return {"account_id": pid, "entitlement_id": ent, "resource_type": "service_principal", "resource_id": sp_id}
    if ptype == "Group":
        return {"entitlement_id": ent, "member_entitlement_id": pid}
    return None


# -- streams (what to list; the engine pages, fans out per parent and runs the listings concurrently) ----

def _graph(name: str, path: str, **kw: Any) -> Stream:
    """A Graph collection: ``{"value": [...], "@odata.nextLink": "<whole URL>"}``."""
    return Stream(name, path, selector="value", paginator=NextUrlPaginator("@odata.nextLink"), **kw)


USERS = _graph("accounts", "users", params={"$select": ",".join(USER_FIELDS), "$top": TOP})
USERS_WITH_SIGN_INS = _graph("accounts", "users",
                             params={"$select": ",".join(USER_FIELDS) + ",signInActivity", "$top": TOP})
SERVICE_PRINCIPALS = _graph("service principals", "servicePrincipals",
                            params={"$select": ",".join(SP_FIELDS), "$top": TOP})
ROLE_DEFINITIONS = _graph("directory roles", "roleManagement/directory/roleDefinitions",
                          params={"$select": "id,displayName,description,isBuiltIn,isEnabled,templateId"},
                          map=map_role_definition)
GROUPS = _graph("groups", "groups", params={"$select": ",".join(GROUP_FIELDS), "$top": TOP}, map=map_group)
ROLE_ASSIGNMENTS = _graph("role assignments", "roleManagement/directory/roleAssignments",
                          params={"$expand": "principal"}, map=map_role_assignment)
APP_ROLE_ASSIGNMENTS = _graph("app role assignments", "servicePrincipals/{parent.id}/appRoleAssignedTo",
                              params={"$top": TOP}, for_each=SERVICE_PRINCIPALS, skip_missing=True, ordered=False,
                              map=lambda a, sp: map_app_role_assignment(sp["id"], a))
MEMBERS = _graph("group members", "groups/{parent.entitlement_id}/members", params={"$select": "id", "$top": TOP},
                 for_each=GROUPS, skip_missing=True, ordered=False,
                 map=lambda m, group: map_member(group["entitlement_id"], m))


# -- the connector ------------------------------------------------------------------------------------

class EntraConnector(Connector):
    """A Microsoft Entra ID tenant through Microsoft Graph."""

    type: ClassVar[str] = "entra"
    name: ClassVar[str] = "Microsoft Entra ID"
    description: ClassVar[str] = (
        "Entra ID users (members and guests), groups (security, Microsoft 365, dynamic) with direct members "
        "and nesting, directory roles and holders, enterprise apps with app role assignments, last sign-in "
        "when licensed; read-only through Microsoft Graph with application permissions."
    )
    Settings: ClassVar[type[BaseModel]] = EntraSettings
    Auth: ClassVar[type[BaseModel]] = EntraAuth
    # the token request at the Microsoft identity platform is the one POST, and it only reads
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (("POST", r"/oauth2/v2\.0/token$"),)
    resource_types: ClassVar[list[ResourceType]] = [
        ResourceType(type_id="service_principal", type_label="Enterprise application")]
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="group", type_label="Group"),
        EntitlementType(type_id="directory_role", type_label="Directory role"),
        EntitlementType(type_id="app_role", type_label="App role", resource_type_id="service_principal"),
    ]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._sign_ins: list[dict[str, Any]] | None = None
        self._sign_in_note: str | None = None

    @functools.cached_property
    def http(self) -> HttpClient:
        s, a = self.settings, self.auth
        token_url = f"{s.authority}/{quote(s.tenant_id, safe='')}/oauth2/v2.0/token"
        return self.ctx.http_client(f"{s.graph_url}/v1.0", auth=a.httpx_auth(token_url))

    # -- errors ------------------------------------------------------------------------------------
    def _auth_error(self, e: AuthError, what: str | None = None) -> AuthError:
        if e.status_code == 403:
            need = PERMISSIONS.get(what or "", "the application permissions listed in the README")
            text = (f"Microsoft Graph refused the request: the app lacks the application permission {need} "
                    f"(granted with admin consent) ({e.message})")
        elif "token endpoint" in e.message:
            text = (f"Microsoft Entra refused the app's {self.auth.kind} for tenant {self.settings.tenant_id} "
                    f"({e.message}); check {self.auth.fields} and settings.tenant_id")
        else:
            text = f"Microsoft Graph refused the access token (HTTP {e.status_code}) ({e.message})"
        return AuthError(text, connector=self.ctx.name, request=e.request, status_code=e.status_code)

    # -- check -------------------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        info: dict[str, Any] = {"tenant_id": self.settings.tenant_id, "auth": self.auth.kind}
        try:
            org = (self.http.get_json("organization", params={"$select": "id,displayName,verifiedDomains"})
                   .get("value") or [{}])[0]
            info.update(organization=org.get("displayName"),
                        default_domain=next((d.get("name") for d in org.get("verifiedDomains") or []
                                             if d.get("isDefault")), None))
        except AuthError as e:
            if e.status_code != 403:
                raise self._auth_error(e) from None
            info["organization"] = "(not readable without Organization.Read.All; not needed for runs)"
        probes = {"users": ("users", {"$select": "id", "$top": 1}), "groups": ("groups", {"$select": "id", "$top": 1}),
                  "roles": ("roleManagement/directory/roleDefinitions", {"$select": "id"}),
                  "apps": ("servicePrincipals", {"$select": "id", "$top": 1})}
        missing = []
        for what, (path, params) in probes.items():
            try:
                self.http.get_json(path, params=params)
            except AuthError as e:
                if e.status_code != 403:
                    raise self._auth_error(e, what) from None
                missing.append(f"{PERMISSIONS[what]} (GET /v1.0/{path})")
        if missing:
            raise AuthError(f"Microsoft Graph accepted the app but it may not read: {', '.join(missing)}; add these "
                            "application permissions to the app registration and grant admin consent",
                            connector=self.ctx.name, status_code=403)
        if self.settings.sign_in_activity:
            try:
                self.http.get_json("users", params={"$select": "id,signInActivity", "$top": 1})
                info["sign_in_activity"] = "readable"
            except AuthError as e:
                if e.status_code != 403:
                    raise self._auth_error(e) from None
                info["sign_in_activity"] = f"not readable ({e.message}); needs {PERMISSIONS['sign_ins']}"
        return info

    # -- streams (declared above; ingest.streams pages, fans out and checks) ----------------------
    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[SERVICE_PRINCIPALS, GROUPS])

    def _read(self, stream: Stream, what: str) -> Iterator[Any]:
        try:
            yield from self.reader.records(stream)
        except AuthError as e:
            raise self._auth_error(e, what) from None

    def _users(self) -> Iterator[dict[str, Any]]:
        if self.settings.sign_in_activity and self._sign_in_note is None:
            sent = False
            try:
                for raw in self.reader.records(USERS_WITH_SIGN_INS):
                    sent = True
                    yield raw
                return
            except AuthError as e:
                if e.status_code != 403 or sent:
                    raise self._auth_error(e, "sign_ins" if e.status_code == 403 else "users") from None
                self._sign_in_note = e.message  # unlicensed tenant or no AuditLog.Read.All: say so once
                self.log.warning("entra_sign_in_activity_unavailable", reason=e.message,
                                 hint=f"last sign-in needs {PERMISSIONS['sign_ins']}; users are read without it")
        yield from self._read(USERS, "users")

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        sign_ins: list[dict[str, Any]] = []
        for raw in self._users():
            if (la := last_sign_in(raw)) is not None:
                sign_ins.append(la)  # kept for get_last_activity: the users are listed once
            yield map_user(raw)
        self._sign_ins = sign_ins

    def get_last_activity(self) -> Iterator[dict[str, Any]]:
        if self._sign_ins is None:
            self._sign_ins = [la for raw in self._users() if (la := last_sign_in(raw))]
        yield from self._sign_ins

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for raw in self._read(SERVICE_PRINCIPALS, "apps"):
            yield map_service_principal(raw)[0]

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        try:
            for raw in self.reader.parents(APP_ROLE_ASSIGNMENTS):  # what list_resources read
                yield from map_service_principal(raw)[1]
        except AuthError as e:
            raise self._auth_error(e, "apps") from None
        yield from self._read(ROLE_DEFINITIONS, "roles")
        yield from self._read(GROUPS, "groups")

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        yield from self._read(ROLE_ASSIGNMENTS, "roles")
        yield from self._read(APP_ROLE_ASSIGNMENTS, "apps")
        yield from self._read(MEMBERS, "groups")
