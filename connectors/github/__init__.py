"""``github``: a GitHub organisation (github.com or Enterprise Server), read with GET only.

What it reads (``per_page`` <= 100, pages followed through the ``Link`` header)::

    GET /orgs/{org}                                       check: the organisation
    GET /orgs/{org}/members?role=admin | role=member      members and their org role
    GET /orgs/{org}/outside_collaborators                 outside collaborators
    GET /orgs/{org}/teams                                 teams (``parent``: the nesting)
    GET /orgs/{org}/teams/{slug}/members?role=all         each team's members (+ role=maintainer when the
                                                          answer does not carry ``role``/``inherited``)
    GET /orgs/{org}/repos?type=all                        repositories (resources)
    GET /repos/{owner}/{repo}/collaborators?affiliation=direct   direct collaborators with role_name
    GET /orgs/{org}/teams/{slug}/repos                    what each team may do on which repository
    GET /orgs/{org}/organization-roles (+ /{id}/users, /{id}/teams)   organization roles and holders

How it maps::

    account      member or outside collaborator (user id; ``custom_attributes.relationship``)
    entitlement  org:admin / org:member; team:<id> and team:<id>:maintainer; <repo id>:<permission> on
                 the repository resource (read, triage, write, maintain, admin, or a custom role);
                 org_role:<id>
    assignment   user -> org role, direct team membership (and maintainership), direct repository
                 permission, organization role held directly
    nested       child team -> parent team; team -> repository permission; team -> organization role

Direct team memberships: see :attr:`GithubConnector._team_members`. Rate limits: see
:mod:`connectors.github._limits`.
"""

from connectors.github._connector import GithubAuth, GithubConnector, GithubSettings
from connectors.github._limits import SecondaryRateLimits, is_secondary_limit
from connectors.github._mapping import map_account, map_org_role, map_repo, map_team, repo_permission

__all__ = [
    "GithubAuth",
    "GithubConnector",
    "GithubSettings",
    "SecondaryRateLimits",
    "is_secondary_limit",
    "map_account",
    "map_org_role",
    "map_repo",
    "map_team",
    "repo_permission",
]
