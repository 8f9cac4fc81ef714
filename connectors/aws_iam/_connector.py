"""The ``aws_iam`` connector (see the package docstring for what it reads and how it maps)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import botocore.exceptions
import botocore.parsers
from pydantic import BaseModel

from connectors.aws_iam._client import read_only_client, session_for
from connectors.aws_iam._mapping import (
    credential_report_activity,
    inline_policy_id,
    map_group,
    map_inline_policy,
    map_managed_policy,
    map_role,
    map_role_entitlement,
    map_user,
    trust_principals,
)
from connectors.aws_iam._settings import AwsAuth, AwsIamSettings
from ingest.connector import Connector, EntitlementType
from ingest.errors import AuthError, FatalError, IngestError, RetryableError, SourceError
from ingest.redact import redact

__all__ = ["AwsIamConnector"]

_AUTH_CODES = frozenset({"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
                         "ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException",
                         "IncompleteSignature", "AuthFailure", "InvalidAccessKeyId"})
_FILTER = ["User", "Group", "Role", "LocalManagedPolicy"]


@dataclass
class _Account:
    """Everything GetAccountAuthorizationDetails (and the attached AWS-managed policies) returned."""

    users: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # ARN -> managed policy entitlement

    def referenced_policy_arns(self) -> set[str]:
        return {p["PolicyArn"] for kind in (self.users, self.groups, self.roles) for e in kind
                for p in e.get("AttachedManagedPolicies") or []}


class AwsIamConnector(Connector):
    """IAM users, groups, roles and policies of one AWS account."""

    type: ClassVar[str] = "aws_iam"
    name: ClassVar[str] = "AWS IAM"
    description: ClassVar[str] = (
        "IAM users, groups and memberships, roles with their trust policy's principals, customer-managed, "
        "AWS-managed and inline policies with what they are attached to, and last use from the credential "
        "report; read-only by construction (List*, Get*, GenerateCredentialReport)."
    )
    Settings: ClassVar[type[BaseModel]] = AwsIamSettings
    Auth: ClassVar[type[BaseModel]] = AwsAuth
    # IAM speaks the query protocol: every call is a POST of a form; these Actions only read (see _client)
    read_only_requests: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("POST", r"^/$", r"(?:^|&)Action=(?:List[A-Z]\w*|Get[A-Z]\w*|GenerateCredentialReport)(?:&|$)"),
    )
    entitlement_types: ClassVar[list[EntitlementType]] = [
        EntitlementType(type_id="group", type_label="IAM group"),
        EntitlementType(type_id="managed_policy", type_label="Managed policy"),
        EntitlementType(type_id="inline_policy", type_label="Inline policy"),
        EntitlementType(type_id="role", type_label="Assume IAM role"),
    ]

    report_poll: ClassVar[tuple[float, float]] = (0.5, 5.0)  # first and longest wait for a credential report

    @functools.cached_property
    def iam(self) -> Any:
        s: AwsIamSettings = self.settings
        try:
            session = session_for(self.auth, s.region, s.sts_endpoint_url)
        except botocore.exceptions.ClientError as e:
            raise self._error(e, "sts:AssumeRole") from None
        except botocore.exceptions.BotoCoreError as e:
            raise AuthError(f"cannot get AWS credentials: {redact(str(e))}", connector=self.ctx.name) from None
        return read_only_client(session, region=s.region, endpoint_url=s.endpoint_url, connector=self.ctx.name,
                                stats=self.ctx.stats, max_retries=s.max_retries, timeout=s.timeout,
                                connect_timeout=s.connect_timeout)

    def close(self) -> None:
        iam = self.__dict__.pop("iam", None)
        if iam is not None:
            iam.close()

    # -- errors -------------------------------------------------------------------------------------
    def _error(self, e: Exception, operation: str) -> IngestError:
        if isinstance(e, IngestError):
            return e
        where = {"connector": self.ctx.name, "request": operation}
        if isinstance(e, botocore.exceptions.ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            message = redact(e.response.get("Error", {}).get("Message", "") or str(e))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES:
                return AuthError(f"AWS refused {operation} ({code}): {message}; the credentials need "
                                 "iam:List*, iam:Get* and iam:GenerateCredentialReport (see the README)",
                                 status_code=status, **where)
            if code.startswith("Throttl") or (status or 0) >= 500:
                return RetryableError(f"AWS kept failing {operation} after retries ({code}): {message}",
                                      status_code=status, **where)
            return FatalError(f"AWS answered {operation} with {code}: {message}", status_code=status, **where)
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return AuthError("no AWS credentials: set auth.access_key_id and auth.secret_access_key, or run "
                             "where the default credential chain finds some", **where)
        if isinstance(e, botocore.parsers.ResponseParserError):
            return RetryableError(f"IAM kept answering {operation} with something unreadable after retries: "
                                  f"{redact(str(e))[:300]}", **where)
        if isinstance(e, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError,
                          botocore.exceptions.ReadTimeoutError)):
            return RetryableError(f"cannot reach IAM: {redact(str(e))}", **where)
        return SourceError(f"{operation} failed: {redact(str(e))}", **where)

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return getattr(self.iam, operation)(**params)
        except Exception as e:  # noqa: BLE001 - every failure leaves as an ingest error
            raise self._error(e, _camel(operation)) from None

    def _pages(self, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
        """botocore's paginator: MaxItems per page, Marker while IsTruncated (IAM may return fewer items)."""
        try:
            paginator = self.iam.get_paginator(operation)
            yield from paginator.paginate(**params, PaginationConfig={"PageSize": self.settings.page_size})
        except Exception as e:  # noqa: BLE001
            raise self._error(e, _camel(operation)) from None

    # -- what IAM holds -----------------------------------------------------------------------------
    def validate_credentials(self) -> dict[str, Any]:
        summary = self._call("get_account_summary").get("SummaryMap", {})
        aliases = self._call("list_account_aliases").get("AccountAliases", [])
        return {"account_alias": aliases[0] if aliases else None,
                **{k.lower(): summary.get(k) for k in ("Users", "Groups", "Roles", "Policies") if k in summary}}

    @functools.cached_property
    def _account(self) -> _Account:
        acc = _Account()
        local: dict[str, dict[str, Any]] = {}
        for page in self._pages("get_account_authorization_details", Filter=_FILTER):
            acc.users += page.get("UserDetailList") or []
            acc.groups += page.get("GroupDetailList") or []
            acc.roles += page.get("RoleDetailList") or []
            for p in page.get("Policies") or []:
                local[p["Arn"]] = map_managed_policy(p)
        acc.policies.update(local)
        for page in self._pages("list_policies", Scope="AWS", OnlyAttached=True):
            for p in page.get("Policies") or []:
                version = self._call("get_policy_version", PolicyArn=p["Arn"], VersionId=p["DefaultVersionId"])
                acc.policies[p["Arn"]] = map_managed_policy(p, version["PolicyVersion"].get("Document"))
        for arn in sorted(acc.referenced_policy_arns() - acc.policies.keys()):
            # attached between the two listings: known by its ARN, so the attachment is not lost
            acc.policies[arn] = map_managed_policy({"Arn": arn})
        self.log.info("aws_iam_listed", users=len(acc.users), groups=len(acc.groups), roles=len(acc.roles),
                      policies=len(acc.policies))
        return acc

    def list_accounts(self) -> Iterator[dict[str, Any]]:
        for u in self._account.users:
            yield map_user(u)
        for r in self._account.roles:
            yield map_role(r)

    def list_entitlements(self) -> Iterator[dict[str, Any]]:
        acc = self._account
        for g in acc.groups:
            yield map_group(g)
        yield from acc.policies.values()
        for kind, items, id_key, list_key in _INLINE:
            for owner in getattr(acc, items):
                for p in owner.get(list_key) or []:
                    yield map_inline_policy(kind, owner, owner[id_key], p)
        for r in acc.roles:
            yield map_role_entitlement(r)

    def find_entitlement_associations(self) -> Iterator[dict[str, Any]]:
        acc = self._account
        group_ids = {g["GroupName"]: g["GroupId"] for g in acc.groups}
        for u in acc.users:
            for name in u.get("GroupList") or []:
                if name in group_ids:
                    yield _grant(u["UserId"], group_ids[name])
                else:
                    self.log.warning("aws_iam_unknown_group", user=u.get("UserName"), group=name)
        for kind, items, id_key, list_key in _INLINE:
            for owner in getattr(acc, items):
                owner_id = owner[id_key]
                attached = sorted({p["PolicyArn"] for p in owner.get("AttachedManagedPolicies") or []})
                inline = [inline_policy_id(owner_id, p.get("PolicyName", "")) for p in owner.get(list_key) or []]
                for policy in (*attached, *inline):
                    if kind == "group":  # members of the group hold the policy through it
                        yield {"entitlement_id": policy, "member_entitlement_id": owner_id}
                    else:
                        yield _grant(owner_id, policy)
        principals = {**{u["Arn"]: u["UserId"] for u in acc.users}, **{r["Arn"]: r["RoleId"] for r in acc.roles}}
        ids = set(principals.values())
        for r in acc.roles:
            for p in trust_principals(r.get("AssumeRolePolicyDocument")).get("AWS", []):
                holder = principals.get(p) or (p if p in ids else None)
                if holder is not None:
                    yield _grant(holder, r["RoleId"])

    def get_last_activity(self) -> Iterator[dict[str, Any]]:
        acc = self._account
        for r in acc.roles:
            used = (r.get("RoleLastUsed") or {}).get("LastUsedDate")
            if used is not None:
                yield {"account_id": r["RoleId"], "last_activity_at": used}
        if not self.settings.credential_report:
            return
        content = self._credential_report()
        if content is None:
            return
        by_arn = {u["Arn"]: u["UserId"] for u in acc.users}
        for arn, when in credential_report_activity(content):
            if arn in by_arn:
                yield {"account_id": by_arn[arn], "last_activity_at": when}

    def _credential_report(self) -> bytes | None:
        """Ask IAM for a fresh report (it reuses one younger than four hours) and wait for it."""
        deadline = time.monotonic() + self.settings.credential_report_wait
        wait, longest = self.report_poll
        while True:
            state = self._call("generate_credential_report").get("State")
            if state == "COMPLETE":
                return self._call("get_credential_report").get("Content")
            if time.monotonic() + wait > deadline:
                self.log.warning("aws_credential_report_not_ready", state=state,
                                 waited=self.settings.credential_report_wait,
                                 hint="users' last activity is left as it was; raise credential_report_wait")
                return None
            time.sleep(wait)
            wait = min(longest, wait * 2)


_INLINE = (("user", "users", "UserId", "UserPolicyList"),
           ("group", "groups", "GroupId", "GroupPolicyList"),
           ("role", "roles", "RoleId", "RolePolicyList"))


def _grant(account_id: str, entitlement_id: str) -> dict[str, Any]:
    return {"account_id": account_id, "entitlement_id": entitlement_id, "resource_type": "", "resource_id": ""}


def _camel(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))
