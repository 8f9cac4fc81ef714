"""`ingest check` is the Test button: each failure is one line saying why and what to do; no traceback, no secret."""

from __future__ import annotations

import base64
import json
import secrets
import time
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ingest.cli import app
from ingest.credentials._consent import free_loopback_port
from tests.oidc_probe import register
from tests.servers.fake_api import FakeApi, self_signed_cert
from tests.servers.token_server import TokenServer, rsa_pem


@pytest.fixture(autouse=True)
def _probe(monkeypatch, database_url):
    register()
    monkeypatch.setenv("INGEST_SECRET_KEY", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    monkeypatch.setenv("INGEST_DATABASE_URL", database_url)  # tokens are cached in the test database


@pytest.fixture
def token_server():
    with TokenServer() as server:
        yield server


def check(tmp_path: Path, base_url: str, auth: dict[str, Any], **settings: Any) -> tuple[int, str]:
    """`ingest check probe` in-process; returns (exit code, everything printed)."""
    config = tmp_path / "schedules.yaml"
    config.write_text(yaml.safe_dump({"connectors": {"probe": {
        "type": "oidc_probe", "settings": {"base_url": base_url, "max_retries": 0, **settings}, "auth": auth}}}))
    result = CliRunner().invoke(app, ["--config", str(config), "check", "probe"])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    return result.exit_code, text


def assert_clean(text: str, *secrets: str) -> None:
    assert "Traceback" not in text
    for s in secrets:
        assert s not in text


class TestCheck:
    def test_ok_prints_tenant_info(self, tmp_path, token_server) -> None:
        private, public = rsa_pem()
        token_server.add_client("svc", public)
        code, text = check(tmp_path, token_server.root_url + "/api",
                           {"client_id": "svc", "private_key": private, "token_url": token_server.token_url})
        assert code == 0, text
        assert "probe: OK" in text and "user: svc" in text

    def test_invalid_client(self, tmp_path, token_server) -> None:
        _, public = rsa_pem()
        wrong, _ = rsa_pem()
        token_server.add_client("svc", public)
        code, text = check(tmp_path, token_server.root_url + "/api",
                           {"client_id": "svc", "private_key": wrong, "token_url": token_server.token_url})
        assert code == 1
        assert "refused the client credentials: invalid_client" in text
        assert "what to do: check auth.client_id and auth.private_key" in text
        assert_clean(text, wrong.splitlines()[1])

    def test_clock_skew_on_a_jwt(self, tmp_path, token_server, monkeypatch) -> None:
        private, public = rsa_pem()
        token_server.add_service_account("sa@p.iam.test", public, subjects={"admin@acme.test"})
        key = json.dumps({"client_email": "sa@p.iam.test", "private_key": private,
                          "token_uri": token_server.token_url})
        import ingest.credentials._token as token_module

        real = time.time
        # this machine's clock is two hours behind (only ingest's signing code sees it; the server keeps real time)
        monkeypatch.setattr(token_module, "time", types.SimpleNamespace(time=lambda: real() - 7200))
        code, text = check(tmp_path, token_server.root_url + "/api",
                           {"service_account_json": key, "subject": "admin@acme.test", "scopes": ["x"]})
        assert code == 1
        assert "clock skew" in text and "what to do: sync this machine's clock" in text
        assert_clean(text, private.splitlines()[1])

    def test_missing_scope(self, tmp_path, token_server) -> None:
        private, public = rsa_pem()
        token_server.add_client("svc", public)
        token_server.required_scope = "users.read"
        code, text = check(tmp_path, token_server.root_url + "/api",
                           {"client_id": "svc", "private_key": private, "token_url": token_server.token_url,
                            "scopes": ["groups.read"]})
        assert code == 1
        assert "lack a permission or scope" in text and "insufficient_scope" in text
        assert "what to do: grant the missing permission or scope" in text

    def test_a_wrong_bearer_token(self, tmp_path) -> None:
        with FakeApi() as api:
            api.require_bearer("right-token-123")
            api.add_json("/me", {"id": "u1"})
            code, text = check(tmp_path, api.base_url, {"bearer_token": "wrong-token-456"})
        assert code == 1
        assert "the source refused the credentials" in text and "what to do: check auth.bearer_token" in text
        assert_clean(text, "wrong-token-456")

    def test_tls_certificate_not_trusted(self, tmp_path) -> None:
        with FakeApi(tls=self_signed_cert(tmp_path)) as api:
            api.add_json("/me", {"id": "u1"})
            code, text = check(tmp_path, api.base_url, {"bearer_token": "token-123456"})
        assert code == 1
        assert "TLS certificate verification failed" in text and "what to do: set settings.ca_bundle" in text
        assert_clean(text, "token-123456")

    def test_unreachable_host(self, tmp_path) -> None:
        port = free_loopback_port()  # nothing listens there
        code, text = check(tmp_path, f"http://127.0.0.1:{port}", {"bearer_token": "token-123456"})
        assert code == 1
        assert "cannot reach the source" in text and "what to do: check settings.base_url" in text
        assert_clean(text, "token-123456")
