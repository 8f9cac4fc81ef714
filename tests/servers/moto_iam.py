"""moto's real HTTP server for IAM and STS on 127.0.0.1 (a free port), reset on start and stopped
by the test, plus a boto3 client tests populate it with.

moto keeps its state per process, not per server: ``start`` resets it so each
test sees an empty account. AWS-managed policies are loaded
(``MOTO_IAM_LOAD_MANAGED_POLICIES``) so tests can attach them, as in a real
account (only when asked: loading them costs seconds). Where moto differs from IAM: it never records ``PasswordLastUsed`` or
access-key use (the credential report says ``N/A``), and it ignores ``MaxItems``
on several listings (paging is tested with botocore's Stubber instead).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Self

import boto3
import httpx

from ingest.testing._loopback import Managed

ACCOUNT = "123456789012"


class MotoIam(Managed):
    """``managed_policies``: load the ~1,300 AWS-managed policies (seconds of CPU on every reset: only
    for tests that attach them)."""

    def __init__(self, managed_policies: bool = False) -> None:
        self._server = None
        self.managed_policies = managed_policies

    def start(self) -> Self:
        os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true" if self.managed_policies else "false"
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        httpx.post(f"{self.url}/moto-api/reset", timeout=120).raise_for_status()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.get_host_and_port()
        return f"http://{host}:{port}"

    def client(self, service: str = "iam") -> Any:
        """A plain (writing) boto3 client, for the test to set the account up."""
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="AKIATESTSETUP0000000", aws_secret_access_key="setup-secret")


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str = "*") -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def trust(**principal: Any) -> str:
    return document({"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"})
