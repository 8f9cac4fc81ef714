"""``jira``: Jira Cloud users, groups and members, projects (resources) and their project roles'
actors (users and groups), read with GET only through REST API v3.

What it reads::

    GET /rest/api/3/myself                                     check
    GET /rest/api/3/users/search?startAt=&maxResults=          users: a BARE ARRAY (no isLast/total)
    GET /rest/api/3/group/bulk?startAt=&maxResults=            groups (page bean)
    GET /rest/api/3/group/member?groupId=&includeInactiveUsers=true&startAt=&maxResults=   members (<= 50)
    GET /rest/api/3/project/search?startAt=&maxResults=        projects (page bean)
    GET /rest/api/3/project/{id}/role                          the project's roles: {name: URL}
    GET /rest/api/3/project/{id}/role/{roleId}                 a role's actors (users and groups)

Paging. Page beans (``{"startAt", "maxResults", "total", "isLast", "values"}``) end on ``isLast``
(else when ``startAt`` reaches ``total``); the ``maxResults`` the server answers with is read back
and used for the next request, because Jira caps it silently. The bare array of
``users/search`` has nothing to read back: the next ``startAt`` advances by what arrived, and
only a page shorter than the longest one seen (or an empty one) ends it, so a server that caps
1,000 to 100 is still read to the end. 429s honour ``Retry-After`` (the shared HTTP layer).

Auth: ``username_api_key`` (e-mail + API token as HTTP Basic) with ``base_url`` the site
(``https://acme.atlassian.net``); or ``oauth2_authorization_code`` (3LO, rotating refresh
tokens, ``ingest auth NAME``) with ``base_url`` ``https://api.atlassian.com/ex/jira/<cloud id>``.

The listings are declared as streams (:mod:`ingest.streams`): group members fan out over the
groups, role indexes over the projects, roles over the URLs the indexes name.

How it maps::

    account      user (accountId; accountType atlassian/customer -> user, app -> service; active)
    entitlement  group (groupId); project role <project id>:<role id> on the project resource
    assignment   user -> group; user -> project role
    nested       group -> project role (its members hold the role)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.credentials import ConsentRequired, OAuth2AuthorizationCode, credentials
from ingest.credentials._kinds import Setting
from ingest.errors import AuthError
from ingest.http import HttpClient, HttpSettings, OffsetPaginator, Paginator
from ingest.streams import Stream, StreamReader

__all__ = ["JiraAuth", "JiraConnector", "JiraOAuth", "JiraPageBeanPaginator", "JiraSettings", "map_group", "map_member",
           "map_project", "map_role_actors", "map_user", "role_urls"]

API = "rest/api/3"


class JiraSettings(HttpSettings):
    base_url: str = Field(description="The site, https://acme.atlassian.net (or https://api.atlassian.com/ex/jira/"
                          "<cloud id> with OAuth).")
    page_size: int = Field(100, ge=1, le=1000, description="maxResults asked for (Jira caps it per endpoint).")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://acme.atlassian.net")
        return v.rstrip("/")


class JiraOAuth(OAuth2AuthorizationCode):
    """Atlassian's OAuth 2.0 (3LO): its endpoints, the audience it wants and read scopes by default;
    refresh tokens rotate (each refresh returns a new one, reusing an old one is ``invalid_grant``)."""

    authorize_url: str = Setting("https://auth.atlassian.com/authorize", "Authorization endpoint.", "advanced")
    token_url: str = Setting("https://auth.atlassian.com/oauth/token", "Token endpoint.", "advanced")
    scopes: list[str] = Setting(["read:jira-user", "read:jira-work", "manage:jira-configuration", "offline_access"],
                                "Scopes to ask for (offline_access for a refresh token).", "additional")
    authorize_params: dict[str, str] = Setting({"audience": "api.atlassian.com", "prompt": "consent"},
                                               "Extra authorization request parameters.", "advanced")


class JiraAuth(credentials("username_api_key", JiraOAuth, name="JiraAuth")):
    """E-mail + API token (``username``, ``api_key``), or OAuth 2.0 (3LO) authorization code."""

    model_config = ConfigDict(json_schema_extra={"type": "object"})


class JiraPageBeanPaginator(Paginator):
    """``?startAt=0&maxResults=50`` answered by ``{"startAt": 0, "maxResults": 50, "total": 120,
    "isLast": false, "values": [...]}``: ends on ``isLast`` (else ``startAt >= total``, or an empty
    page); the answered ``maxResults`` is what the next request asks for."""

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self._reset()

    def _reset(self) -> None:
        self.start, self.asked = 0, self.limit

    def init_request(self, request):
        request.params["startAt"], request.params["maxResults"] = self.start, self.asked
        super().init_request(request)

    def update_state(self, response, data, records):
        self.start += len(records)
        answered = data.get("maxResults") if isinstance(data, dict) else None
        if isinstance(answered, int) and answered > 0:
            self.asked = answered
        is_last, total = (data.get("isLast"), data.get("total")) if isinstance(data, dict) else (None, None)
        if not records:
            self.has_next = False
        elif isinstance(is_last, bool):
            self.has_next = not is_last
        elif isinstance(total, int):
            self.has_next = self.start < total
        else:
            self.has_next = len(records) >= self.asked

    def _next(self, request):
        request.params["startAt"], request.params["maxResults"] = self.start, self.asked


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "account_id": raw.get("accountId"),
        "email": raw.get("emailAddress") or None,
        "display_name": raw.get("displayName"),
        "status": "ACTIVE" if raw.get("active", True) else "SUSPENDED",
        "account_type": "service" if raw.get("accountType") == "app" else "user",
        "custom_attributes": {"account_type": raw.get("accountType")},
        "extra": {k: raw.get(k) for k in ("accountType", "timeZone", "locale") if raw.get(k) is not None},
    }


def map_group(raw: dict[str, Any]) -> dict[str, Any]:
    return {"entitlement_type": "group", "entitlement_id": raw.get("groupId"), "label": raw.get("name")}


def map_project(raw: dict[str, Any]) -> dict[str, Any]:
    return {"resource_type": "project", "resource_id": str(raw.get("id")), "label": raw.get("name"),
            "description": raw.get("description") or None,
            "extra": {k: raw.get(k) for k in ("key", "projectTypeKey", "style", "simplified", "isPrivate")
                      if k in raw}}


def map_role_actors(project_id: str, role: dict[str, Any], group_ids: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A project role's ``actors`` -> Assignments (users) and NestedEntitlements (groups)."""
    ent = f"{project_id}:{role['id']}"
    for actor in role.get("actors") or []:
        user = actor.get("actorUser") if isinstance(actor.get("actorUser"), dict) else None
        group = actor.get("actorGroup") if isinstance(actor.get("actorGroup"), dict) else None
        if user and user.get("accountId"):
            yield {"account_id": user["accountId"], "entitlement_id": ent, "resource_type": "project",
                   "resource_id": project_id}
        elif group:
            gid = group.get("groupId") or group_ids.get(group.get("name") or "")
            if gid:
                yield {"entitlement_id": ent, "member_entitlement_id": gid}


class JiraConnector(Connector):
    type: ClassVar[str] = "jira"
    name: ClassVar[str] = "Jira Cloud"
    description: ClassVar[str] = ("Jira Cloud users, groups and members, projects and their project roles' actors "
                                  "(users and groups).")
    Settings: ClassVar[type[BaseModel]] = JiraSettings
    Auth: ClassVar[type[BaseModel]] = JiraAuth
    resource_types: ClassVar[list[ResourceType]] = [ResourceType(type_id="project", type_label="Project")]
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="group", type_label="Group"),
        EntitlementType(type_id="project_role", type_label="Project role", resource_type_id="project")]
    # OAuth (3LO): the refresh of an access token is a POST to the token endpoint
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (("POST", r"/oauth/token$"),)

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(self.settings.base_url, auth=self.auth.httpx_auth())

    # -- the streams ------------------------------------------------------------------------------------
    @functools.cached_property
    def _streams(self) -> dict[str, Stream]:
        bean = min(50, self.settings.page_size)
        groups = Stream("groups", f"{API}/group/bulk", selector="values", paginator=JiraPageBeanPaginator(bean))
        projects = Stream("projects", f"{API}/project/search", selector="values",
                          paginator=JiraPageBeanPaginator(bean))
        return {
            "users": Stream("accounts", f"{API}/users/search", map=map_user, paginator=OffsetPaginator(
                limit=self.settings.page_size, offset_param="startAt", limit_param="maxResults")),
            "groups": groups,
            "members": Stream("group members", f"{API}/group/member", for_each=groups, skip_missing=True,
                              params={"groupId": "{parent.groupId}", "includeInactiveUsers": "true"},
                              selector="values", paginator=JiraPageBeanPaginator(50), map=map_member,
                              ordered=False),
            "projects": projects,
            "role_index": Stream("project roles", f"{API}/project/{{parent.id}}/role", for_each=projects,
                                 skip_missing=True, selector=_as_list, map=role_urls, ordered=False),
        }

    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[self._streams["groups"], self._streams["projects"]])

    def _read(self, name: str) -> Iterator[dict[str, Any]]:
        try:
            yield from self.reader.records(self._streams[name])
        except AuthError as e:
            raise self._auth_error(e) from None

    def _auth_error(self, e: AuthError) -> AuthError:
        if isinstance(e, ConsentRequired):
            return e  # it says what to do (run `ingest auth NAME`)
        field = "auth.username / auth.api_key" if getattr(self.auth, "kind", "") == "username_api_key" \
            else f"the OAuth consent (ingest auth {self.ctx.name})"
        return AuthError(f"Jira refused the request (HTTP {e.status_code}); check {field}: the account needs the "
                         f"Browse users and groups global permission and Administer Jira to read project roles "
                         f"[{e.message}]", connector=self.ctx.name, request=e.request, status_code=e.status_code)

    def validate_credentials(self) -> dict[str, Any]:
        try:
            me = self.http.get_json(f"{API}/myself")
        except AuthError as e:
            raise self._auth_error(e) from None
        return {"site": self.settings.base_url, "account": me.get("displayName"), "accountId": me.get("accountId")}

    @functools.cached_property
    def _groups(self) -> list[dict[str, Any]]:
        return list(self._read("groups"))

    @functools.cached_property
    def _projects(self) -> list[dict[str, Any]]:
        return list(self._read("projects"))

    @functools.cached_property
    def _roles(self) -> dict[str, list[dict[str, Any]]]:
        """project id -> its roles with actors: each role read from the URL its project's index names."""
        self._projects  # noqa: B018 - the role index fans out over the kept project listing
        roles = Stream("project role", f"{API}/project/{{parent.project_id}}/role/{{parent.role_id}}",
                       for_each=lambda: list(self._read("role_index")), skip_missing=True, selector=_as_list,
                       map=lambda role, parent: {**role, "project_id": parent["project_id"]}, ordered=False)
        out: dict[str, list[dict[str, Any]]] = {str(p["id"]): [] for p in self._projects}
        try:
            for role in self.reader.records(roles):
                out[role["project_id"]].append(role)
        except AuthError as e:
            raise self._auth_error(e) from None
        return out

    # -- capabilities -----------------------------------------------------------------------------------
    def list_accounts(self) -> Iterator[dict[str, Any]]:
        yield from self._read("users")

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for p in self._projects:
            yield map_project(p)

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        for g in self._groups:
            yield map_group(g)
        names = {str(p["id"]): p.get("name") for p in self._projects}
        for pid, roles in self._roles.items():
            for role in roles:
                yield {"entitlement_type": "project_role", "resource_type": "project", "resource_id": pid,
                       "entitlement_id": f"{pid}:{role['id']}", "label": f"{role.get('name')} ({names.get(pid)})",
                       "description": role.get("description") or None, "extra": {"role": role.get("name")}}

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        self._groups  # noqa: B018 - members fan out over the kept group listing
        yield from self._read("members")
        group_ids = {g.get("name"): g["groupId"] for g in self._groups}
        for pid, roles in self._roles.items():
            for role in roles:
                yield from map_role_actors(pid, role, group_ids)


def _as_list(body: Any) -> list[Any]:
    return [body]


def map_member(raw: dict[str, Any], group: dict[str, Any]) -> dict[str, Any] | None:
    """A group member -> an Assignment of the group."""
    if not raw.get("accountId"):
        return None
    return {"account_id": raw["accountId"], "entitlement_id": group["groupId"], "resource_type": "",
            "resource_id": ""}


def role_urls(index: dict[str, Any], project: dict[str, Any]) -> list[dict[str, Any]]:
    """A project's role index ``{"Developers": "https://…/project/10000/role/10003"}`` -> one record per
    role, with the role id taken from the end of its URL."""
    return [{"project_id": str(project["id"]), "name": name, "role_id": str(url).rstrip("/").rsplit("/", 1)[-1]}
            for name, url in sorted((index or {}).items())]
