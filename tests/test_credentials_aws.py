"""SigV4 through botocore's signer against moto's server with request authentication on (it checks every signature)."""

from __future__ import annotations

import json
import uuid

import pytest

from ingest.credentials import credentials
from ingest.errors import AuthError
from ingest.http import HttpClient, HttpSettings

AWS = credentials("aws")
SETUP_CALLS = 5  # the unauthenticated calls that create the user, its key, the role and their policies
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


@pytest.fixture
def moto_iam(monkeypatch):
    """moto on 127.0.0.1 that authenticates every request after the setup calls; yields (url, key, secret, role, user)."""
    import botocore.session
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", SETUP_CALLS)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)  # moto counts per process
    user, role_name = f"reader-{uuid.uuid4().hex[:8]}", f"auditor-{uuid.uuid4().hex[:8]}"  # moto's state is global
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        iam = botocore.session.get_session().create_client(
            "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        trust = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        iam.put_role_policy(RoleName=role_name, PolicyName="all", PolicyDocument=ALLOW_ALL)
        iam.close()
        yield url, key["AccessKeyId"], key["SecretAccessKey"], role, user
    finally:
        server.stop()


def _list_users(url: str, auth: object) -> str:
    """IAM's query API as botocore calls it: a form POST (a read; declared as a read-only query)."""
    with HttpClient(url, settings=HttpSettings(max_retries=0), connector="aws", auth=auth,
                    read_only_requests=(("POST", r"^/$", r"(?:^|&)Action=List"),)) as c:
        return c.request("POST", "/", data={"Action": "ListUsers", "Version": "2010-05-08"}).text


class TestSigV4:
    def test_iam_answers_a_request_signed_with_the_configured_keys(self, moto_iam) -> None:
        url, key_id, secret, _, user = moto_iam
        body = _list_users(url, AWS.model_validate({"access_key_id": key_id, "secret_access_key": secret}).httpx_auth())
        assert f"<UserName>{user}</UserName>" in body

    def test_a_wrong_secret_is_refused_and_never_shown(self, moto_iam) -> None:
        url, key_id, secret, _, user = moto_iam
        wrong = secret[:-4] + "abcd"
        with pytest.raises(AuthError) as e:
            _list_users(url, AWS.model_validate({"access_key_id": key_id, "secret_access_key": wrong}).httpx_auth())
        assert wrong not in str(e.value) and secret not in str(e.value)

    def test_assume_role_then_sign_with_the_temporary_keys(self, moto_iam) -> None:
        url, key_id, secret, role, user = moto_iam
        auth = AWS.model_validate({"access_key_id": key_id, "secret_access_key": secret, "role_arn": role,
                                   "sts_url": url + "/"})
        httpx_auth = auth.httpx_auth()
        body = _list_users(url, httpx_auth)
        assert f"<UserName>{user}</UserName>" in body
        temporary = httpx_auth.token.extra
        assert temporary["access_key_id"] != key_id and temporary["session_token"]

    def test_temporary_keys_with_a_session_token(self, moto_iam) -> None:
        """Keys from an earlier AssumeRole, configured as access key + secret + session_token."""
        url, key_id, secret, role, user = moto_iam
        assumed = AWS.model_validate({"access_key_id": key_id, "secret_access_key": secret, "role_arn": role,
                                      "sts_url": url + "/"}).httpx_auth()
        _list_users(url, assumed)
        temporary = assumed.token.extra
        auth = AWS.model_validate({"access_key_id": temporary["access_key_id"],
                                   "secret_access_key": temporary["secret_access_key"],
                                   "session_token": temporary["session_token"]})
        assert f"<UserName>{user}</UserName>" in _list_users(url, auth.httpx_auth())
        without = AWS.model_validate({"access_key_id": temporary["access_key_id"],
                                      "secret_access_key": temporary["secret_access_key"]})
        with pytest.raises(AuthError):
            _list_users(url, without.httpx_auth())
