"""aws_iam without a server: the pure mapping functions, the read-only rule, and paging through
botocore's Stubber (moto ignores MaxItems on GetAccountAuthorizationDetails, so its paging is checked
here: short pages that say IsTruncated, Marker handed back, every page kept)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import Stubber

from connectors.aws_iam import (
    AwsAuth,
    AwsIamConnector,
    AwsIamSettings,
    credential_report_activity,
    is_read_only,
    map_managed_policy,
    read_only_client,
    trust_principals,
)
from ingest.connector import ConnectorContext
from ingest.errors import ReadOnlyViolation

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
FILTER = ["User", "Group", "Role", "LocalManagedPolicy"]


class TestReadOnlyRule:
    @pytest.mark.parametrize("op", ["ListUsers", "GetAccountAuthorizationDetails", "GetCredentialReport",
                                    "GenerateCredentialReport", "GetPolicyVersion"])
    def test_list_get_and_the_credential_report_are_allowed(self, op):
        assert is_read_only(op)

    @pytest.mark.parametrize("op", ["DeleteUser", "CreateAccessKey", "AttachUserPolicy", "UpdateUser",
                                    "Listen", "Getaway", "GenerateServiceLastAccessedDetails", ""])
    def test_everything_else_is_refused(self, op):
        assert not is_read_only(op)

    def test_a_serialized_write_is_refused_at_send_time_too(self):
        client = read_only_client(boto3.Session(aws_access_key_id="AKIAX", aws_secret_access_key="s"),
                                  region="us-east-1", endpoint_url="https://iam.invalid")
        request = SimpleNamespace(body=b"Action=DeleteUser&UserName=x&Version=2010-05-08")
        with pytest.raises(ReadOnlyViolation, match="DeleteUser"):
            client.meta.events.emit("before-send.iam.ListUsers", request=request)
        ok = SimpleNamespace(body=b"Action=ListUsers&Version=2010-05-08")
        client.meta.events.emit("before-send.iam.ListUsers", request=ok)  # no exception


class TestMapping:
    def test_trust_principals_reads_allow_statements_on_assume_role(self):
        doc = {"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:user/a", "Service": ["ec2.amazonaws.com"]},
             "Action": "sts:AssumeRole"},
            {"Effect": "Allow", "Principal": {"Federated": "arn:aws:iam::1:saml-provider/okta"},
             "Action": ["sts:AssumeRoleWithSAML"]},
            {"Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::1:user/b"}, "Action": "sts:AssumeRole"},
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:user/c"}, "Action": "sts:TagSession"},
        ]}
        assert trust_principals(doc) == {"AWS": ["arn:aws:iam::1:user/a"],
                                         "Federated": ["arn:aws:iam::1:saml-provider/okta"],
                                         "Service": ["ec2.amazonaws.com"]}

    def test_trust_principals_reads_a_url_encoded_document_and_a_star(self):
        encoded = ("%7B%22Statement%22%3A%20%7B%22Effect%22%3A%20%22Allow%22%2C%20%22Principal%22%3A%20%22%2A%22"
                   "%2C%20%22Action%22%3A%20%22sts%3AAssumeRole%22%7D%7D")
        assert trust_principals(encoded) == {"AWS": ["*"]}

    def test_a_managed_policy_keeps_only_its_default_version_and_not_its_attachment_count(self):
        raw = {"PolicyName": "P", "PolicyId": "ANPA1", "Arn": "arn:aws:iam::1:policy/P", "Path": "/",
               "DefaultVersionId": "v2", "AttachmentCount": 7, "PolicyVersionList": [
                   {"VersionId": "v1", "IsDefaultVersion": False, "Document": {"old": True}},
                   {"VersionId": "v2", "IsDefaultVersion": True, "Document": {"new": True}}]}
        ent = map_managed_policy(raw)
        assert ent["entitlement_id"] == "arn:aws:iam::1:policy/P"
        assert ent["extra"]["document"] == {"new": True} and ent["extra"]["aws_managed"] is False
        assert "7" not in str(ent) and map_managed_policy({**raw, "AttachmentCount": 8}) == ent

    def test_the_credential_report_gives_each_users_latest_use(self):
        report = (
            "user,arn,user_creation_time,password_enabled,password_last_used,access_key_1_active,"
            "access_key_1_last_used_date,access_key_2_active,access_key_2_last_used_date\n"
            "<root_account>,arn:aws:iam::1:root,2020-01-01T00:00:00+00:00,not_supported,"
            "2026-01-01T00:00:00+00:00,false,N/A,false,N/A\n"
            "a,arn:aws:iam::1:user/a,2020-01-01T00:00:00+00:00,true,2026-01-01T00:00:00+00:00,true,"
            "2026-01-02T03:04:05+00:00,false,N/A\n"
            "b,arn:aws:iam::1:user/b,2020-01-01T00:00:00+00:00,false,N/A,true,N/A,false,N/A\n"
            "c,arn:aws:iam::1:user/c,2020-01-01T00:00:00+00:00,true,no_information,false,N/A,true,"
            "2025-06-01T00:00:00Z\n")
        assert dict(credential_report_activity(report.encode())) == {
            "arn:aws:iam::1:user/a": WHEN, "arn:aws:iam::1:user/c": datetime(2025, 6, 1, tzinfo=UTC)}


def _user(n: int, groups=()):
    return {"UserName": f"u{n}", "UserId": f"AIDA{n:016d}", "Arn": f"arn:aws:iam::1:user/u{n}", "Path": "/",
            "CreateDate": WHEN, "GroupList": list(groups), "AttachedManagedPolicies": [], "UserPolicyList": []}


class TestPaging:
    def test_every_page_of_the_authorization_details_is_read_while_is_truncated(self):
        settings = AwsIamSettings(page_size=2, credential_report=False, endpoint_url="https://iam.invalid")
        auth = AwsAuth.model_validate({"access_key_id": "AKIAX", "secret_access_key": "s"})
        conn = AwsIamConnector(ConnectorContext(name="aws", settings=settings, auth=auth))
        client = read_only_client(boto3.Session(aws_access_key_id="AKIAX", aws_secret_access_key="s"),
                                  region="us-east-1", endpoint_url="https://iam.invalid")
        conn.__dict__["iam"] = client
        group = {"GroupName": "g", "GroupId": "AGPA000000000000001", "Arn": "arn:aws:iam::1:group/g", "Path": "/",
                 "CreateDate": WHEN, "GroupPolicyList": [], "AttachedManagedPolicies": [
                     {"PolicyName": "ReadOnlyAccess", "PolicyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}]}
        with Stubber(client) as stub:
            stub.add_response("get_account_authorization_details",
                              {"UserDetailList": [_user(1, ["g"]), _user(2)], "IsTruncated": True, "Marker": "m1"},
                              {"Filter": FILTER, "MaxItems": 2})
            # a page shorter than MaxItems that still says IsTruncated: IAM does this, paging goes on
            stub.add_response("get_account_authorization_details",
                              {"UserDetailList": [_user(3, ["g"])], "GroupDetailList": [group],
                               "IsTruncated": True, "Marker": "m2"},
                              {"Filter": FILTER, "MaxItems": 2, "Marker": "m1"})
            stub.add_response("get_account_authorization_details", {"UserDetailList": [_user(4)],
                                                                    "IsTruncated": False},
                              {"Filter": FILTER, "MaxItems": 2, "Marker": "m2"})
            stub.add_response("list_policies", {"Policies": [{
                "PolicyName": "ReadOnlyAccess", "Arn": "arn:aws:iam::aws:policy/ReadOnlyAccess",
                "DefaultVersionId": "v9"}], "IsTruncated": False},
                {"Scope": "AWS", "OnlyAttached": True, "MaxItems": 2})
            stub.add_response("get_policy_version", {"PolicyVersion": {
                "Document": '{"Statement": [{"Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}]}',
                "VersionId": "v9", "IsDefaultVersion": True}},
                {"PolicyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess", "VersionId": "v9"})
            accounts = list(conn.list_accounts())
            entitlements = list(conn.list_entitlements())
            grants = list(conn.find_entitlement_associations())
            stub.assert_no_pending_responses()
        assert [a["account_id"] for a in accounts] == [f"AIDA{n:016d}" for n in (1, 2, 3, 4)]
        assert {e["entitlement_id"] for e in entitlements} == {"AGPA000000000000001", "arn:aws:iam::aws:policy/ReadOnlyAccess"}
        ro = next(e for e in entitlements if e["entitlement_type"] == "managed_policy")
        assert ro["extra"]["document"]["Statement"][0]["Action"] == "s3:Get*" and ro["extra"]["aws_managed"]
        assert grants == [
            {"account_id": f"AIDA{1:016d}", "entitlement_id": "AGPA000000000000001", "resource_type": "", "resource_id": ""},
            {"account_id": f"AIDA{3:016d}", "entitlement_id": "AGPA000000000000001", "resource_type": "", "resource_id": ""},
            {"entitlement_id": "arn:aws:iam::aws:policy/ReadOnlyAccess", "member_entitlement_id": "AGPA000000000000001"},
        ]


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body


ALIASES = (b'<ListAccountAliasesResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><ListAccountAliasesResult>'
           b'<AccountAliases><member>acme</member></AccountAliases><IsTruncated>false</IsTruncated>'
           b'</ListAccountAliasesResult></ListAccountAliasesResponse>')


class TestUnreadableAnswers:
    """botocore raises ResponseParserError on a body it cannot parse and never retries it; the client does."""

    def client(self, answers: list[tuple[int, bytes]], max_retries: int):
        from botocore.awsrequest import AWSResponse

        client = read_only_client(boto3.Session(aws_access_key_id="AKIAX", aws_secret_access_key="s"),
                                  region="us-east-1", endpoint_url="https://iam.invalid", max_retries=max_retries)
        sent = []

        def answer(request, **_):
            sent.append(request.body)
            status, body = answers.pop(0)
            return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Raw(body))

        client.meta.events.register("before-send.iam", answer)
        return client, sent

    def test_a_gateway_page_and_a_cut_body_are_retried_until_a_readable_answer(self, monkeypatch):
        monkeypatch.setattr("connectors.aws_iam._client.time.sleep", lambda s: None)
        client, sent = self.client([(502, b"<html><body>Bad Gateway</body></html"), (200, ALIASES[:60]),
                                    (200, ALIASES)], max_retries=2)
        assert client.list_account_aliases()["AccountAliases"] == ["acme"]
        assert len(sent) == 3

    def test_it_fails_as_a_retryable_ingest_error_once_retries_are_spent(self, monkeypatch):
        from ingest.errors import RetryableError

        monkeypatch.setattr("connectors.aws_iam._client.time.sleep", lambda s: None)
        settings = AwsIamSettings(credential_report=False, endpoint_url="https://iam.invalid", max_retries=1)
        conn = AwsIamConnector(ConnectorContext(name="aws", settings=settings, auth=AwsAuth.model_validate(
            {"access_key_id": "AKIAX", "secret_access_key": "s"})))
        conn.__dict__["iam"], sent = self.client([(500, b'{"oops": 1}'), (500, b'{"oops": 1}')], max_retries=1)
        with pytest.raises(RetryableError, match="unreadable"):
            conn.validate_credentials()
        assert len(sent) == 2


class TestDeclaredReadOnlyRequests:
    """The conformance kit lets through the POSTs a connector declares read-only: for IAM's query
    protocol that declaration must agree with the client's own rule, Action by Action."""

    @pytest.mark.parametrize("op", ["ListUsers", "GetAccountAuthorizationDetails", "GetCredentialReport",
                                    "GenerateCredentialReport", "GetPolicyVersion", "DeleteUser", "CreateAccessKey",
                                    "Listen", "Getaway", "GenerateServiceLastAccessedDetails",
                                    "GenerateCredentialReportX"])
    def test_the_declaration_matches_is_read_only(self, op):
        import re

        body = f"Version=2010-05-08&Action={op}&MaxItems=100"
        declared = any(method == "POST" and re.search(path, "/") and re.search(rx, body)
                       for method, path, rx in AwsIamConnector.read_only_requests)
        assert declared == is_read_only(op)
