"""The aws_iam connector end to end through the CLI against moto's real IAM server: users, groups,
roles, managed and inline policies and attachments; two days of changes with exact ``ingest.changes``;
assume-role; a write refused before it leaves the process; the secret key never leaking."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from connectors.aws_iam import read_only_client
from ingest.errors import ReadOnlyViolation
from ingest.http import HttpStats
from tests import engine
from tests.engine import cli, output, query
from tests.servers.moto_iam import ACCOUNT, MotoIam, allow, document, trust

NAME = "aws"
READ_ONLY = "arn:aws:iam::aws:policy/ReadOnlyAccess"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


@pytest.fixture
def moto():
    with MotoIam() as server:
        yield server


@pytest.fixture
def moto_managed():
    """With AWS-managed policies, to attach them."""
    with MotoIam(managed_policies=True) as server:
        yield server


def write_config(tmp_path: Path, moto: MotoIam, **auth: Any) -> Path:
    auth = {"access_key_id": "AKIAINGESTTEST000001", "secret_access_key": "${AWS_E2E_SECRET}", **auth}
    cfg = {"connectors": {NAME: {"type": "aws_iam", "settings": {
        "endpoint_url": moto.url, "sts_endpoint_url": moto.url, "max_retries": 1}, "auth": auth}}}
    path = tmp_path / "schedules.yaml"
    path.write_text(json.dumps(cfg))
    return path


def populate(iam) -> dict[str, str]:
    """Day one. Returns name -> id of the users, groups and roles."""
    ids: dict[str, str] = {}
    for name, path in (("alice", "/eng/"), ("bob", "/"), ("carol", "/"), ("dave", "/")):
        ids[name] = iam.create_user(UserName=name, Path=path,
                                    Tags=[{"Key": "email", "Value": f"{name}@example.com"}])["User"]["UserId"]
    for group in ("devs", "admins", "ops"):
        ids[group] = iam.create_group(GroupName=group)["Group"]["GroupId"]
    for user, group in (("alice", "devs"), ("bob", "devs"), ("dave", "devs"), ("bob", "admins"), ("dave", "ops")):
        iam.add_user_to_group(GroupName=group, UserName=user)
    read_s3 = iam.create_policy(PolicyName="ReadS3", PolicyDocument=document(allow("s3:Get*")))["Policy"]["Arn"]
    deploy_policy = iam.create_policy(PolicyName="Deploy", Path="/ci/",
                                      PolicyDocument=document(allow(["ecs:*", "ecr:*"])))["Policy"]["Arn"]
    iam.create_policy(PolicyName="Unused", PolicyDocument=document(allow("sqs:*")))
    iam.attach_group_policy(GroupName="devs", PolicyArn=read_s3)
    iam.attach_group_policy(GroupName="admins", PolicyArn=ADMIN)
    iam.attach_user_policy(UserName="alice", PolicyArn=READ_ONLY)
    iam.attach_user_policy(UserName="carol", PolicyArn=deploy_policy)
    iam.put_user_policy(UserName="alice", PolicyName="alice-extra", PolicyDocument=document(allow("sns:*")))
    iam.put_group_policy(GroupName="ops", PolicyName="ops-pager", PolicyDocument=document(allow("ssm:*")))
    ids["deploy"] = iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=trust(
        AWS=f"arn:aws:iam::{ACCOUNT}:user/eng/alice", Service="ec2.amazonaws.com"))["Role"]["RoleId"]
    ids["ci"] = iam.create_role(RoleName="ci", AssumeRolePolicyDocument=trust(
        AWS=[f"arn:aws:iam::{ACCOUNT}:role/deploy", f"arn:aws:iam::{ACCOUNT}:root"]))["Role"]["RoleId"]
    iam.attach_role_policy(RoleName="deploy", PolicyArn=deploy_policy)
    iam.put_role_policy(RoleName="ci", PolicyName="ci-inline", PolicyDocument=document(allow("s3:*")))
    ids["ReadS3"], ids["Deploy"] = read_s3, deploy_policy
    return ids


def rows(database_url: str, table: str, *cols: str) -> set[tuple]:
    return {tuple(r[c] for c in cols) for r in query(
        database_url, f"SELECT * FROM ingest.{table} WHERE connector = %s", NAME)}


def changes_of(database_url: str, snapshot_id: int) -> set[tuple[str, str, str]]:
    return {(r["entity"], r["change"], r["key"]) for r in query(
        database_url, "SELECT entity, change, key FROM ingest.changes WHERE connector = %s AND snapshot_id = %s",
        NAME, snapshot_id)}


def frozen(rows_: list[dict[str, Any]]) -> set[str]:
    return {json.dumps(r, sort_keys=True, default=str) for r in rows_}


class TestTwoDays:
    def test_day_one_maps_the_account_and_day_two_shows_exactly_the_changes(self, tmp_path, database_url,
                                                                           moto_managed, monkeypatch):
        moto = moto_managed
        secret = "aws-e2e-" + uuid.uuid4().hex
        monkeypatch.setenv("AWS_E2E_SECRET", secret)
        iam = moto.client()
        ids = populate(iam)
        cfg = write_config(tmp_path, moto)

        day1 = cli(cfg, database_url, "run", NAME)
        assert day1.exit_code == 0, output(day1)
        snap1 = engine.last_snapshot(database_url, NAME)
        assert snap1["status"] == "succeeded"

        accounts = {r["account_id"]: r for r in query(database_url, "SELECT * FROM ingest.accounts WHERE "
                                                                    "connector = %s", NAME)}
        assert {(a["username"], a["account_type"]) for a in accounts.values()} == {
            ("alice", "user"), ("bob", "user"), ("carol", "user"), ("dave", "user"),
            ("deploy", "service"), ("ci", "service")}
        assert accounts[ids["alice"]]["email"] == "alice@example.com"
        assert accounts[ids["alice"]]["extra"]["arn"] == f"arn:aws:iam::{ACCOUNT}:user/eng/alice"

        ents = rows(database_url, "entitlements", "entitlement_type", "entitlement_id", "label")
        inline = {(t, i) for t, i, _ in ents if t == "inline_policy"}
        assert inline == {("inline_policy", f"inline:{ids['alice']}:alice-extra"),
                          ("inline_policy", f"inline:{ids['ops']}:ops-pager"),
                          ("inline_policy", f"inline:{ids['ci']}:ci-inline")}
        managed = {(i, label) for t, i, label in ents if t == "managed_policy"}
        # customer-managed policies (used or not) and the AWS-managed ones something is attached to
        assert managed == {(ids["ReadS3"], "ReadS3"), (ids["Deploy"], "Deploy"),
                           (f"arn:aws:iam::{ACCOUNT}:policy/Unused", "Unused"),
                           (READ_ONLY, "ReadOnlyAccess"), (ADMIN, "AdministratorAccess")}
        assert {(t, i, label) for t, i, label in ents if t in ("group", "role")} == {
            ("group", ids["devs"], "devs"), ("group", ids["admins"], "admins"), ("group", ids["ops"], "ops"),
            ("role", ids["deploy"], "deploy"), ("role", ids["ci"], "ci")}
        ci = query(database_url, "SELECT extra FROM ingest.entitlements WHERE entitlement_id = %s", ids["ci"])[0]
        assert ci["extra"]["trusted_principals"] == {"AWS": [f"arn:aws:iam::{ACCOUNT}:role/deploy",
                                                             f"arn:aws:iam::{ACCOUNT}:root"]}
        admin = query(database_url, "SELECT extra FROM ingest.entitlements WHERE entitlement_id = %s", ADMIN)[0]
        assert admin["extra"]["aws_managed"] is True
        assert admin["extra"]["document"]["Statement"][0]["Action"] == "*"

        assert rows(database_url, "assignments", "account_id", "entitlement_id") == {
            (ids["alice"], ids["devs"]), (ids["bob"], ids["devs"]), (ids["dave"], ids["devs"]),
            (ids["bob"], ids["admins"]), (ids["dave"], ids["ops"]),
            (ids["alice"], READ_ONLY), (ids["carol"], ids["Deploy"]),
            (ids["alice"], f"inline:{ids['alice']}:alice-extra"),
            (ids["deploy"], ids["Deploy"]), (ids["ci"], f"inline:{ids['ci']}:ci-inline"),
            (ids["alice"], ids["deploy"]),  # alice may assume deploy (trust policy)
            (ids["deploy"], ids["ci"]),  # the deploy role may assume ci; the account root is not expanded
        }
        assert rows(database_url, "nested_entitlements", "entitlement_id", "member_entitlement_id") == {
            (ids["ReadS3"], ids["devs"]), (ADMIN, ids["admins"]), (f"inline:{ids['ops']}:ops-pager", ids["ops"])}
        assert snap1["stats"]["http"]["requests"] >= 4
        day1_accounts = query(database_url, "SELECT * FROM ingest.accounts WHERE connector = %s", NAME)
        day1_assignments = query(database_url, "SELECT * FROM ingest.assignments WHERE connector = %s", NAME)

        # -- overnight -------------------------------------------------------------------------------
        iam.update_user(UserName="bob", NewUserName="robert")
        for group in ("devs", "ops"):
            iam.remove_user_from_group(GroupName=group, UserName="dave")
        iam.delete_user(UserName="dave")
        iam.add_user_to_group(GroupName="admins", UserName="carol")
        iam.update_group(GroupName="ops", NewGroupName="operations")
        iam.create_policy_version(PolicyArn=ids["ReadS3"], SetAsDefault=True,
                                  PolicyDocument=document(allow(["s3:Get*", "s3:List*"])))
        iam.update_assume_role_policy(RoleName="ci", PolicyDocument=trust(
            AWS=[f"arn:aws:iam::{ACCOUNT}:role/deploy", f"arn:aws:iam::{ACCOUNT}:user/eng/alice"]))
        iam.detach_user_policy(UserName="alice", PolicyArn=READ_ONLY)
        ids["erin"] = iam.create_user(UserName="erin")["User"]["UserId"]
        iam.add_user_to_group(GroupName="devs", UserName="erin")

        day2 = cli(cfg, database_url, "run", NAME)
        assert day2.exit_code == 0, output(day2)
        snap2 = engine.last_snapshot(database_url, NAME)
        assert snap2["status"] == "succeeded"
        dave, ops = ids["dave"], ids["ops"]
        assert changes_of(database_url, snap2["snapshot_id"]) == {
            ("account", "modified", ids["bob"]),  # renamed: same UserId
            ("account", "removed", dave),
            ("assignment", "removed", f"{dave} -> {ids['devs']}"),
            ("assignment", "removed", f"{dave} -> {ops}"),
            ("assignment", "added", f"{ids['carol']} -> {ids['admins']}"),
            ("entitlement", "modified", ops),  # renamed: same GroupId
            ("entitlement", "modified", f"inline:{ops}:ops-pager"),  # its owner's ARN changed with the name
            ("entitlement", "modified", ids["ReadS3"]),  # new default version
            ("entitlement", "modified", ids["ci"]),  # trust policy changed
            ("assignment", "added", f"{ids['alice']} -> {ids['ci']}"),
            ("entitlement", "removed", READ_ONLY),  # attached to nothing any more
            ("assignment", "removed", f"{ids['alice']} -> {READ_ONLY}"),
            ("account", "added", ids["erin"]),
            ("assignment", "added", f"{ids['erin']} -> {ids['devs']}"),
        }
        assert query(database_url, "SELECT username FROM ingest.accounts WHERE account_id = %s",
                     ids["bob"])[0]["username"] == "robert"
        assert frozen(query(database_url, "SELECT * FROM ingest.accounts_at(%s)",
                            snap1["snapshot_id"])) == frozen(day1_accounts)
        assert frozen(query(database_url, "SELECT * FROM ingest.assignments_at(%s)",
                            snap1["snapshot_id"])) == frozen(day1_assignments)

        again = cli(cfg, database_url, "run", NAME)
        assert again.exit_code == 0, output(again)
        assert changes_of(database_url, engine.last_snapshot(database_url, NAME)["snapshot_id"]) == set()


class TestSecrets:
    def test_the_secret_key_and_session_token_are_never_logged_stored_or_printed(self, tmp_path, database_url,
                                                                                moto, monkeypatch):
        from ingest.config import load_config
        from ingest.runner import run

        secret, token = "aws-secret-" + uuid.uuid4().hex, "aws-session-" + uuid.uuid4().hex
        monkeypatch.setenv("AWS_E2E_SECRET", secret)
        monkeypatch.setenv("AWS_E2E_TOKEN", token)
        moto.client().create_user(UserName="solo")
        cfg = write_config(tmp_path, moto, session_token="${AWS_E2E_TOKEN}")
        verbose = cli(cfg, database_url, "-v", "run", NAME)  # debug logs, botocore's included, in the output
        assert verbose.exit_code == 0, output(verbose)
        assert "aws_iam_listed" in output(verbose)
        checked = cli(cfg, database_url, "-v", "check", NAME)
        assert checked.exit_code == 0, output(checked)
        with structlog.testing.capture_logs() as logs:
            assert run(load_config(cfg), NAME, database_url=database_url).status == "succeeded"
        assert any(e["event"] == "aws_iam_listed" and e["users"] == 1 for e in logs)
        dump = query(database_url, "SELECT string_agg(t::text, ' ') AS s FROM (SELECT to_jsonb(x)::text AS t "
                                   "FROM ingest.snapshots x UNION ALL SELECT to_jsonb(a)::text "
                                   "FROM ingest.accounts_history a) y")[0]["s"]
        everything = output(verbose) + output(checked) + json.dumps(logs, default=str) + dump
        assert "solo" in everything
        for value in (secret, token):
            assert value not in everything


class TestAssumeRole:
    def test_the_connector_reads_iam_as_the_role_it_assumes(self, tmp_path, database_url, moto, monkeypatch):
        monkeypatch.setenv("AWS_E2E_SECRET", "aws-e2e-" + uuid.uuid4().hex)
        iam = moto.client()
        iam.create_user(UserName="solo")
        iam.create_role(RoleName="auditor", AssumeRolePolicyDocument=trust(AWS=f"arn:aws:iam::{ACCOUNT}:root"))
        cfg = write_config(tmp_path, moto, role_arn=f"arn:aws:iam::{ACCOUNT}:role/auditor", external_id="x-1")
        from ingest.config import load_config
        from ingest.runner import run

        with structlog.testing.capture_logs() as logs:
            assert run(load_config(cfg), NAME, database_url=database_url).status == "succeeded"
        assert [e["role_arn"] for e in logs if e["event"] == "aws_role_assumed"] == [
            f"arn:aws:iam::{ACCOUNT}:role/auditor"]
        assert {r[0] for r in rows(database_url, "accounts", "username")} == {"solo", "auditor"}


class TestReadOnly:
    def test_a_write_is_refused_before_it_leaves_the_process(self, moto):
        setup = moto.client()
        setup.create_user(UserName="keep-me")
        import boto3

        session = boto3.Session(aws_access_key_id="AKIAINGESTTEST000001", aws_secret_access_key="s",
                                region_name="us-east-1")
        stats = HttpStats()
        iam = read_only_client(session, region="us-east-1", endpoint_url=moto.url, connector=NAME, stats=stats)
        assert [u["UserName"] for u in iam.list_users()["Users"]] == ["keep-me"]
        assert stats.requests == 1
        for call in (lambda: iam.delete_user(UserName="keep-me"),
                     lambda: iam.create_access_key(UserName="keep-me"),
                     lambda: iam.attach_user_policy(UserName="keep-me", PolicyArn=ADMIN)):
            with pytest.raises(ReadOnlyViolation, match="refused IAM"):
                call()
        assert stats.requests == 1, "a refused call never reached the wire"
        assert [u["UserName"] for u in setup.list_users()["Users"]] == ["keep-me"]
        assert setup.list_attached_user_policies(UserName="keep-me")["AttachedPolicies"] == []
