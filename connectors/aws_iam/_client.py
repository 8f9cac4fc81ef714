"""A read-only IAM client: botocore signs, retries and pages; this module keeps it read-only.

Two botocore event hooks, both before anything is signed or sent:

- ``before-parameter-build.iam``: the operation's name must be ``List*``,
  ``Get*`` or ``GenerateCredentialReport`` (which only asks IAM to build a
  report), else :class:`~ingest.errors.ReadOnlyViolation` is raised and no
  request exists yet;
- ``before-send.iam``: the serialized request's ``Action=`` (IAM speaks the
  query protocol: every call is a POST of a form) must pass the same test, so
  a request that reached the wire by another path is refused too.

The hooks also count requests and retries into the snapshot's HTTP stats.

One gap of botocore's retries is closed here: an answer it cannot parse (a gateway's HTML 502, a
body cut short with a consistent length) raises ``ResponseParserError`` straight out of the call,
never retried. The client's calls retry it too, up to ``max_retries`` with backoff, so a paginator
resumes at the page that failed rather than failing the run.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.config
import botocore.credentials
import botocore.parsers
import botocore.session
import structlog

from ingest.errors import ReadOnlyViolation
from ingest.http import HttpStats
from ingest.redact import register_secret

__all__ = ["READ_ONLY_OPERATIONS", "is_read_only", "read_only_client", "session_for"]

log = structlog.get_logger("ingest.connector.aws_iam")

READ_ONLY_OPERATIONS = ("List*", "Get*", "GenerateCredentialReport")
_THROTTLE_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                             "RequestThrottled", "SlowDown"})


def is_read_only(operation: str) -> bool:
    """True for the IAM operations ingest may call: ``List*``, ``Get*`` and ``GenerateCredentialReport``."""
    return (operation == "GenerateCredentialReport"
            or (operation[:4] == "List" and operation[4:5].isupper())
            or (operation[:3] == "Get" and operation[3:4].isupper()))


def _refuse(operation: str, connector: str | None) -> ReadOnlyViolation:
    return ReadOnlyViolation(f"refused IAM {operation}: ingest only calls {', '.join(READ_ONLY_OPERATIONS)} "
                             "(it never writes to a source)", connector=connector, request=f"iam:{operation}")


def _action_of(body: Any) -> str | None:
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return None
    values = parse_qs(body).get("Action")
    return values[0] if values else None


def session_for(auth: Any, region: str, sts_endpoint_url: str | None = None) -> boto3.Session:
    """A boto3 session with the ``aws`` credential's keys, assuming ``role_arn`` when it names one.

    The assumed role's credentials refresh themselves before they expire
    (botocore's ``RefreshableCredentials``), so a long run never fails on an
    expired session. boto3 does the signing (SigV4), so the credential layer's
    httpx signer is not used here.
    """
    key = auth.access_key_id
    secret = auth.secret_access_key.get_secret_value() if auth.secret_access_key else None
    token = auth.session_token.get_secret_value() if auth.session_token else None
    for value in (secret, token):
        register_secret(value)
    sts_region = getattr(auth, "region", None) or region
    base = boto3.Session(aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token,
                         region_name=sts_region)
    if not auth.role_arn:
        return base
    sts = base.client("sts", endpoint_url=getattr(auth, "sts_url", None) or sts_endpoint_url, region_name=sts_region)
    params = {"RoleArn": auth.role_arn, "RoleSessionName": getattr(auth, "session_name", None) or "ingest"}
    if auth.external_id:
        params["ExternalId"] = auth.external_id

    def assume() -> dict[str, Any]:
        creds = sts.assume_role(**params)["Credentials"]
        for value in (creds["SecretAccessKey"], creds["SessionToken"]):
            register_secret(value)
        log.info("aws_role_assumed", role_arn=auth.role_arn, expires=creds["Expiration"].isoformat())
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    refreshable = botocore.credentials.RefreshableCredentials.create_from_metadata(
        metadata=assume(), refresh_using=assume, method="sts-assume-role")
    core = botocore.session.get_session()
    core._credentials = refreshable  # botocore's documented way to hand a session ready-made credentials
    return boto3.Session(botocore_session=core, region_name=sts_region)


def read_only_client(session: boto3.Session, *, region: str, endpoint_url: str | None = None,
                     connector: str | None = None, stats: HttpStats | None = None, max_retries: int = 5,
                     timeout: float = 60.0, connect_timeout: float = 10.0) -> Any:
    """An IAM client that refuses any operation but ``List*``, ``Get*`` and ``GenerateCredentialReport``."""
    config = botocore.config.Config(
        region_name=region, retries={"mode": "standard", "total_max_attempts": max_retries + 1},
        read_timeout=timeout, connect_timeout=connect_timeout, user_agent_extra="ingest",
    )
    client = session.client("iam", endpoint_url=endpoint_url, config=config)
    stats = stats if stats is not None else HttpStats()
    lock = threading.Lock()

    def check_operation(model: Any = None, **_: Any) -> None:
        if model is None or not is_read_only(model.name):
            raise _refuse(getattr(model, "name", "?"), connector)

    def check_request(request: Any = None, **_: Any) -> None:
        action = _action_of(getattr(request, "body", None))
        if action is None or not is_read_only(action):
            raise _refuse(action or "(no Action)", connector)
        stats.add("requests")

    def count(http_response: Any = None, parsed: Any = None, **_: Any) -> None:
        meta = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
        with lock:
            if meta.get("RetryAttempts"):
                stats.add("retries", meta["RetryAttempts"])

    def throttled(response: Any = None, **_: Any) -> None:
        if isinstance(response, tuple) and len(response) == 2 and isinstance(response[1], dict):
            if response[1].get("Error", {}).get("Code") in _THROTTLE_CODES:
                stats.add("throttled")
                log.info("aws_throttled", connector=connector)

    call = client._make_api_call  # what every operation method and paginator page goes through

    def make_api_call(operation: str, params: dict[str, Any]) -> Any:
        for attempt in range(max_retries + 1):
            try:
                return call(operation, params)
            except botocore.parsers.ResponseParserError:
                if attempt == max_retries:
                    raise
                delay = min(5.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.0)
                stats.add("retries")
                log.info("aws_unreadable_answer_retry", connector=connector, operation=operation,
                         attempt=attempt + 1, sleep=round(delay, 3))
                time.sleep(delay)
        raise AssertionError("unreachable")

    client._make_api_call = make_api_call  # the generated methods call self._make_api_call
    events = client.meta.events
    events.register_first("before-parameter-build.iam", check_operation)
    events.register_last("before-send.iam", check_request)
    events.register("after-call.iam", count)
    events.register("needs-retry.iam", throttled)
    return client
