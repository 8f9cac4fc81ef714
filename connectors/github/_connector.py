"""The ``github`` connector (see the package docstring for what it reads and how it maps)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors._fanout import fan_out
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
from ingest.errors import AuthError, NotFoundError
from ingest.credentials import GitHubApp, credentials
from ingest.http import HttpClient, HttpSettings, LinkHeaderPaginator

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

    @property
    def _org(self) -> str:
        return quote(self.settings.org, safe="")

    def _pages(self, path: str, **params: Any) -> Iterator[list[Any]]:
        try:
            yield from self.http.paginate(path, paginator=LinkHeaderPaginator(),
                                          params={**params, "per_page": self.settings.per_page})
        except AuthError as e:
            raise AuthError(f"GitHub refused {path.split('?')[0]} (HTTP {e.status_code}): the token needs read "
                            f"access to the organisation's members, administration and repositories "
                            f"(see the README) [{e.message}]", connector=self.ctx.name, request=e.request,
                            status_code=e.status_code) from None

    def _all(self, path: str, **params: Any) -> list[Any]:
        return [item for page in self._pages(path, **params) for item in page]

    # -- check ----------------------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        try:
            org = self.http.get_json(f"orgs/{self._org}")
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
        for role in ("admin", "member"):
            for u in self._all(f"orgs/{self._org}/members", role=role):
                out.setdefault(str(u["id"]), (u, role))
        return out

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        for user, _ in self._members.values():
            yield map_account(user, "member")
        for page in self._pages(f"orgs/{self._org}/outside_collaborators"):
            for user in page:
                if str(user["id"]) not in self._members:
                    yield map_account(user, "outside_collaborator")

    # -- teams --------------------------------------------------------------------------------------------
    @functools.cached_property
    def _teams(self) -> list[dict[str, Any]]:
        return self._all(f"orgs/{self._org}/teams")

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
        teams = {str(t["id"]): t for t in self._teams}
        children: dict[str, list[str]] = {}
        for t in self._teams:
            if isinstance(t.get("parent"), dict):
                children.setdefault(str(t["parent"]["id"]), []).append(str(t["id"]))

        def pages(tid: str) -> Iterator[list[Any]]:
            slug = quote(teams[tid]["slug"], safe="")
            listed = self._all(f"orgs/{self._org}/teams/{slug}/members", role="all")
            if all("inherited" in u and "role" in u for u in listed):
                yield [(tid, {str(u["id"]): u["role"] for u in listed if not u["inherited"]}, None)]
                return
            maintainers = {str(u["id"]) for u in self._all(f"orgs/{self._org}/teams/{slug}/members",
                                                            role="maintainer")}
            yield [(tid, {str(u["id"]): "member" for u in listed}, maintainers)]

        direct: dict[str, dict[str, str]] = {}
        unmarked: dict[str, tuple[dict[str, str], set[str]]] = {}
        for page in fan_out(list(teams), pages, workers=self.settings.max_concurrency, name="ingest-github-teams"):
            for tid, members, maintainers in page:
                if maintainers is None:
                    direct[tid] = members
                else:
                    unmarked[tid] = (members, maintainers)
        for tid, (listed, maintainers) in unmarked.items():
            inherited = {uid for child in children.get(tid, []) for uid in unmarked.get(child, ({}, set()))[0]}
            members = {uid: "member" for uid in listed if uid not in inherited}
            members.update({uid: "maintainer" for uid in maintainers})
            direct[tid] = members
        return direct

    # -- repositories -----------------------------------------------------------------------------------
    @functools.cached_property
    def _repos(self) -> list[dict[str, Any]]:
        return self._all(f"orgs/{self._org}/repos", type="all")

    def list_resources(self) -> Iterator[dict[str, Any]]:
        for repo in self._repos:
            yield map_repo(repo)

    @functools.cached_property
    def _grants(self) -> _Grants:
        grants = _Grants()
        repos = {str(r["id"]) for r in self._repos}

        def collaborators(repo: dict[str, Any]) -> Iterator[list[Any]]:
            rid = str(repo["id"])
            owner, name = (quote(p, safe="") for p in repo["full_name"].split("/", 1))
            for page in self._pages(f"repos/{owner}/{name}/collaborators", affiliation="direct"):
                out = []
                for c in page:
                    perm = repo_permission(c)
                    if perm:
                        out.append((rid, perm, {"account_id": str(c["id"]),
                                                "entitlement_id": repo_permission_id(rid, perm),
                                                "resource_type": "repository", "resource_id": rid}))
                yield out

        def team_repos(team: dict[str, Any]) -> Iterator[list[Any]]:
            slug = quote(team["slug"], safe="")
            for page in self._pages(f"orgs/{self._org}/teams/{slug}/repos"):
                out = []
                for r in page:
                    rid, perm = str(r["id"]), repo_permission(r)
                    if perm and rid in repos:
                        out.append((rid, perm, {"entitlement_id": repo_permission_id(rid, perm),
                                                "member_entitlement_id": team_id(team)}))
                yield out

        workers = self.settings.max_concurrency
        for source, fn in ((self._repos, collaborators), (self._teams, team_repos)):
            for page in fan_out(source, fn, workers=workers, name="ingest-github-repos"):
                for rid, perm, record in page:
                    grants.roles.setdefault(rid, set()).add(perm)
                    grants.records.append(record)
        return grants

    # -- organization roles -------------------------------------------------------------------------------
    @functools.cached_property
    def _org_roles(self) -> list[dict[str, Any]]:
        if not self.settings.organization_roles:
            return []
        try:
            body = self.http.get_json(f"orgs/{self._org}/organization-roles")
        except (AuthError, NotFoundError) as e:
            raise AuthError(f"GitHub refused the organization roles (HTTP {e.status_code}): grant the token "
                            "'Custom organization roles: read', or set organization_roles: false",
                            connector=self.ctx.name, request=e.request, status_code=e.status_code) from None
        return list(body.get("roles") or [])

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
        for role in self._org_roles:
            rid = f"org_role:{role['id']}"
            for u in self._all(f"orgs/{self._org}/organization-roles/{role['id']}/users"):
                if u.get("assignment", "direct") in ("direct", "mixed"):
                    yield _grant(str(u["id"]), rid)
            for t in self._all(f"orgs/{self._org}/organization-roles/{role['id']}/teams"):
                if t.get("assignment", "direct") in ("direct", "mixed"):
                    yield {"entitlement_id": rid, "member_entitlement_id": team_id(t)}


def _grant(account_id: str, entitlement_id: str) -> dict[str, Any]:
    return {"account_id": account_id, "entitlement_id": entitlement_id, "resource_type": "", "resource_id": ""}
