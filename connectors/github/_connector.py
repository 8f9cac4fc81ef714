"""The ``github`` connector (see the package docstring for what it reads and how it maps)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.github._limits import SecondaryRateLimits
from connectors.github._mapping import (
    ORG_ROLES,
    map_account,
    map_org_role,
    map_repo,
    map_team,
    repo_entitlements,
    repo_permission,
    repo_permission_id,
    team_id,
    team_maintainer_id,
)
from ingest.connector import Connector, EntitlementType, ResourceType
from ingest.credentials import GitHubApp, credentials
from ingest.errors import AuthError, NotFoundError
from ingest.http import HttpClient, HttpSettings, LinkHeaderPaginator
from ingest.streams import Stream, StreamReader

__all__ = ["GithubAuth", "GithubConnector", "GithubSettings"]

API_VERSION = "2022-11-28"


class GithubSettings(HttpSettings):
    """Which organisation, where its API is, and how to page it (plus the shared HTTP settings)."""

    org: str = Field(min_length=1, description="Organisation login, e.g. `octo-org`.")
    base_url: str = Field("https://api.github.com", description="REST API root: https://api.github.com, or "
                          "https://HOST/api/v3 for GitHub Enterprise Server.")
    per_page: int = Field(100, ge=1, le=100, description="Items per page (GitHub's maximum is 100).")
    organization_roles: bool = Field(True, description="Read organization roles and who holds them (needs "
                                     "the 'Custom organization roles' read permission).")
    secondary_rate_limit_wait: float = Field(60.0, ge=0, description="Seconds to wait after a secondary rate "
                                             "limit that names no retry-after (GitHub: at least a minute); "
                                             "doubled on each one in a row.")
    max_retry_after: float = Field(3600.0, ge=0, description="Longest wait honoured, in seconds (a used-up "
                                   "primary window resets within the hour).")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.github.com")
        return v.rstrip("/")


class GithubAuth(credentials("bearer", "github_app", name="GithubAuth")):
    """A token as ``bearer`` (fine-grained or classic PAT), or a GitHub App (``github_app``: app id,
    private key, installation id; installation tokens are bought and renewed by the credential layer)."""

    model_config = ConfigDict(json_schema_extra={"type": "object"})


@dataclass
class _Grants:
    """Repository access: direct collaborators (assignments) and teams (nested), and custom roles seen."""

    records: list[dict[str, Any]] = field(default_factory=list)
    roles: dict[str, set[str]] = field(default_factory=dict)  # repo id -> permissions seen on it


class GithubConnector(Connector):
    """A GitHub organisation: members, outside collaborators, teams, repositories, organization roles."""

    type: ClassVar[str] = "github"
    name: ClassVar[str] = "GitHub"
    description: ClassVar[str] = (
        "A GitHub organisation: members with their org role, outside collaborators, teams with nesting and "
        "team roles, repositories with each collaborator's and team's permission, organization roles."
    )
    Settings: ClassVar[type[BaseModel]] = GithubSettings
    Auth: ClassVar[type[BaseModel]] = GithubAuth
    resource_types: ClassVar[list[ResourceType]] = [ResourceType(type_id="repository", type_label="Repository")]
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="org_role", type_label="Organisation role"),
        EntitlementType(type_id="organization_role", type_label="Organization role (fine-grained)"),
        EntitlementType(type_id="team", type_label="Team"),
        EntitlementType(type_id="team_maintainer", type_label="Team maintainer"),
        EntitlementType(type_id="repository_permission", type_label="Repository permission",
                        resource_type_id="repository"),
    ]
    # a GitHub App buys its installation token with a POST (ingest.testing lets it, and only it, through)
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("POST", r"/app/installations/[^/]+/access_tokens$"),)

    @functools.cached_property
    def http(self) -> HttpClient:
        s: GithubSettings = self.settings
        credential = getattr(self.auth, "credential", self.auth)
        if isinstance(credential, GitHubApp) and "api_url" not in credential.model_fields_set:
            credential = credential.model_copy(update={"api_url": s.base_url})  # Enterprise Server: one URL
        return self.ctx.http_client(
            s.base_url, auth=credential.httpx_auth(),
            headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION},
            classify=SecondaryRateLimits(s.secondary_rate_limit_wait),
        )

    @property
    def _auth_field(self) -> str:
        return "auth.private_key / auth.installation_id" if getattr(self.auth, "kind", "") == "github_app" \
            else "auth.bearer_token"

    # -- the streams ------------------------------------------------------------------------------------
    @functools.cached_property
    def _streams(self) -> dict[str, Stream]:
        org = f"orgs/{quote(self.settings.org, safe='')}"
        page = {"per_page": self.settings.per_page}

        def listing(name: str, path: str, **kw: Any) -> Stream:
            params = {**page, **kw.pop("params", {})}
            return Stream(name, path, params=params, paginator=LinkHeaderPaginator(), **kw)

        teams = listing("teams", f"{org}/teams")
        repos = listing("repositories", f"{org}/repos", params={"type": "all"})
        return {
            "admins": listing("org owners", f"{org}/members", params={"role": "admin"}),
            "members": listing("org members", f"{org}/members", params={"role": "member"}),
            "outside": listing("outside collaborators", f"{org}/outside_collaborators"),
            "teams": teams,
            "team_members": listing("team members", f"{org}/teams/{{parent.slug}}/members", params={"role": "all"},
                                    for_each=teams, skip_missing=True, map=_with_parent),
            "team_maintainers": listing("team maintainers", f"{org}/teams/{{parent.slug}}/members",
                                        params={"role": "maintainer"}, skip_missing=True, map=_with_parent,
                                        for_each=lambda: self._unmarked_teams),
            "repos": repos,
            "collaborators": listing("collaborators", "repos/{parent.owner.login}/{parent.name}/collaborators",
                                     params={"affiliation": "direct"}, for_each=repos, skip_missing=True,
                                     map=map_collaborator_grant, ordered=False),
            "team_repos": listing("team repositories", f"{org}/teams/{{parent.slug}}/repos", for_each=teams,
                                  skip_missing=True, map=map_team_repo_grant, ordered=False),
            "org_roles": Stream("organization roles", f"{org}/organization-roles", selector="roles"),
            "role_users": listing("organization role users", f"{org}/organization-roles/{{parent.id}}/users",
                                  for_each=lambda: self._org_roles, skip_missing=True, map=map_role_user),
            "role_teams": listing("organization role teams", f"{org}/organization-roles/{{parent.id}}/teams",
                                  for_each=lambda: self._org_roles, skip_missing=True, map=map_role_team),
        }

    @functools.cached_property
    def reader(self) -> StreamReader:
        return StreamReader(self.http, keep=[self._streams["teams"], self._streams["repos"]])

    def _read(self, name: str) -> Iterator[Any]:
        try:
            yield from self.reader.records(self._streams[name])
        except AuthError as e:
            raise AuthError(f"GitHub refused the {self._streams[name].name} listing (HTTP {e.status_code}): the "
                            "token needs read access to the organisation's members, administration and "
                            f"repositories (see the README) [{e.message}]", connector=self.ctx.name,
                            request=e.request, status_code=e.status_code, stream=e.stream) from None

    # -- check ----------------------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        try:
            org = self.http.get_json(f"orgs/{quote(self.settings.org, safe='')}")
        except NotFoundError as e:
            raise NotFoundError(f"organisation {self.settings.org!r} not found at {self.settings.base_url}, or "
                                "the token cannot see it; check settings.org and the token's resource owner",
                                connector=self.ctx.name, request=e.request, status_code=e.status_code) from None
        except AuthError as e:
            raise AuthError(f"GitHub refused the credentials (HTTP {e.status_code}); check {self._auth_field} "
                            f"[{e.message}]", connector=self.ctx.name, request=e.request,
                            status_code=e.status_code) from None
        return {k: org.get(k) for k in ("login", "id", "name", "two_factor_requirement_enabled",
                                        "default_repository_permission") if k in org}

    # -- people -----------------------------------------------------------------------------------------
    @functools.cached_property
    def _members(self) -> dict[str, tuple[dict[str, Any], str]]:
        """user id -> (user, org role) from ``members?role=admin`` and ``members?role=member``."""
        out: dict[str, tuple[dict[str, Any], str]] = {}
        for stream, role in (("admins", "admin"), ("members", "member")):
            for u in self._read(stream):
                out.setdefault(str(u["id"]), (u, role))
        return out

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        for user, _ in self._members.values():
            yield map_account(user, "member")
        for user in self._read("outside"):
            if str(user["id"]) not in self._members:
                yield map_account(user, "outside_collaborator")

    # -- teams --------------------------------------------------------------------------------------------
    @functools.cached_property
    def _teams(self) -> list[dict[str, Any]]:
        return list(self._read("teams"))

    @functools.cached_property
    def _listed_members(self) -> dict[str, list[dict[str, Any]]]:
        """team id -> every member its listing names (the child teams' members included)."""
        out: dict[str, list[dict[str, Any]]] = {str(t["id"]): [] for t in self._teams}
        for item in self._read("team_members"):
            out[str(item["parent"]["id"])].append(item["record"])
        return out

    @property
    def _unmarked_teams(self) -> list[dict[str, Any]]:
        listed = self._listed_members
        return [t for t in self._teams if not all("inherited" in u and "role" in u for u in listed[str(t["id"])])]

    @functools.cached_property
    def _team_members(self) -> dict[str, dict[str, str]]:
        """team id -> {user id: "member" | "maintainer"}, DIRECT memberships only.

        GitHub lists a parent team's members with its child teams' members included. When the
        answer marks them (``inherited: true``, with ``role``), those marks decide. Otherwise the
        members listed for the team's child teams are taken out of its listing (the nesting is
        known from each team's ``parent``), and its maintainers come from ``role=maintainer``
        (maintainership is never inherited): someone listed in a child team is stored there and
        reaches the parent through the ``nested_entitlements`` row.
        """
        listed = self._listed_members
        unmarked = {str(t["id"]) for t in self._unmarked_teams}
        maintainers: dict[str, set[str]] = {tid: set() for tid in unmarked}
        if unmarked:
            for item in self._read("team_maintainers"):
                maintainers[str(item["parent"]["id"])].add(str(item["record"]["id"]))
        children: dict[str, list[str]] = {}
        for t in self._teams:
            if isinstance(t.get("parent"), dict):
                children.setdefault(str(t["parent"]["id"]), []).append(str(t["id"]))
        direct: dict[str, dict[str, str]] = {}
        for tid, users in listed.items():
            if tid not in unmarked:
                direct[tid] = {str(u["id"]): u["role"] for u in users if not u["inherited"]}
                continue
            inherited = {str(u["id"]) for child in children.get(tid, []) for u in listed.get(child, [])}
            members = {str(u["id"]): "member" for u in users if str(u["id"]) not in inherited}
            members.update({uid: "maintainer" for uid in maintainers[tid]})
            direct[tid] = members
        return direct

    # -- repositories -----------------------------------------------------------------------------------
    @functools.cached_property
    def _repos(self) -> list[dict[str, Any]]:
        return list(self._read("repos"))

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for repo in self._repos:
            yield map_repo(repo)

    @functools.cached_property
    def _grants(self) -> _Grants:
        grants = _Grants()
        self._teams, self._repos  # noqa: B018 - both listings are kept for the fan-outs below
        repos = {str(r["id"]) for r in self._repos}
        for stream in ("collaborators", "team_repos"):
            for rid, perm, record in (g for g in self._read(stream)):
                if rid in repos:
                    grants.roles.setdefault(rid, set()).add(perm)
                    grants.records.append(record)
        return grants

    # -- organization roles -------------------------------------------------------------------------------
    @functools.cached_property
    def _org_roles(self) -> list[dict[str, Any]]:
        if not self.settings.organization_roles:
            return []
        try:
            return list(self.reader.records(self._streams["org_roles"]))
        except (AuthError, NotFoundError) as e:
            raise AuthError(f"GitHub refused the organization roles (HTTP {e.status_code}): grant the token "
                            "'Custom organization roles: read', or set organization_roles: false",
                            connector=self.ctx.name, request=e.request, status_code=e.status_code) from None

    # -- capabilities ---------------------------------------------------------------------------------------
    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        for role, label in ORG_ROLES.items():
            yield {"entitlement_type": "org_role", "entitlement_id": f"org:{role}", "label": label}
        for team in self._teams:
            yield from map_team(team)
        for repo in self._repos:
            yield from repo_entitlements(repo, self._grants.roles.get(str(repo["id"]), set()))
        for role in self._org_roles:
            yield map_org_role(role)

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        for uid, (_, role) in self._members.items():
            yield _grant(uid, f"org:{role}")
        for team in self._teams:
            if isinstance(team.get("parent"), dict):
                yield {"entitlement_id": team_id(team["parent"]), "member_entitlement_id": team_id(team)}
        for tid, members in self._team_members.items():
            for uid, role in members.items():
                yield _grant(uid, team_id(tid))
                if role == "maintainer":
                    yield _grant(uid, team_maintainer_id(tid))
        yield from self._grants.records
        if self._org_roles:
            yield from self._read("role_users")
            yield from self._read("role_teams")


def _with_parent(record: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    return {"record": record, "parent": parent}


def map_collaborator_grant(raw: dict[str, Any], repo: dict[str, Any]) -> tuple | None:
    """A direct collaborator -> (repo id, permission, Assignment of that permission on the repository)."""
    perm, rid = repo_permission(raw), str(repo["id"])
    if not perm:
        return None
    return [(rid, perm, {"account_id": str(raw["id"]), "entitlement_id": repo_permission_id(rid, perm),
                         "resource_type": "repository", "resource_id": rid})]


def map_team_repo_grant(raw: dict[str, Any], team: dict[str, Any]) -> list | None:
    """A team's repository -> (repo id, permission, the team nested in that permission)."""
    perm, rid = repo_permission(raw), str(raw["id"])
    if not perm:
        return None
    return [(rid, perm, {"entitlement_id": repo_permission_id(rid, perm), "member_entitlement_id": team_id(team)})]


def map_role_user(raw: dict[str, Any], role: dict[str, Any]) -> dict[str, Any] | None:
    """A holder of an organization role -> an Assignment when held directly (not only through a team)."""
    if raw.get("assignment", "direct") not in ("direct", "mixed"):
        return None
    return _grant(str(raw["id"]), f"org_role:{role['id']}")


def map_role_team(raw: dict[str, Any], role: dict[str, Any]) -> dict[str, Any] | None:
    """A team holding an organization role -> the team nested in the role."""
    if raw.get("assignment", "direct") not in ("direct", "mixed"):
        return None
    return {"entitlement_id": f"org_role:{role['id']}", "member_entitlement_id": team_id(raw)}


def _grant(account_id: str, entitlement_id: str) -> dict[str, Any]:
    return {"account_id": account_id, "entitlement_id": entitlement_id, "resource_type": "", "resource_id": ""}
