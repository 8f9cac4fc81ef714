"""Okta: users, groups and their members, applications and their user and group assignments,
admin roles and who holds them, and each user's last sign-in.

Auth: an API token (``Authorization: SSWS …``) or an OAuth 2.0 service app (client credentials
with a ``private_key_jwt`` assertion at ``/oauth2/v1/token``, scopes ``okta.users.read``,
``okta.groups.read``, ``okta.apps.read``, ``okta.roles.read``, ``okta.orgs.read``; the token is
refreshed before it expires and once on a 401). What it reads, all with GET (``limit`` at each endpoint's maximum, the next page from the
``after`` cursor in ``Link: <…>; rel="next"``)::

    /api/v1/org                                    check: the tenant
    /api/v1/users?limit=200                        accounts (every status but DEPROVISIONED ...)
    /api/v1/users?limit=200&filter=status eq "DEPROVISIONED"   ... which Okta lists only when asked
    /api/v1/apps?limit=200                         resources (type ``app``) + one ``app_access``
                                                   entitlement per app
    /api/v1/groups?limit=10000                     entitlements (type ``group``: OKTA_GROUP, APP_GROUP, BUILT_IN)
    /api/v1/groups/{id}/users?limit=1000           group members -> assignments
    /api/v1/groups/{id}/roles                      admin roles held by a group -> nested (role <- group)
    /api/v1/apps/{id}/users?limit=500              app users; ``scope: USER`` are direct assignments
                                                   (``GROUP`` ones come through the group, below)
    /api/v1/apps/{id}/groups?limit=200             groups assigned to an app -> nested (app <- group)
    /api/v1/iam/assignees/users?limit=100          the users who hold admin roles, then
    /api/v1/users/{id}/roles                       each one's roles -> assignments (``assignmentType: USER``)

Members are listed per group, never groups per user (one request per group, not per user): the
streams are declared with :mod:`ingest.streams`, whose engine pages them and runs the per-group and
per-app listings ``max_concurrency`` at a time, page by page. Rate limits: the HTTP layer reads ``X-Rate-Limit-Remaining``
/ ``-Reset`` (epoch seconds) on every answer and spaces the last requests of a window out until
it resets (:meth:`ingest.http.RateLimiter.pace`); a 429 (``E0000047``) pauses the client until
``X-Rate-Limit-Reset`` and the request is retried, so a throttled run still ends complete.

Status mapping (:data:`STATUS_MAP`; the Okta status is kept in ``custom_attributes.okta_status``):

=================  ==============  ==========================================================
Okta               ours            why
=================  ==============  ==========================================================
ACTIVE             ACTIVE
RECOVERY           ACTIVE          an active user resetting a password keeps their access
LOCKED_OUT         ACTIVE          a sign-in lock, lifted by time or an admin; access stands
PASSWORD_EXPIRED   ACTIVE          signs in once the password is changed; access stands
PROVISIONED        PENDING         activated by an admin, the user has not finished activation
STAGED             PENDING         created, not activated yet
SUSPENDED          SUSPENDED       cannot sign in until unsuspended; assignments kept
DEPROVISIONED      DEPROVISIONED   deactivated
=================  ==============  ==========================================================

Mapping is done by the pure functions :func:`map_user`, :func:`map_group`, :func:`map_app`,
:func:`map_app_user`, :func:`map_app_group`, :func:`map_role` and :func:`last_login`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.credentials import OAuth2ClientCredentials
from ingest.errors import AuthError
from ingest.http import ApiKeyAuth, HttpClient, HttpSettings, LinkHeaderPaginator, NextUrlPaginator
from ingest.records import AccountStatus
from ingest.streams import Stream, StreamReader

__all__ = [
    "ADMIN_ROLES",
    "OktaAuth",
    "OktaConnector",
    "OktaSettings",
    "STATUS_MAP",
    "last_login",
    "map_app",
    "map_app_group",
    "map_app_user",
    "map_group",
    "map_group_role",
    "map_member",
    "map_role",
    "map_user",
    "map_user_role",
    "okta_status",
]

STATUS_MAP: dict[str, AccountStatus] = {
    "ACTIVE": AccountStatus.ACTIVE,
    "RECOVERY": AccountStatus.ACTIVE,
    "LOCKED_OUT": AccountStatus.ACTIVE,
    "PASSWORD_EXPIRED": AccountStatus.ACTIVE,
    "PROVISIONED": AccountStatus.PENDING,
    "STAGED": AccountStatus.PENDING,
    "SUSPENDED": AccountStatus.SUSPENDED,
    "DEPROVISIONED": AccountStatus.DEPROVISIONED,
}

# Okta's standard admin roles (RoleType in the management API), entitlement id -> label
ADMIN_ROLES: dict[str, str] = {
    "SUPER_ADMIN": "Super Administrator",
    "ORG_ADMIN": "Organization Administrator",
    "APP_ADMIN": "Application Administrator",
    "USER_ADMIN": "Group Administrator",
    "HELP_DESK_ADMIN": "Help Desk Administrator",
    "READ_ONLY_ADMIN": "Read-only Administrator",
    "MOBILE_ADMIN": "Mobile Administrator",
    "API_ACCESS_MANAGEMENT_ADMIN": "API Access Management Administrator",
    "REPORT_ADMIN": "Report Administrator",
    "GROUP_MEMBERSHIP_ADMIN": "Group Membership Administrator",
}

# page sizes: each endpoint's maximum ``limit``
PAGE = {"users": 200, "groups": 10000, "group_users": 1000, "apps": 200, "app_users": 500, "app_groups": 200,
        "assignees": 100}
_PROFILE_ATTRIBUTES = ("department", "title", "employeeNumber", "userType", "manager", "managerId",
                       "organization", "division", "costCenter")
# fields of a user that change without the account changing (sign-ins, bookkeeping)
_VOLATILE_USER = ("lastLogin", "lastUpdated", "_links", "_embedded")


# -- configuration ---------------------------------------------------------------------------------

class OktaSettings(HttpSettings):
    """Which Okta org, and what to read (plus the shared HTTP settings)."""

    domain: str = Field(description="The Okta org's domain, e.g. acme.okta.com (or a full https:// URL).")
    include_deprovisioned: bool = Field(True, description="Also list DEPROVISIONED (deactivated) users, which "
                                        "Okta leaves out of /users unless asked with a filter.")
    group_roles: bool = Field(True, description="Read the admin roles assigned to groups (one request per "
                              "group).")
    max_concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v:
            raise ValueError("must be the Okta org's domain, e.g. acme.okta.com")
        if v.startswith(("http://", "https://")):
            return v
        if "/" in v or " " in v:
            raise ValueError("must be a domain such as acme.okta.com, without a path")
        return f"https://{v}"


READ_SCOPES = ["okta.users.read", "okta.groups.read", "okta.apps.read", "okta.roles.read", "okta.orgs.read"]


class OktaAuth(BaseModel):
    """An Okta API token (sent as ``Authorization: SSWS <token>``; a read-only administrator's token is
    enough), or an OAuth 2.0 service app: ``client_id`` + ``private_key`` (PEM; ``key_id`` as registered)
    for the client credentials grant with a ``private_key_jwt`` client assertion and read-only scopes."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["api_key"]}, {"required": ["client_id", "private_key"]}]})

    api_key: SecretStr | None = Field(None, description="Okta API token (Security > API > Tokens).",
                                      json_schema_extra={"writeOnly": True})
    client_id: str | None = Field(None, description="Client id of an API Services app (OAuth service app).")
    private_key: SecretStr | None = Field(None, description="PEM private key whose public JWK is registered "
                                          "with the service app.", json_schema_extra={"writeOnly": True})
    key_id: str | None = Field(None, description="kid of that key, as shown in the app's public keys.")
    scopes: list[str] = Field(default_factory=lambda: list(READ_SCOPES),
                              description="Okta API scopes granted to the service app (read-only).")

    @model_validator(mode="after")
    def _one_kind(self) -> OktaAuth:
        oauth = self.client_id is not None or self.private_key is not None
        if (self.api_key is None) == (not oauth):
            raise ValueError("give api_key, or client_id + private_key (OAuth service app), not both")
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("api_key is empty (is its environment variable set?)")
        if oauth and (not self.client_id or self.private_key is None
                      or not self.private_key.get_secret_value().strip()):
            raise ValueError("an OAuth service app needs both client_id and private_key")
        return self

    @property
    def kind(self) -> str:
        return "API token" if self.api_key is not None else "OAuth service app key"

    @property
    def fields(self) -> str:
        return "auth.api_key" if self.api_key is not None else "auth.client_id / auth.private_key / auth.key_id"

    def httpx_auth(self, token_url: str):
        if self.api_key is not None:
            return ApiKeyAuth(self.api_key.get_secret_value().strip(), prefix="SSWS")
        return OAuth2ClientCredentials(client_id=self.client_id, private_key=self.private_key, key_id=self.key_id,
                                       token_url=token_url, scopes=self.scopes).httpx_auth()


# -- mapping (pure functions) -------------------------------------------------------------------------

def _str(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list)):
        return None
    s = v if isinstance(v, str) else str(v)
    return s if s.strip() else None


def okta_status(status: Any) -> AccountStatus:
    """An Okta user status -> ours (see :data:`STATUS_MAP`); an unknown one counts as ACTIVE."""
    return STATUS_MAP.get(str(status or "").upper(), AccountStatus.ACTIVE)


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    """An Okta User -> an Account record (dict). ``extra`` keeps the user without ``lastLogin``,
    ``lastUpdated`` and links (a sign-in is last activity, not a change of the account)."""
    profile = raw.get("profile") if isinstance(raw.get("profile"), dict) else {}
    given, family = _str(profile.get("firstName")), _str(profile.get("lastName"))
    display = _str(profile.get("displayName")) or (" ".join(p for p in (given, family) if p) or None)
    custom: dict[str, Any] = {"okta_status": _str(raw.get("status"))}
    for key in _PROFILE_ATTRIBUTES:
        if (v := _str(profile.get(key))) is not None:
            custom[key] = v
    return {
        "account_id": _str(raw.get("id")),
        "email": _str(profile.get("email")),
        "username": _str(profile.get("login")),
        "display_name": display,
        "given_name": given,
        "family_name": family,
        "status": okta_status(raw.get("status")).value,
        "account_type": "user",
        "custom_attributes": custom,
        "extra": {k: v for k, v in raw.items() if k not in _VOLATILE_USER},
    }


def last_login(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A LastActivity record from a user's ``lastLogin``; None when the user never signed in."""
    value = _str(raw.get("lastLogin"))
    if not value or not _str(raw.get("id")):
        return None
    return {"account_id": raw["id"], "last_activity_at": datetime.fromisoformat(value.replace("Z", "+00:00"))}


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    """An Okta Group -> an Entitlement of type ``group``; ``extra.type`` is OKTA_GROUP, APP_GROUP or
    BUILT_IN. The membership timestamps are left out: a new member is an assignment, not a changed group."""
    profile = raw.get("profile") if isinstance(raw.get("profile"), dict) else {}
    return {
        "entitlement_type": "group",
        "resource_type": "",
        "resource_id": "",
        "entitlement_id": _str(raw.get("id")),
        "label": _str(profile.get("name")),
        "description": _str(profile.get("description")),
        "is_assignable": raw.get("type") != "BUILT_IN",
        "extra": {"type": raw.get("type"), "objectClass": raw.get("objectClass"), "created": raw.get("created"),
                  "profile": {k: v for k, v in profile.items() if k not in ("name", "description")}},
    }


def map_app(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An Okta Application -> (a Resource of type ``app``, its ``app_access`` Entitlement)."""
    aid, label = _str(raw.get("id")), _str(raw.get("label"))
    extra = {k: raw.get(k) for k in ("name", "status", "signOnMode", "created", "features") if k in raw}
    resource = {"resource_type": "app", "resource_id": aid, "label": label, "description": None, "extra": extra}
    entitlement = {"entitlement_type": "app_access", "resource_type": "app", "resource_id": aid,
                   "entitlement_id": aid, "label": f"Access to {label}" if label else None,
                   "description": None, "is_assignable": raw.get("status") == "ACTIVE", "extra": {}}
    return resource, entitlement


def map_app_user(app_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """An AppUser -> an Assignment when the user is assigned directly (``scope: USER``); None for
    ``scope: GROUP`` (that access comes through the group, see :func:`map_app_group`)."""
    if str(raw.get("scope") or "USER").upper() != "USER" or not _str(raw.get("id")):
        return None
    return {"account_id": raw["id"], "entitlement_id": app_id, "resource_type": "app", "resource_id": app_id}


def map_app_group(app_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """An ApplicationGroupAssignment -> the group nested in the app's access entitlement."""
    gid = _str(raw.get("id"))
    return {"entitlement_id": app_id, "member_entitlement_id": gid} if gid else None


def map_role(raw: dict[str, Any]) -> str | None:
    """The entitlement id of an admin role assignment: its standard role type; None for a custom
    role (not read yet) or an inactive assignment."""
    rtype = _str(raw.get("type"))
    if rtype not in ADMIN_ROLES or str(raw.get("status") or "ACTIVE").upper() != "ACTIVE":
        return None
    return rtype


def map_member(group_id: str, user: dict[str, Any]) -> dict[str, Any] | None:
    """A user listed in /groups/{id}/users -> the member's Assignment to the group."""
    uid = _str(user.get("id")) if isinstance(user, dict) else None
    return {"account_id": uid, "entitlement_id": group_id, "resource_type": "", "resource_id": ""} if uid else None


def map_group_role(group_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """An admin role held by a group -> the group nested in the role."""
    rid = map_role(raw)
    return {"entitlement_id": rid, "member_entitlement_id": group_id} if rid else None


def map_user_role(user_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """An admin role of a user -> an Assignment when held directly (``assignmentType: USER``); one held
    through a group is the group's (see :func:`map_group_role`); custom roles are not read yet."""
    if str(raw.get("assignmentType") or "USER").upper() != "USER":
        return None
    rid = map_role(raw)
    return {"account_id": user_id, "entitlement_id": rid, "resource_type": "", "resource_id": ""} if rid else None


# -- streams (what to list; the engine pages, fans out per parent and runs the listings concurrently) ----

def _link(limit: int) -> dict[str, Any]:
    return {"limit": limit}


USERS = Stream("accounts", "api/v1/users", params=_link(PAGE["users"]), paginator=LinkHeaderPaginator())
DEPROVISIONED_USERS = Stream("accounts", "api/v1/users", paginator=LinkHeaderPaginator(),
                             params={**_link(PAGE["users"]), "filter": 'status eq "DEPROVISIONED"'})
APPS = Stream("apps", "api/v1/apps", params=_link(PAGE["apps"]), paginator=LinkHeaderPaginator())
GROUPS = Stream("groups", "api/v1/groups", params=_link(PAGE["groups"]), paginator=LinkHeaderPaginator(),
                map=map_group)
MEMBERS = Stream("group members", "api/v1/groups/{parent.entitlement_id}/users", for_each=GROUPS,
                 params=_link(PAGE["group_users"]), paginator=LinkHeaderPaginator(), skip_missing=True,
                 ordered=False, map=lambda user, group: map_member(group["entitlement_id"], user))
GROUP_ROLES = Stream("group roles", "api/v1/groups/{parent.entitlement_id}/roles", for_each=GROUPS,
                     skip_missing=True, ordered=False,
                     map=lambda r, group: map_group_role(group["entitlement_id"], r))
APP_USERS = Stream("app users", "api/v1/apps/{parent.id}/users", for_each=APPS, params=_link(PAGE["app_users"]),
                   paginator=LinkHeaderPaginator(), skip_missing=True, ordered=False,
                   map=lambda a, app: map_app_user(app["id"], a))
APP_GROUPS = Stream("app groups", "api/v1/apps/{parent.id}/groups", for_each=APPS,
                    params=_link(PAGE["app_groups"]), paginator=LinkHeaderPaginator(), skip_missing=True,
                    ordered=False, map=lambda g, app: map_app_group(app["id"], g))
ROLE_HOLDERS = Stream("role holders", "api/v1/iam/assignees/users", params=_link(PAGE["assignees"]),
                      selector="value", paginator=NextUrlPaginator("_links.next.href"))
USER_ROLES = Stream("user roles", "api/v1/users/{parent.id}/roles", for_each=ROLE_HOLDERS, skip_missing=True,
                    ordered=False, map=lambda r, holder: map_user_role(holder["id"], r))


# -- the connector ------------------------------------------------------------------------------------

class OktaConnector(Connector):
    """Okta org: users, groups, apps, admin roles."""

    type: ClassVar[str] = "okta"
    name: ClassVar[str] = "Okta"
    description: ClassVar[str] = (
        "Okta users (every status), groups and members, applications with their user and group "
        "assignments, admin roles and who holds them, last sign-in; read-only, through the management API."
    )
    logo_url: ClassVar[str | None] = None
    Settings: ClassVar[type[BaseModel]] = OktaSettings
    Auth: ClassVar[type[BaseModel]] = OktaAuth
    # the OAuth service app's token request (client credentials) is the one POST, and it only reads
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (("POST", r"/oauth2/v1/token$"),)
    resource_types: ClassVar[list[ResourceType]] = [ResourceType(type_id="app", type_label="Application")]
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="group", type_label="Group"),
        EntitlementType(type_id="app_access", type_label="Application assignment", resource_type_id="app"),
        EntitlementType(type_id="admin_role", type_label="Admin role"),
    ]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._logins: list[dict[str, Any]] | None = None

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(self.settings.domain,
                                    auth=self.auth.httpx_auth(f"{self.settings.domain}/oauth2/v1/token"))

    # -- errors ------------------------------------------------------------------------------------
    def _auth_error(self, e: AuthError) -> AuthError:
        if e.status_code == 403:
            text = (f"Okta refused the request: the {self.auth.kind} lacks permission ({e.message}); "
                    "use a read-only administrator's token, or grant the service app the okta.*.read scopes")
        else:
            text = (f"Okta refused the {self.auth.kind} (HTTP {e.status_code}; {e.message}); check "
                    f"{self.auth.fields}: it may be wrong, expired or revoked (API tokens expire after 30 days "
                    "unused), or lack a granted scope")
        return AuthError(text, connector=self.ctx.name, request=e.request, status_code=e.status_code)

    # -- check -------------------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        """The org, then one record of each listing: a permission the token lacks is named."""
        probes = {"users": ("api/v1/users", "okta.users.read"), "groups": ("api/v1/groups", "okta.groups.read"),
                  "apps": ("api/v1/apps", "okta.apps.read"),
                  "roles": ("api/v1/iam/assignees/users", "okta.roles.read")}
        info: dict[str, Any] = {"domain": self.settings.domain, "auth": self.auth.kind}
        missing: list[str] = []
        try:
            org = self.http.get_json("api/v1/org")
            info.update(org_id=org.get("id"), company=org.get("companyName"), subdomain=org.get("subdomain"))
        except AuthError as e:
            if e.status_code != 403:
                raise self._auth_error(e) from None
            missing.append("okta.orgs.read (GET /api/v1/org)")
        for what, (path, scope) in probes.items():
            try:
                self.http.get_json(path, params={"limit": 1})
                info[f"can_read_{what}"] = True
            except AuthError as e:
                if e.status_code != 403:
                    raise self._auth_error(e) from None
                missing.append(f"{scope} (GET /{path})")
        if missing:
            raise AuthError(f"Okta accepted the {self.auth.kind} but it may not read: {', '.join(missing)}; "
                            "grant those read permissions (a read-only administrator has them all)",
                            connector=self.ctx.name, status_code=403)
        return info

    # -- streams (declared above; ingest.streams pages, fans out and checks) ----------------------
    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[APPS, GROUPS])

    def _read(self, stream: Stream) -> Iterator[Any]:
        try:
            yield from self.reader.records(stream)
        except AuthError as e:
            raise self._auth_error(e) from None

    def _users(self) -> Iterator[dict[str, Any]]:
        yield from self._read(USERS)
        if self.settings.include_deprovisioned:
            yield from self._read(DEPROVISIONED_USERS)

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        logins: list[dict[str, Any]] = []
        for raw in self._users():
            if (la := last_login(raw)) is not None:
                logins.append(la)  # kept for get_last_activity: the users are listed once
            yield map_user(raw)
        self._logins = logins

    def get_last_activity(self) -> Iterator[dict[str, Any]]:
        if self._logins is None:  # called on its own: read the users for it
            self._logins = [la for raw in self._users() if (la := last_login(raw))]
        yield from self._logins

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for raw in self._read(APPS):
            yield map_app(raw)[0]

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        for rtype, label in ADMIN_ROLES.items():
            yield {"entitlement_type": "admin_role", "resource_type": "", "resource_id": "", "entitlement_id": rtype,
                   "label": label, "description": f"Okta admin role {rtype}", "is_assignable": True, "extra": {}}
        try:
            for raw in self.reader.parents(APP_USERS):  # the apps list_resources read (read when it did not)
                yield map_app(raw)[1]
        except AuthError as e:
            raise self._auth_error(e) from None
        yield from self._read(GROUPS)

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        streams = [MEMBERS, APP_USERS, APP_GROUPS, USER_ROLES]
        if self.settings.group_roles:
            streams.append(GROUP_ROLES)
        for stream in streams:
            yield from self._read(stream)
