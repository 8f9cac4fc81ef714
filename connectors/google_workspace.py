"""Google Workspace through the Admin SDK Directory API: users, groups with their members (groups
in groups are nesting, not accounts), admin roles and role assignments, and each user's last login.

Auth: a service account with domain-wide delegation (the ``service_account`` credential kind:
the JSON key file and ``subject``, an administrator to act as), RFC 7523 JWT bearer grant, read-only
scopes (:data:`SCOPES`). What it reads, all with GET, paging ``nextPageToken`` -> ``pageToken``::

    /admin/directory/v1/customers/{customer}                          check: the account
    /admin/directory/v1/users?customer=&maxResults=500                accounts (+ lastLoginTime)
    /admin/directory/v1/customer/{customer}/roles?maxResults=100      entitlements: admin roles
    /admin/directory/v1/groups?customer=&maxResults=200               entitlements: groups
    /admin/directory/v1/groups/{id}/members?maxResults=200            members: USER -> assignment,
                                                                      GROUP -> nested (CUSTOMER, EXTERNAL skipped)
    /admin/directory/v1/customer/{customer}/roleassignments?maxResults=200   role holders (users; groups nested)

With ``domain`` set, users and groups are listed for that domain instead of the whole customer.
Members are read per group, ``max_concurrency`` groups at a time, page by page. 403
``userRateLimitExceeded`` / ``rateLimitExceeded`` (read by :func:`google_rate_limit`, the HTTP
client's ``classify`` hook) and 429 are retried with backoff; any other 403 is fatal and names what
was refused.

Mapping (pure functions): :func:`map_user` (``suspended`` or ``archived`` -> SUSPENDED; ``isAdmin``,
``archived``, ``orgUnitPath`` in custom_attributes), :func:`last_login` ("1970-01-01" = never),
:func:`map_group`, :func:`map_member`, :func:`map_role`, :func:`map_role_assignment`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, field_validator

from ingest.connector import Connector, EntitlementType
from ingest.credentials import ServiceAccount
from ingest.errors import AuthError, RateLimitedError
from ingest.http import CursorPaginator, HttpClient, HttpSettings
from ingest.records import AccountStatus
from ingest.streams import Stream, StreamReader

__all__ = [
    "GoogleServiceAccount",
    "GoogleWorkspaceConnector",
    "GoogleWorkspaceSettings",
    "SCOPES",
    "last_login",
    "map_group",
    "map_member",
    "map_role",
    "map_role_assignment",
    "map_user",
]

_S = "https://www.googleapis.com/auth/admin.directory."
# read-only scopes, by what they let the connector read (domain-wide delegation grants them)
SCOPES = {
    "users": _S + "user.readonly",
    "groups": _S + "group.readonly",
    "roles": _S + "rolemanagement.readonly",
    "customer": _S + "customer.readonly",
}
PAGE = {"users": 500, "groups": 200, "members": 200, "roles": 100, "roleassignments": 200}
_NEVER = "1970-01-01"
_RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
_VOLATILE_USER = ("lastLoginTime", "etag", "kind", "thumbnailPhotoEtag")


# -- configuration ---------------------------------------------------------------------------------

class GoogleWorkspaceSettings(HttpSettings):
    customer: str = Field("my_customer", description="Customer id (C0…), or my_customer for the subject's own.")
    domain: str | None = Field(None, description="Only the users and groups of this domain (default: every "
                               "domain of the customer).")
    api_url: str = Field("https://admin.googleapis.com", description="Directory API root.")
    max_concurrency: int = Field(4, ge=1, le=64, description="Requests in flight at once.")

    @field_validator("customer")
    @classmethod
    def _customer(cls, v: str) -> str:
        v = v.strip()
        if not v or "/" in v:
            raise ValueError("must be a customer id such as C01abcd23, or my_customer")
        return v

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an https:// URL")
        return v


class GoogleServiceAccount(ServiceAccount):
    """A service account key with domain-wide delegation, acting as ``subject`` (an administrator)."""

    subject: str = Field(description="Administrator to act as (domain-wide delegation), e.g. admin@acme.com.",
                         json_schema_extra={"x-section": "general"})
    scopes: list[str] = Field([SCOPES["users"], SCOPES["groups"], SCOPES["roles"], SCOPES["customer"]],
                              description="Read-only Directory API scopes (granted to the client id for "
                              "domain-wide delegation).", json_schema_extra={"x-section": "additional"})


def google_rate_limit(response: httpx.Response) -> RateLimitedError | None:
    """The HTTP client's ``classify`` hook: Google answers a rate limit with a 403 (or 429) whose error
    names it, ``{"error": {"errors": [{"reason": "userRateLimitExceeded"}]}}``; every other 403 is a
    refusal left to the generic rules (AuthError)."""
    if response.status_code != 403 or b"ateLimitExceeded" not in response.content:
        return None
    try:
        reasons = [e.get("reason") for e in response.json()["error"]["errors"] if isinstance(e, dict)]
    except (ValueError, KeyError, TypeError):
        return None
    hit = [r for r in reasons if r in _RATE_LIMIT_REASONS]
    return RateLimitedError(f"rate limited by Google ({hit[0]})") if hit else None


# -- mapping (pure functions) -------------------------------------------------------------------------

def _str(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list)):
        return None
    s = v if isinstance(v, str) else str(v)
    return s if s.strip() else None


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    """A Directory user -> an Account. ``suspended`` and ``archived`` users cannot sign in: SUSPENDED."""
    name = raw.get("name") if isinstance(raw.get("name"), dict) else {}
    inactive = raw.get("suspended") is True or raw.get("archived") is True
    custom: dict[str, Any] = {k: raw[k] for k in ("isAdmin", "isDelegatedAdmin", "archived") if k in raw}
    for k in ("orgUnitPath", "suspensionReason"):
        if (v := _str(raw.get(k))) is not None:
            custom[k] = v
    return {
        "account_id": _str(raw.get("id")),
        "email": _str(raw.get("primaryEmail")),
        "username": _str(raw.get("primaryEmail")),
        "display_name": _str(name.get("fullName")),
        "given_name": _str(name.get("givenName")),
        "family_name": _str(name.get("familyName")),
        "status": (AccountStatus.SUSPENDED if inactive else AccountStatus.ACTIVE).value,
        "account_type": "user",
        "custom_attributes": custom,
        "extra": {k: v for k, v in raw.items() if k not in _VOLATILE_USER},
    }


def last_login(raw: dict[str, Any]) -> dict[str, Any] | None:
    """``lastLoginTime`` as a LastActivity; None when it is 1970-01-01 (Google's "never")."""
    value = _str(raw.get("lastLoginTime"))
    if not value or value.startswith(_NEVER) or not _str(raw.get("id")):
        return None
    return {"account_id": raw["id"], "last_activity_at": datetime.fromisoformat(value.replace("Z", "+00:00"))}


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    """A Directory group -> an Entitlement of type ``group`` (its member count and etag left out:
    a new member is an assignment, not a changed group)."""
    return {"entitlement_type": "group", "resource_type": "", "resource_id": "",
            "entitlement_id": _str(raw.get("id")), "label": _str(raw.get("name")),
            "description": _str(raw.get("description")), "is_assignable": True,
            "extra": {k: raw.get(k) for k in ("email", "adminCreated", "aliases") if k in raw}}


def map_member(group_id: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """A group member: USER -> an Assignment; GROUP -> nested; CUSTOMER (everyone in the account)
    and members outside the directory -> None."""
    mid, kind = _str(raw.get("id")), str(raw.get("type") or "").upper()
    if not mid:
        return None
    if kind == "USER":
        return {"account_id": mid, "entitlement_id": group_id, "resource_type": "", "resource_id": ""}
    if kind == "GROUP":
        return {"entitlement_id": group_id, "member_entitlement_id": mid}
    return None


def map_role(raw: dict[str, Any]) -> dict[str, Any]:
    """An admin role -> an Entitlement of type ``admin_role``."""
    return {"entitlement_type": "admin_role", "resource_type": "", "resource_id": "",
            "entitlement_id": _str(raw.get("roleId")), "label": _str(raw.get("roleName")),
            "description": _str(raw.get("roleDescription")), "is_assignable": True,
            "extra": {k: raw.get(k) for k in ("isSystemRole", "isSuperAdminRole") if k in raw}}


def map_role_assignment(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A role assignment: to a user -> an Assignment; to a group -> the group nested in the role."""
    role, who = _str(raw.get("roleId")), _str(raw.get("assignedTo"))
    if not role or not who:
        return None
    if str(raw.get("assigneeType") or "user") == "group":
        return {"entitlement_id": role, "member_entitlement_id": who}
    return {"account_id": who, "entitlement_id": role, "resource_type": "", "resource_id": ""}


# -- streams (what to list; the engine pages, fans out per group and runs the listings concurrently) -----

def _listing(name: str, path: str, key: str, **kw: Any) -> Stream:
    """A Directory API list: ``{"kind", "etag", "<key>": [...], "nextPageToken": "…"}`` -> ``?pageToken=…``."""
    return Stream(name, path, selector=key, paginator=CursorPaginator("nextPageToken", "pageToken"), **kw)


@dataclass(frozen=True)
class DirectoryStreams:
    """The streams of one account (``customer`` / ``domain`` are in their paths and parameters)."""

    users: Stream
    roles: Stream
    groups: Stream
    members: Stream
    role_assignments: Stream

    @classmethod
    def for_settings(cls, s: GoogleWorkspaceSettings) -> DirectoryStreams:
        scope = {"domain": s.domain} if s.domain else {"customer": s.customer}
        c = quote(s.customer, safe="")
        groups = _listing("groups", "groups", "groups", params={**scope, "maxResults": PAGE["groups"]}, map=map_group)
        return cls(
            users=_listing("accounts", "users", "users", params={**scope, "maxResults": PAGE["users"]}),
            roles=_listing("admin roles", f"customer/{c}/roles", "items", params={"maxResults": PAGE["roles"]},
                           map=map_role),
            groups=groups,
            members=_listing("group members", "groups/{parent.entitlement_id}/members", "members",
                             params={"maxResults": PAGE["members"]}, for_each=groups, skip_missing=True,
                             ordered=False, map=lambda m, group: map_member(group["entitlement_id"], m)),
            role_assignments=_listing("role assignments", f"customer/{c}/roleassignments", "items",
                                      params={"maxResults": PAGE["roleassignments"]}, map=map_role_assignment),
        )


# -- the connector ------------------------------------------------------------------------------------

class GoogleWorkspaceConnector(Connector):
    """A Google Workspace account through the Directory API."""

    type: ClassVar[str] = "google_workspace"
    name: ClassVar[str] = "Google Workspace"
    description: ClassVar[str] = (
        "Google Workspace users (suspended, archived, admins), groups and members (nested groups), admin roles "
        "and role assignments, last login; read-only through the Admin SDK Directory API with a service "
        "account (domain-wide delegation)."
    )
    Settings: ClassVar[type[BaseModel]] = GoogleWorkspaceSettings
    Auth: ClassVar[type[BaseModel]] = GoogleServiceAccount
    # the service account's token request (the key file's token_uri) is the one POST, and it only reads
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (("POST", r"/token$"),)
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="group", type_label="Group"),
        EntitlementType(type_id="admin_role", type_label="Admin role"),
    ]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._logins: list[dict[str, Any]] | None = None

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(f"{self.settings.api_url}/admin/directory/v1", auth=self.auth.httpx_auth(),
                                    classify=google_rate_limit)

    @property
    def _scope(self) -> dict[str, Any]:
        """``customer=`` or ``domain=`` for the users and groups listings."""
        s = self.settings
        return {"domain": s.domain} if s.domain else {"customer": s.customer}

    def _auth_error(self, e: AuthError, what: str | None = None) -> AuthError:
        if e.status_code == 403:
            need = SCOPES.get(what or "", "the read-only scopes listed in the README")
            text = (f"Google refused the request ({e.message}); the service account needs the scope {need} "
                    f"granted for domain-wide delegation, and auth.subject ({self.auth.subject}) must be an "
                    "administrator allowed to read it")
        else:
            text = (f"Google refused the service account ({e.message}); check auth.service_account_json, that its "
                    f"client id has domain-wide delegation for the scopes, and auth.subject ({self.auth.subject})")
        return AuthError(text, connector=self.ctx.name, request=e.request, status_code=e.status_code)

    # -- check -------------------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        c = quote(self.settings.customer, safe="")
        info: dict[str, Any] = {"customer": self.settings.customer, "subject": self.auth.subject,
                                "auth": "service account"}
        try:
            customer = self.http.get_json(f"customers/{c}")
            info.update(customer_id=customer.get("id"), domain=customer.get("customerDomain"))
        except AuthError as e:
            if e.status_code != 403:
                missing = self._missing_scopes()
                if missing and len(missing) < len(self.auth.scopes):  # the key works, some scopes not
                    raise AuthError(
                        "Google will not issue a token for these scopes: " + ", ".join(missing) + "; grant them "
                        "to the service account's client id for domain-wide delegation (Admin console > Security > "
                        "API controls)", connector=self.ctx.name, status_code=e.status_code) from None
                raise self._auth_error(e) from None
            info["domain"] = f"(not readable without {SCOPES['customer']}; not needed for runs)"
        probes = {"users": ("users", {**self._scope, "maxResults": 1}),
                  "groups": ("groups", {**self._scope, "maxResults": 1}),
                  "roles": (f"customer/{c}/roles", {"maxResults": 1})}
        missing = []
        for what, (path, params) in probes.items():
            try:
                self.http.get_json(path, params=params)
            except AuthError as e:
                if e.status_code != 403:
                    raise self._auth_error(e, what) from None
                missing.append(f"{SCOPES[what]} (GET {path})")
        if missing:
            raise AuthError("the service account may not read: " + ", ".join(missing) + f"; grant those scopes "
                            f"and make sure {self.auth.subject} is an administrator who can read them",
                            connector=self.ctx.name, status_code=403)
        return info

    def _missing_scopes(self) -> list[str]:
        """Which of the configured scopes Google refuses to issue a token for (one token request each)."""
        cred = self.auth
        missing = []
        for scope in cred.scopes:
            single = cred.model_copy(update={"scopes": [scope]})
            probe = self.ctx.http_client(f"{self.settings.api_url}/admin/directory/v1", auth=single.httpx_auth())
            try:
                probe.get_json(f"customers/{quote(self.settings.customer, safe='')}")
            except AuthError as e:
                if e.status_code != 403:
                    missing.append(scope)
            except Exception:  # noqa: BLE001 - anything else is not about the scope
                pass
            finally:
                probe.close()
        return missing

    # -- streams (ingest.streams pages, fans out and checks) --------------------------------------
    @functools.cached_property
    def declared(self) -> DirectoryStreams:
        return DirectoryStreams.for_settings(self.settings)

    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[self.declared.groups])

    def _read(self, stream: Stream, what: str) -> Iterator[Any]:
        try:
            yield from self.reader.records(stream)
        except AuthError as e:
            raise self._auth_error(e, what) from None

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        logins: list[dict[str, Any]] = []
        for raw in self._read(self.declared.users, "users"):
            if (la := last_login(raw)) is not None:
                logins.append(la)  # kept for get_last_activity: the users are listed once
            yield map_user(raw)
        self._logins = logins

    def get_last_activity(self) -> Iterator[dict[str, Any]]:
        if self._logins is None:
            self._logins = [la for raw in self._read(self.declared.users, "users") if (la := last_login(raw))]
        yield from self._logins

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        yield from self._read(self.declared.roles, "roles")
        yield from self._read(self.declared.groups, "groups")

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        yield from self._read(self.declared.role_assignments, "roles")
        yield from self._read(self.declared.members, "groups")
