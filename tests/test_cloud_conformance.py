"""The conformance kit (ingest.testing) run over the cloud connectors: github, pagerduty and jira against
their loopback fakes, aws_iam against moto's real IAM server with IAM authentication switched on.

Each Source has a working credential and a refused one. For aws_iam the working one is an IAM user
whose only policy is the least-privilege one the README gives (``iam:List*``, ``iam:Get*``,
``iam:GenerateCredentialReport``), so the kit's full read also proves that policy is enough; the
refused one is an access key IAM does not know (``InvalidClientTokenId``). Every Source must recover
from each of the kit's faults (``must_recover``): all four retry them away and read the exact data. moto starts once for the
module (its start-up is the slow part) and its authentication is switched off again afterwards.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from ingest.testing import Source, check_info, conformance_tests
from tests.servers.github_server import GithubServer, make_org
from tests.servers.jira_server import JiraServer, make_site
from tests.servers.moto_iam import ACCOUNT, MotoIam, allow, document, trust
from tests.servers.pagerduty_server import PagerDutyServer, make_account

FAST = {"max_retries": 3, "backoff_initial": 0.01, "backoff_max": 0.05}
AUDIT_POLICY = document(allow(["iam:List*", "iam:Get*", "iam:GenerateCredentialReport"]))  # as in the README


@pytest.fixture
def github_source():
    token = "ghp_" + uuid.uuid4().hex
    with GithubServer(make_org(n_members=40, n_repos=6, n_teams=4), token) as server:
        yield Source("github", settings={"org": server.org.login, "base_url": server.root_url, "per_page": 10,
                                         **FAST},
                     auth={"bearer_token": token}, bad_auth={"bearer_token": "ghp_" + uuid.uuid4().hex},
                     url_settings=("base_url",), must_recover=True)


@pytest.fixture
def pagerduty_source():
    key = "u+" + uuid.uuid4().hex
    with PagerDutyServer(make_account(n_users=40, n_teams=3), key) as server:
        yield Source("pagerduty", settings={"base_url": server.root_url, "page_size": 15, **FAST},
                     auth={"api_key": key}, bad_auth={"api_key": "u+" + uuid.uuid4().hex},
                     url_settings=("base_url",), must_recover=True)


@pytest.fixture
def jira_source():
    email, token = "auditor@example.com", "ATATT" + uuid.uuid4().hex
    with JiraServer(make_site(n_users=60, n_groups=3, n_projects=3), email, token) as server:
        yield Source("jira", settings={"base_url": server.root_url, "page_size": 25, **FAST},
                     auth={"username": email, "api_key": token},
                     bad_auth={"username": email, "api_key": "ATATT" + uuid.uuid4().hex},
                     url_settings=("base_url",), must_recover=True)


@pytest.fixture(scope="module")
def iam_account():
    """moto's IAM with a small account and an auditor holding only the README's policy; IAM
    authentication on (every request signed by a key IAM knows, and allowed by its policies)."""
    with MotoIam() as moto:
        iam = moto.client()
        for name in ("alice", "bob", "carol"):
            iam.create_user(UserName=name)
        iam.create_group(GroupName="devs")
        iam.add_user_to_group(GroupName="devs", UserName="alice")
        iam.add_user_to_group(GroupName="devs", UserName="bob")
        arn = iam.create_policy(PolicyName="ReadS3", PolicyDocument=document(allow("s3:Get*")))["Policy"]["Arn"]
        iam.attach_group_policy(GroupName="devs", PolicyArn=arn)
        iam.put_user_policy(UserName="carol", PolicyName="carol-sns", PolicyDocument=document(allow("sns:*")))
        iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=trust(AWS=f"arn:aws:iam::{ACCOUNT}:user/alice"))
        iam.create_user(UserName="ingest-auditor")
        iam.put_user_policy(UserName="ingest-auditor", PolicyName="ingest-read", PolicyDocument=AUDIT_POLICY)
        key = iam.create_access_key(UserName="ingest-auditor")["AccessKey"]
        httpx.post(f"{moto.url}/moto-api/reset-auth", content=b"0", timeout=30).raise_for_status()
        try:
            yield moto, key
        finally:
            httpx.post(f"{moto.url}/moto-api/reset-auth", content=b"inf", timeout=30).raise_for_status()


@pytest.fixture
def aws_iam_source(iam_account):
    moto, key = iam_account
    # no credential report: moto records the auditor's own key use, so two reads a second apart differ in it
    # (IAM reuses a report for four hours); the report is read in test_aws_iam*.py
    return Source("aws_iam", settings={"endpoint_url": moto.url, "max_retries": 3, "credential_report": False},
                  auth={"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]},
                  bad_auth={"access_key_id": "AKIA" + uuid.uuid4().hex[:16].upper(),
                            "secret_access_key": uuid.uuid4().hex},
                  url_settings=("endpoint_url",), must_recover=True,
                  # IAM throttles with an error code in the body (Throttling), never Retry-After: botocore's own
                  # backoff applies, so the kit's 429 + Retry-After: 1 is retried on botocore's schedule
                  honours_retry_after=False)


TestGithubConformance = conformance_tests("github_source")
TestPagerDutyConformance = conformance_tests("pagerduty_source")
TestJiraConformance = conformance_tests("jira_source")
TestAwsIamConformance = conformance_tests("aws_iam_source")


@pytest.mark.parametrize("type_name", ["github", "aws_iam", "pagerduty", "jira"])
def test_info_of_the_cloud_types_conforms(type_name):
    check_info(type_name)
