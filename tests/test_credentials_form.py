"""Form metadata: `x-section` on every setting of every connector type; `ingest info NAME` shows an instance's values
(secrets as ••••) and where each came from."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ingest.cli import app
from ingest.credentials._form import SECTIONS
from ingest.registry import connector_types, get_connector_class
from tests.oidc_probe import register

SECRET_FIELDS = {"password", "api_key", "api_secret", "bearer_token", "token", "client_secret", "private_key",
                 "service_account_json", "secret_access_key", "session_token"}


def _properties(schema: dict[str, Any]):
    yield from (schema.get("properties") or {}).items()
    for sub in (schema.get("$defs") or {}).values():
        yield from (sub.get("properties") or {}).items()


@pytest.mark.parametrize("type_name", sorted(connector_types()))
def test_every_setting_has_a_section(type_name: str) -> None:
    info = get_connector_class(type_name).info()
    for key in ("request_settings_schema", "authentication_schema"):
        for field, spec in _properties(info[key]):
            if field == "kind":  # the credential kind's own selector
                continue
            assert spec.get("x-section") in SECTIONS, (type_name, key, field)
    for field, spec in _properties(info["authentication_schema"]):
        if field in SECRET_FIELDS:
            assert spec.get("writeOnly") is True, (type_name, field)


def test_network_settings_are_relay_and_tuning_is_advanced() -> None:
    register()
    props = dict(_properties(get_connector_class("oidc_probe").info()["request_settings_schema"]))
    assert props["base_url"]["x-section"] == "general"
    assert {props[f]["x-section"] for f in ("proxy", "ca_bundle", "verify_ssl")} == {"relay"}
    assert {props[f]["x-section"] for f in ("timeout", "max_retries", "max_concurrency")} == {"advanced"}


class TestInstanceInfo:
    @pytest.fixture
    def config(self, tmp_path, monkeypatch):
        register()
        monkeypatch.setenv("PROBE_CLIENT_SECRET", "client-secret-4d1e77")
        (tmp_path / "key.pem").write_text("not-a-real-key-but-secret-99\n")
        path = tmp_path / "schedules.yaml"
        path.write_text(yaml.safe_dump({"connectors": {
            "probe": {"type": "oidc_probe",
                      "settings": {"base_url": "https://idp.example.test", "timeout": 12},
                      "auth": {"client_id": "ingest-app", "client_secret": "${PROBE_CLIENT_SECRET}",
                               "authorize_url": "https://idp.example.test/auth",
                               "token_url": "https://idp.example.test/token", "scopes": ["openid"]}},
            "bot": {"type": "oidc_probe", "settings": {"base_url": "https://api.example.test"},
                    "auth": {"app_id": 42, "installation_id": 7, "private_key": "${file:key.pem}"}}}}))
        return path

    def test_values_secrets_and_origins(self, config) -> None:
        result = CliRunner().invoke(app, ["--config", str(config), "info", "probe"])
        assert result.exit_code == 0, result.output
        text = result.output
        assert "client-secret-4d1e77" not in text
        lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 3}
        assert "••••" in lines["client_secret"] and "${PROBE_CLIENT_SECRET}" in lines["client_secret"]
        assert "https://idp.example.test" in lines["base_url"] and "schedules.yaml" in lines["base_url"]
        assert "12" in lines["timeout"] and "schedules.yaml" in lines["timeout"]
        assert "default" in lines["max_retries"]
        assert "http://127.0.0.1:8765/callback" in lines["redirect_uri"] and "default" in lines["redirect_uri"]

    def test_json_has_the_instance_and_a_file_secret_stays_locked(self, config) -> None:
        result = CliRunner().invoke(app, ["--config", str(config), "info", "bot", "--json"])
        assert result.exit_code == 0, result.output
        assert "not-a-real-key-but-secret-99" not in result.output
        doc = json.loads(result.output)
        assert doc["app_id"] == "oidc_probe" and doc["authentication_schema"]["type"] == "object"
        auth = {row["field"]: row for row in doc["instance"]["auth"]}
        assert doc["instance"]["auth_kind"] == "github_app"
        assert auth["private_key"] == {"field": "private_key", "value": "••••", "secret": True,
                                       "source": "${file:key.pem}"}
        assert auth["app_id"]["value"] == "42" and auth["api_url"]["source"] == "default"

    def test_an_unknown_name_is_an_error(self, config) -> None:
        result = CliRunner().invoke(app, ["--config", str(config), "info", "nosuch"])
        assert result.exit_code == 2
