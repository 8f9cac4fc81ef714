"""SCIM 2.0 (RFC 7643 / RFC 7644): users, groups and group memberships from any service provider.

What it reads, all with GET::

    /ServiceProviderConfig                                   what the provider supports; filter.maxResults
                                                             and pagination.maxPageSize cap the page size
    /Users?startIndex=1&count=100                            accounts
    /Groups?startIndex=1&count=100&excludedAttributes=members  entitlements (ids and names only)
    /Groups/{id}                                             each group's complete member list

Why members are read group by group: ``members`` cannot be paginated in SCIM,
and real providers omit it from list responses or cap it there (the RFC
allows either), so a member list from ``GET /Groups`` cannot be trusted to be
complete. The group list asks the provider to leave members out (cheap pages),
then each group is read on its own, ``max_concurrency`` at a time (a ``for_each``
stream of :mod:`ingest.streams`), which gives every member of a group of any size
in one request. A member whose ``type`` is
``Group``, or whose ``value`` is the id of a known group, is a nested group
(:class:`~ingest.records.NestedEntitlement`), not an account assignment.

Pages follow ``startIndex`` / ``count`` with :class:`~ingest.http.ScimPaginator`, which refuses
to end a stream short when the provider's own ``totalResults`` says items are
missing (a provider that ignores ``startIndex``). Once the first page of
``/Users`` or ``/Groups`` comes back full and ``totalResults`` shows the
collection is larger, the remaining pages are fetched ``max_concurrency`` at a
time (each checked against what sequential paging would ask for: a provider
that caps the page size is paged one page after another from its first short
page).

Mapping a SCIM resource to a record is done by the pure functions
:func:`map_user`, :func:`map_group` and :func:`map_members`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors._scim_mapping import (
    ENTERPRISE_USER,
    USER_IGNORED_FIELDS,
    group_resource,
    list_response_resources,
    map_group,
    map_group_members,
    map_members,
    map_user,
    primary_email,
)
from ingest.connector import Connector, EntitlementType
from ingest.errors import AuthError, NotFoundError, ProtocolError
from ingest.http import BearerAuth, BearerTokenConfig, HttpClient, HttpSettings, ScimPaginator
from ingest.records import CustomAttribute
from ingest.redact import redact_url
from ingest.streams import Stream, StreamReader

__all__ = [
    "ENTERPRISE_USER",
    "LucidScimConnector",
    "LucidScimSettings",
    "ProviderConfig",
    "ScimAuth",
    "ScimConnector",
    "ScimSettings",
    "group_resource",
    "list_response_resources",
    "map_group",
    "map_group_members",
    "map_members",
    "map_user",
    "primary_email",
]

SERVICE_PROVIDER_CONFIG = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"

# custom_attributes of an account: name -> (where it comes from, description)
CUSTOM_ATTRIBUTES: dict[str, str] = {
    "employeeNumber": "Enterprise extension: the organisation's identifier of the person.",
    "costCenter": "Enterprise extension: cost center.",
    "organization": "Enterprise extension: organisation.",
    "division": "Enterprise extension: division.",
    "department": "Enterprise extension: department.",
    "manager": "Enterprise extension: SCIM id of the person's manager (manager.value).",
    "title": "Core User: job title.",
    "userType": "Core User: relationship to the organisation (Employee, Contractor, ...).",
    "externalId": "Core User: the provisioning client's identifier of the user.",
}


# -- configuration ---------------------------------------------------------------------------------

class ScimSettings(HttpSettings):
    """Where the SCIM service is and how to page it (plus the shared HTTP settings)."""

    base_url: str = Field(description="SCIM root URL, the one /Users hangs off, e.g. https://example.com/scim/v2.")
    page_size: int = Field(100, ge=1, le=10000, description="Resources asked for per page (count); capped by "
                           "what the provider announces in /ServiceProviderConfig.")
    users_filter: str | None = Field(None, description='SCIM filter for /Users, e.g. `active eq true`.')
    groups_filter: str | None = Field(None, description='SCIM filter for /Groups, e.g. `displayName sw "app-"`.')

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")) or len(v) < 10:
            raise ValueError("must be an http:// or https:// URL, e.g. https://example.com/scim/v2")
        return v.rstrip("/")

    @field_validator("users_filter", "groups_filter")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None


class ScimAuth(BaseModel):
    """Bearer token, or HTTP basic (username + password): exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["bearer_token"]}, {"required": ["username", "password"]}],
    })

    bearer_token: SecretStr | None = Field(None, description="Bearer token (Authorization: Bearer ...).")
    username: str | None = Field(None, description="Basic auth user name (with password).")
    password: SecretStr | None = Field(None, description="Basic auth password (with username).")

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> ScimAuth:
        basic = self.username is not None or self.password is not None
        if self.bearer_token is not None and basic:
            raise ValueError("give either bearer_token or username + password, not both")
        if self.bearer_token is None and not basic:
            raise ValueError("give bearer_token, or username and password")
        if self.bearer_token is not None and not self.bearer_token.get_secret_value().strip():
            raise ValueError("bearer_token is empty (is its environment variable set?)")
        if basic and (not self.username or self.password is None):
            raise ValueError("basic auth needs both username and password")
        return self

    @property
    def kind(self) -> str:
        return "bearer token" if self.bearer_token is not None else "username and password"

    def httpx_auth(self) -> httpx.Auth:
        if self.bearer_token is not None:
            return BearerAuth(self.bearer_token.get_secret_value().strip())
        return httpx.BasicAuth(self.username or "", self.password.get_secret_value() if self.password else "")


class LucidScimSettings(ScimSettings):
    base_url: str = Field("https://users.lucid.app/scim/v2", description="Lucid SCIM base URL (Admin > App "
                          "Integration > SCIM).")


@dataclass(frozen=True)
class ProviderConfig:
    """What ``/ServiceProviderConfig`` announces (``announced`` is False when the provider has none)."""

    announced: bool = False
    filter_supported: bool | None = None
    max_results: int | None = None
    max_page_size: int | None = None
    authentication_schemes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any) -> ProviderConfig:
        """Read a ServiceProviderConfig document; raises ProtocolError if it is not one."""
        if not isinstance(data, dict) or not (
            SERVICE_PROVIDER_CONFIG in (data.get("schemas") or [])
            or any(k in data for k in ("filter", "patch", "bulk", "authenticationSchemes"))
        ):
            raise ProtocolError("/ServiceProviderConfig is not a SCIM ServiceProviderConfig document")
        flt = data.get("filter") if isinstance(data.get("filter"), dict) else {}
        pag = data.get("pagination") if isinstance(data.get("pagination"), dict) else {}
        schemes = data.get("authenticationSchemes") if isinstance(data.get("authenticationSchemes"), list) else []

        def positive(v: Any) -> int | None:
            return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

        return cls(
            announced=True,
            filter_supported=flt.get("supported") if isinstance(flt.get("supported"), bool) else None,
            max_results=positive(flt.get("maxResults")),
            max_page_size=positive(pag.get("maxPageSize")),
            authentication_schemes=tuple(str(s.get("name") or s.get("type")) for s in schemes if isinstance(s, dict)),
        )

    def page_size(self, wanted: int) -> int:
        return min([wanted, *(v for v in (self.max_results, self.max_page_size) if v)])


# -- the connector ---------------------------------------------------------------------------------------

class ScimConnector(Connector):
    """Any SCIM 2.0 service provider."""

    type: ClassVar[str] = "scim"
    name: ClassVar[str] = "SCIM 2.0"
    description: ClassVar[str] = (
        "Users, groups and group memberships from any SCIM 2.0 service provider (RFC 7643/7644), "
        "including the enterprise user extension."
    )
    Settings: ClassVar[type[BaseModel]] = ScimSettings
    Auth: ClassVar[type[BaseModel]] = ScimAuth
    resumable: ClassVar[bool] = True  # users and groups start over, members go on per group done
    entitlement_types: ClassVar[list[EntitlementType]] = [EntitlementType(type_id="group", type_label="Group")]

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._group_ids: list[str] | None = None

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(
            self.settings.base_url,
            auth=self.auth.httpx_auth(),
            headers={"Accept": "application/scim+json, application/json"},
        )

    # -- discovery ------------------------------------------------------------------------------
    def _err(self, cls: type, message: str, cause: Exception | None = None, **kw: Any) -> Exception:
        return cls(message, connector=self.ctx.name, request=getattr(cause, "request", None),
                   status_code=getattr(cause, "status_code", None), **kw)

    @property
    def _auth_kind(self) -> str:
        return getattr(self.auth, "kind", "bearer token")

    def _auth_error(self, e: AuthError) -> AuthError:
        field = "auth.bearer_token" if self._auth_kind == "bearer token" else "auth.username / auth.password"
        return self._err(AuthError, (
            f"the SCIM service at {redact_url(self.settings.base_url)} refused the {self._auth_kind} "
            f"(HTTP {e.status_code}); check {field}: it may be wrong, expired or revoked, or lack read access "
            f"to Users and Groups [{e.message}]"), e)

    def _not_scim(self, e: Exception | None, why: str) -> ProtocolError:
        return self._err(ProtocolError, (
            f"{redact_url(self.settings.base_url)} does not answer like a SCIM 2.0 service ({why}); check "
            "settings.base_url: it must be the SCIM root that /Users hangs off (often ending in /scim/v2), "
            "not a web page or another API"), e)

    def _not_found(self, e: NotFoundError) -> NotFoundError:
        return self._err(NotFoundError, (
            f"no SCIM service at {redact_url(self.settings.base_url)} (HTTP 404 for /ServiceProviderConfig "
            "and /Users); check settings.base_url: it must be the SCIM root that /Users hangs off, often "
            "ending in /scim/v2"), e)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET with this connector's error messages for refused credentials and non-SCIM answers."""
        try:
            return self.http.get_json(path, params=params)
        except AuthError as e:
            raise self._auth_error(e) from None
        except ProtocolError as e:
            raise self._not_scim(e, e.message) from None

    @functools.cached_property
    def provider(self) -> ProviderConfig:
        """The provider's ServiceProviderConfig (a provider without one gets the defaults)."""
        try:
            data = self._get("ServiceProviderConfig")
        except NotFoundError:
            self.log.info("scim_no_service_provider_config", base_url=redact_url(self.settings.base_url))
            return ProviderConfig()
        try:
            cfg = ProviderConfig.parse(data)
        except ProtocolError as e:
            raise self._not_scim(None, e.message) from None
        if cfg.filter_supported is False and (self.settings.users_filter or self.settings.groups_filter):
            raise self._err(ProtocolError, (
                "settings.users_filter / groups_filter are set but the provider announces that it does not "
                "support filtering (ServiceProviderConfig filter.supported = false); remove them"))
        return cfg

    @property
    def page_size(self) -> int:
        return self.provider.page_size(self.settings.page_size)

    def validate_credentials(self) -> dict[str, Any]:
        """Reads /ServiceProviderConfig and one page of /Users; returns what a user wants to see."""
        cfg = self.provider
        params: dict[str, Any] = {"startIndex": 1, "count": 1}
        if self.settings.users_filter:
            params["filter"] = self.settings.users_filter
        try:
            data = self._get("Users", params)
        except NotFoundError as e:
            raise (self._not_found(e) if not cfg.announced else self._err(NotFoundError, (
                f"{redact_url(self.settings.base_url)} announces a ServiceProviderConfig but has no /Users "
                "endpoint (HTTP 404); check settings.base_url"), e)) from None
        try:
            resources = list_response_resources(data, "GET /Users")
        except ProtocolError as e:
            raise self._not_scim(None, e.message) from None
        total = data.get("totalResults")
        return {
            "base_url": redact_url(self.settings.base_url),
            "auth": self._auth_kind,
            "service_provider_config": cfg.announced,
            "filtering": cfg.filter_supported,
            "max_results": cfg.max_results,
            "page_size": self.page_size,
            "authentication_schemes": list(cfg.authentication_schemes),
            "users": total if isinstance(total, int) else None,
            "sample_user": resources[0].get("userName") if resources and isinstance(resources[0], dict) else None,
        }

    # -- streams (declared; ingest.streams does the paging, the fan-out and the checks) ---------------
    def _list_stream(self, name: str, path: str, scim_filter: str | None, mapping: Any, pass_through: bool = False,
                     ignored_fields: tuple[str, ...] = (), **params: Any) -> Stream:
        if scim_filter:
            params["filter"] = scim_filter
        return Stream(name, path, params=params, paginator=ScimPaginator(count=self.page_size),
                      selector=functools.partial(list_response_resources, what=f"GET /{path}"), map=mapping,
                      pass_through=pass_through, ignored_fields=ignored_fields)

    @functools.cached_property
    def users(self) -> Stream:
        # pass_through: list_accounts hands the records on as they are (pages may go to staging undecoded);
        # ignored_fields: what map_user leaves out, so a user whose provider only touched those is not decoded
        return self._list_stream("accounts", "Users", self.settings.users_filter, map_user, pass_through=True,
                                 ignored_fields=USER_IGNORED_FIELDS)

    @functools.cached_property
    def groups(self) -> Stream:
        return self._list_stream("entitlements", "Groups", self.settings.groups_filter, map_group,
                                 excludedAttributes="members")

    def members(self, known: set[str]) -> Stream:
        """Each group read on its own (``GET /Groups/{id}``: every member in one answer, see the module
        docstring); a group deleted since it was listed has no members."""

        return Stream("assignments", "Groups/{parent.entitlement_id}",
                      selector=functools.partial(group_resource, base_url=redact_url(self.settings.base_url),
                                                 connector=self.ctx.name),
                      map=functools.partial(map_group_members, group_ids=frozenset(known)),
                      for_each=lambda: [{"entitlement_id": gid} for gid in self._list_group_ids()],
                      skip_missing=True, concurrency=self.settings.max_concurrency, pass_through=True)

    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http)

    def _read(self, stream: Stream) -> Iterator[Any]:
        try:
            yield from self.reader.records(stream)
        except AuthError as e:
            raise self._auth_error(e) from None

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        return self._read(self.users)

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        ids: list[str] = []
        for record in self._read(self.groups):
            if record.get("entitlement_id"):
                ids.append(record["entitlement_id"])
            yield record
        self._group_ids = ids  # complete: find_entitlement_associations need not list them again

    def _list_group_ids(self) -> list[str]:
        if self._group_ids is None:
            self._group_ids = [gid for record in self._read(self.groups) if (gid := record.get("entitlement_id"))]
        return self._group_ids

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        return self._read(self.members(set(self._list_group_ids())))

    def list_custom_attributes_schema(self) -> Iterator[CustomAttribute]:
        for name, description in CUSTOM_ATTRIBUTES.items():
            yield CustomAttribute(name=name, type="string", description=description)


class LucidScimConnector(ScimConnector):
    """Lucid (Lucidchart, Lucidspark, Lucidscale) through its SCIM API, with a bearer token."""

    type: ClassVar[str] = "lucid_scim"
    name: ClassVar[str] = "Lucid SCIM"
    description: ClassVar[str] = (
        "Lucid users, groups and group memberships through Lucid's SCIM API "
        "(bearer token from Admin > App Integration > SCIM)."
    )
    app_id: ClassVar[str | None] = "lucid"
    Settings: ClassVar[type[BaseModel]] = LucidScimSettings
    Auth: ClassVar[type[BaseModel]] = BearerTokenConfig
