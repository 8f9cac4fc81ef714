"""schedules.yaml: substitution, validation, and errors that name the file, connector and field."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ingest.cli import app
from ingest.config import load_config
from ingest.errors import ConfigError


def _write(tmp_path, text: str):
    path = tmp_path / "schedules.yaml"
    path.write_text(text)
    return path


def _error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    return str(e.value)


class TestSubstitution:
    def test_env_default_and_file_values_are_substituted(self, tmp_path, monkeypatch):
        monkeypatch.setenv("ORG_FILE", "org.json")
        (tmp_path / "token.txt").write_text("s3cret-token\n")
        loaded = load_config(_write(tmp_path, """
connectors:
  acme:
    type: file
    settings: {path: "${ORG_FILE}", fail_in: "${NOT_SET:-account}"}
    auth: {token: "${file:token.txt}"}
"""))
        rc = loaded.connector("acme")
        assert rc.settings.path == "org.json" and rc.settings.fail_in == "account"
        assert rc.auth.token.get_secret_value() == "s3cret-token"
        assert "s3cret-token" not in repr(rc.auth)

    def test_a_missing_variable_names_the_variable_and_the_field(self, tmp_path, monkeypatch):
        monkeypatch.delenv("LUCID_SCIM_TOKEN", raising=False)
        msg = _error(tmp_path, """
connectors:
  lucid:
    type: file
    settings: {path: x}
    auth: {token: "${LUCID_SCIM_TOKEN}"}
""")
        assert "schedules.yaml" in msg and "connectors.lucid.auth.token" in msg and "LUCID_SCIM_TOKEN" in msg

    def test_empty_database_url_default_means_embedded(self, tmp_path, monkeypatch):
        monkeypatch.delenv("INGEST_DATABASE_URL", raising=False)
        loaded = load_config(_write(tmp_path, "database_url: ${INGEST_DATABASE_URL:-}\nconnectors: {}\n"))
        assert not loaded.config.database_url
        assert loaded.data_dir == tmp_path / ".ingest"


class TestValidation:
    @pytest.mark.parametrize("text, expected", [
        ("connectors:\n  a:\n    type: file\n    setings: {path: x}\n", "connectors.a.setings: unknown key"),
        ("conectors: {}\n", "conectors: unknown key"),
        ("connectors:\n  a:\n    type: file\n    settings: {path: x, colour: red}\n",
         "connectors.a.settings.colour: unknown key"),
        ("connectors:\n  a:\n    type: file\n    settings: {}\n", "connectors.a.settings.path: Field required"),
        ("connectors:\n  a:\n    type: nope\n", "connectors.a.type: unknown connector type 'nope'"),
        ("defaults: {max_deletion_ratio: -0.1}\n", "defaults.max_deletion_ratio"),
        ("timezone: Mars/Olympus\n", "unknown timezone 'Mars/Olympus'"),
        ("defaults: {schedule: '0 0 2 * * *'}\n", "not a 5-field cron"),
        ("connectors:\n  a:\n    type: file\n    schedule: '99 * * * *'\n    settings: {path: x}\n",
         "connectors.a.schedule"),
        ("connectors:\n  Bad Name:\n    type: file\n", "must be lowercase"),
        ("connectors: [1, 2\n", "not valid YAML at line"),
        ("connectors:\n  a:\n    type: file\n    runs_on: ['dmz berlin']\n    settings: {path: x}\n",
         "connectors.a.runs_on: Value error, label 'dmz berlin' must be"),
        ("connectors:\n  a:\n    type: file\n    runs_on: dmz\n    settings: {path: x}\n",
         "connectors.a.runs_on: Input should be a valid list"),
    ])
    def test_bad_config_is_a_clear_error(self, tmp_path, text, expected):
        msg = _error(tmp_path, text)
        assert expected in msg and str(tmp_path / "schedules.yaml") in msg

    def test_cli_exits_2_with_the_message_and_no_traceback(self, tmp_path):
        path = _write(tmp_path, "connectors:\n  a:\n    type: file\n    settings: {path: x, colour: red}\n")
        result = CliRunner().invoke(app, ["--config", str(path), "run", "a"])
        assert result.exit_code == 2
        assert "connectors.a.settings.colour: unknown key" in result.output
        assert "Traceback" not in result.output

    def test_missing_config_file_exits_2(self, tmp_path):
        result = CliRunner().invoke(app, ["--config", str(tmp_path / "nope.yaml"), "run", "a"])
        assert result.exit_code == 2 and "config file not found" in result.output

    def test_unknown_connector_name_lists_the_configured_ones(self, tmp_path):
        path = _write(tmp_path, "connectors:\n  a:\n    type: file\n    settings: {path: x}\n")
        result = CliRunner().invoke(app, ["--config", str(path), "run", "b"])
        assert result.exit_code == 2 and "no connector named 'b' (configured: a)" in result.output

    def test_the_example_schedules_yaml_is_valid(self, monkeypatch):
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        loaded = load_config(root / "schedules.yaml")
        assert loaded.connector("demo").enabled
        assert load_config(root / "examples" / "demo.yaml").connector("demo").type == "demo"
