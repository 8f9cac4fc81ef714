"""``pagerduty``: users with their role, teams with members and team role, escalation policies and
schedules with who is on them (REST API v2, GET only).

What it reads::

    GET /users?offset=&limit=                      users (``role``: owner, admin, user, limited_user,
                                                   observer, restricted_access, read_only_user, ...)
    GET /teams?offset=&limit=                      teams (``parent``: team nesting)
    GET /teams/{id}/members?offset=&limit=         members with ``role``: manager, responder, observer
    GET /escalation_policies?offset=&limit=        escalation rules' targets: users and schedules
    GET /schedules?offset=&limit=                  schedules with their ``users``

Auth: ``Authorization: Token token=<key>`` with ``Accept: application/vnd.pagerduty+json;version=2``
(an ``api_key`` credential; the prefix is set for you).

Paging is PagerDuty's classic ``offset``/``limit`` (at most 100) with ``more``. PagerDuty refuses
``offset + limit`` beyond 10,000 (HTTP 400): a listing that still says ``more`` there cannot be read
completely with classic paging, so the run fails with an error naming the listing rather than
storing a truncated list (which the next snapshot would read as thousands of removals). Rate limits:
429 with ``ratelimit-limit/-remaining/-reset`` (seconds) waits for the reset; a 429 without them
backs off exponentially (the shared HTTP layer).

The listings are declared as streams (:mod:`ingest.streams`; team members fan out over the teams);
the mapping functions are pure.

How it maps::

    account      user (id; ``custom_attributes``: role, job_title, time_zone)
    entitlement  role:<base role>; team:<id>:<manager|responder|observer>; <id>:on_call on each
                 escalation policy and schedule resource (PagerDuty ids are unique across object types)
    assignment   user -> base role, team role; user -> on_call of a schedule or escalation policy naming them
    nested       child team's responders -> parent team's responders; schedule on_call -> on_call of the
                 escalation policies that page that schedule
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator

from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.credentials import ApiKey
from ingest.errors import AuthError, ProtocolError
from ingest.http import HttpClient, HttpSettings, OffsetPaginator
from ingest.streams import Stream, StreamReader

__all__ = ["OFFSET_CEILING", "PagerDutyAuth", "PagerDutyConnector", "PagerDutyPaginator", "PagerDutySettings",
           "map_escalation_policy", "map_member", "map_policy_targets", "map_schedule", "map_schedule_users",
           "map_team", "map_user"]

OFFSET_CEILING = 10_000
ACCEPT = "application/vnd.pagerduty+json;version=2"
TEAM_ROLES = ("manager", "responder", "observer")


class PagerDutySettings(HttpSettings):
    base_url: str = Field("https://api.pagerduty.com", description="REST API root (EU: https://api.eu.pagerduty.com).")
    page_size: int = Field(100, ge=1, le=100, description="limit per page (PagerDuty's maximum is 100).")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.pagerduty.com")
        return v.rstrip("/")


class PagerDutyAuth(ApiKey):
    """A REST API key (read-only is enough): ``Authorization: Token token=<key>``."""

    prefix: str = Field("Token token=", description="Text before the key in the header.")


class PagerDutyPaginator(OffsetPaginator):
    """``?offset=0&limit=100`` answered by ``{"users": [...], "offset": 0, "limit": 100, "more": true}``.

    Follows ``more``; reads ``limit`` back (the server may cap it); refuses to go past PagerDuty's
    10,000-offset ceiling (see the module docstring)."""

    def __init__(self, limit: int = 100, what: str = "listing") -> None:
        super().__init__(limit=limit)
        self.what = what

    def update_state(self, response, data, records):
        self.offset += len(records)
        more = bool(data.get("more")) if isinstance(data, dict) else False
        self.has_next = more and bool(records)
        if self.has_next and self.offset + self.limit > OFFSET_CEILING:
            raise ProtocolError(
                f"PagerDuty's {self.what} has more than {OFFSET_CEILING:,} entries, the most its classic "
                "offset paging can reach; ingest stops rather than store a truncated list")


def map_user(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "account_id": raw.get("id"),
        "email": raw.get("email") or None,
        "username": raw.get("email") or None,
        "display_name": raw.get("name"),
        "status": "ACTIVE",  # PagerDuty has no disabled users: a removed user is gone
        "account_type": "user",
        "custom_attributes": {k: raw.get(k) for k in ("role", "job_title", "time_zone") if raw.get(k) is not None},
        "extra": {"html_url": raw.get("html_url"), "teams": sorted(t.get("id") for t in raw.get("teams") or [])},
    }


def map_team(raw: dict[str, Any]) -> list[dict[str, Any]]:
    parent = raw.get("parent") if isinstance(raw.get("parent"), dict) else None
    return [{"entitlement_type": "team_role", "entitlement_id": f"team:{raw.get('id')}:{role}",
             "label": f"{raw.get('name')} ({role})", "description": raw.get("description") or None,
             "extra": {"team_id": raw.get("id"), "role": role, "parent_id": parent.get("id") if parent else None}}
            for role in TEAM_ROLES]


def map_escalation_policy(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rid = raw.get("id")
    resource = {"resource_type": "escalation_policy", "resource_id": rid, "label": raw.get("name"),
                "description": raw.get("description") or None,
                "extra": {"num_loops": raw.get("num_loops"), "teams": sorted(t["id"] for t in raw.get("teams") or [])}}
    return resource, _on_call("escalation_policy", rid, raw.get("name"))


def map_schedule(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rid = raw.get("id")
    resource = {"resource_type": "schedule", "resource_id": rid, "label": raw.get("name"),
                "description": raw.get("description") or None,
                "extra": {"time_zone": raw.get("time_zone"), "teams": sorted(t["id"] for t in raw.get("teams") or [])}}
    return resource, _on_call("schedule", rid, raw.get("name"))


def _on_call(rtype: str, rid: str, name: str | None) -> dict[str, Any]:
    return {"entitlement_type": "on_call", "resource_type": rtype, "resource_id": rid,
            "entitlement_id": f"{rid}:on_call", "label": f"On call: {name}"}


class PagerDutyConnector(Connector):
    type: ClassVar[str] = "pagerduty"
    name: ClassVar[str] = "PagerDuty"
    description: ClassVar[str] = ("PagerDuty users with their role, teams with members and team role, escalation "
                                  "policies and schedules with who is on them.")
    Settings: ClassVar[type[BaseModel]] = PagerDutySettings
    Auth: ClassVar[type[BaseModel]] = PagerDutyAuth
    resource_types: ClassVar[list[ResourceType]] = [
        ResourceType(type_id="escalation_policy", type_label="Escalation policy"),
        ResourceType(type_id="schedule", type_label="Schedule")]
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="role", type_label="Base role", min=1, max=1),
        EntitlementType(type_id="team_role", type_label="Team role"),
        EntitlementType(type_id="on_call", type_label="On call")]

    @functools.cached_property
    def http(self) -> HttpClient:
        return self.ctx.http_client(self.settings.base_url, auth=self.auth.httpx_auth(),
                                    headers={"Accept": ACCEPT})

    # -- the streams ------------------------------------------------------------------------------------
    def _stream(self, name: str, path: str, key: str, **kw: Any) -> Stream:
        return Stream(name, path, selector=key, paginator=PagerDutyPaginator(self.settings.page_size, path), **kw)

    @functools.cached_property
    def _streams(self) -> dict[str, Stream]:
        teams = self._stream("teams", "teams", "teams")
        return {
            "users": self._stream("accounts", "users", "users"),
            "teams": teams,
            "members": self._stream("team members", "teams/{parent.id}/members", "members", for_each=teams,
                                    skip_missing=True, map=map_member, ordered=False),
            "policies": self._stream("escalation policies", "escalation_policies", "escalation_policies"),
            "schedules": self._stream("schedules", "schedules", "schedules"),
        }

    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[self._streams["teams"]])

    def _read(self, name: str) -> Iterator[dict[str, Any]]:
        try:
            yield from self.reader.records(self._streams[name])
        except AuthError as e:
            raise AuthError(f"PagerDuty refused the API key (HTTP {e.status_code}); check auth.api_key: a REST "
                            f"API key (read-only is enough) [{e.message}]", connector=self.ctx.name,
                            request=e.request, status_code=e.status_code, stream=e.stream) from None

    def validate_credentials(self) -> dict[str, Any]:
        first = next(self._read("users"), None)
        return {"base_url": self.settings.base_url, "users_readable": True, "sample_user": (first or {}).get("id")}

    @functools.cached_property
    def _users(self) -> list[dict[str, Any]]:
        return list(self._read("users"))

    @functools.cached_property
    def _teams(self) -> list[dict[str, Any]]:
        return list(self._read("teams"))

    @functools.cached_property
    def _policies(self) -> list[dict[str, Any]]:
        return list(self._read("policies"))

    @functools.cached_property
    def _schedules(self) -> list[dict[str, Any]]:
        return list(self._read("schedules"))

    # -- capabilities -----------------------------------------------------------------------------------
    def list_accounts(self) -> Iterator[dict[str, Any]]:
        for u in self._users:
            yield map_user(u)

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for p in self._policies:
            yield map_escalation_policy(p)[0]
        for s in self._schedules:
            yield map_schedule(s)[0]

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        for role in sorted({u.get("role") for u in self._users if u.get("role")}):
            yield {"entitlement_type": "role", "entitlement_id": f"role:{role}", "label": role}
        for t in self._teams:
            yield from map_team(t)
        for p in self._policies:
            yield map_escalation_policy(p)[1]
        for s in self._schedules:
            yield map_schedule(s)[1]

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        for u in self._users:
            if u.get("role"):
                yield _grant(u["id"], f"role:{u['role']}")
        for t in self._teams:
            if isinstance(t.get("parent"), dict):
                for role in TEAM_ROLES:
                    yield {"entitlement_id": f"team:{t['parent']['id']}:{role}",
                           "member_entitlement_id": f"team:{t['id']}:{role}"}
        yield from self._read("members")
        for s in self._schedules:
            yield from map_schedule_users(s)
        for p in self._policies:
            yield from map_policy_targets(p)


def map_member(raw: dict[str, Any], team: dict[str, Any]) -> dict[str, Any]:
    """A team member (``{"user": {"id"}, "role"}``) -> an Assignment of the team role."""
    return _grant(raw["user"]["id"], f"team:{team['id']}:{raw.get('role') or 'responder'}")


def map_schedule_users(raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    ent = f"{raw['id']}:on_call"
    for uid in sorted({u["id"] for u in raw.get("users") or []}):
        yield _grant(uid, ent, "schedule", raw["id"])


def map_policy_targets(raw: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An escalation policy's rule targets: users (assignments) and schedules (nested)."""
    ent = f"{raw['id']}:on_call"
    users, schedules = set(), set()
    for rule in raw.get("escalation_rules") or []:
        for target in rule.get("targets") or []:
            if target.get("type") in ("user_reference", "user"):
                users.add(target["id"])
            elif target.get("type") in ("schedule_reference", "schedule"):
                schedules.add(target["id"])
    for uid in sorted(users):
        yield _grant(uid, ent, "escalation_policy", raw["id"])
    for sid in sorted(schedules):
        yield {"entitlement_id": ent, "member_entitlement_id": f"{sid}:on_call"}


def _grant(account_id: str, entitlement_id: str, rtype: str = "", rid: str = "") -> dict[str, Any]:
    return {"account_id": account_id, "entitlement_id": entitlement_id, "resource_type": rtype, "resource_id": rid}
