"""``aws_iam``: users, groups, roles and policies of one AWS account, read through IAM.

What it reads (every call is ``List*``, ``Get*`` or ``GenerateCredentialReport``;
the client refuses anything else before it is signed, see :mod:`._client`)::

    GetAccountAuthorizationDetails   users (with groups, attached and inline policies), groups (with
      Filter=User,Group,Role,          their policies), roles (trust policy, policies, last use) and
      LocalManagedPolicy               customer-managed policies with their versions, in one paged listing
    ListPolicies Scope=AWS            the AWS-managed policies attached to anything in the account, and
      OnlyAttached=true                the default version of each (GetPolicyVersion); the ~1,300 that
    GetPolicyVersion                   nobody uses are left out
    GenerateCredentialReport          password and access-key last use of every user (last activity)
    GetCredentialReport

How it maps (stable AWS ids, never names: a renamed user or group is modified, not replaced)::

    account      IAM user (UserId, account_type user); IAM role (RoleId, account_type service)
    entitlement  group (GroupId); managed_policy (policy ARN: policies cannot be renamed, and every
                 IAM API names a managed policy by its ARN); inline_policy (``inline:<owner id>:<name>``);
                 role (RoleId): permission to assume the role, held by the principals its trust
                 policy names
    assignment   user -> group; user / role -> managed or inline policy; user / role -> role it may
                 assume (trust policy principals of this account)
    nested       group -> its policies (members of the group hold the policy through it)
    last activity  users: latest of password and access-key last use (credential report);
                 roles: RoleLastUsed
"""

from connectors.aws_iam._client import READ_ONLY_OPERATIONS, is_read_only, read_only_client
from connectors.aws_iam._connector import AwsIamConnector
from connectors.aws_iam._mapping import (
    credential_report_activity,
    map_group,
    map_managed_policy,
    map_role,
    map_user,
    trust_principals,
)
from connectors.aws_iam._settings import AwsAuth, AwsIamSettings

__all__ = [
    "READ_ONLY_OPERATIONS",
    "AwsAuth",
    "AwsIamConnector",
    "AwsIamSettings",
    "credential_report_activity",
    "is_read_only",
    "map_group",
    "map_managed_policy",
    "map_role",
    "map_user",
    "read_only_client",
    "trust_principals",
]
