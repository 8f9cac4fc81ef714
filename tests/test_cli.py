"""The command line: info, connectors, status, snapshots, diff, sql, check, db url; and secrets."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.engine import Org, people


@pytest.fixture
def org(tmp_path, database_url) -> Org:
    org = Org(tmp_path, database_url, auth={"token": "tok-9f8e7d6c5b4a"})
    org.data["account"] = people(5)
    org.data["entitlement"] = [{"entitlement_type": "group", "entitlement_id": "g1", "label": "Admins"}]
    org.data["assignment"] = [{"account_id": "u1", "entitlement_id": "g1"}]
    org.data["token"] = "tok-9f8e7d6c5b4a"
    org.save()
    return org


class TestInfo:
    def test_info_json_has_the_lumos_keys_and_valid_json_schemas(self, org):
        result = org.cli("info", "file", "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        for key in ("app_id", "user_friendly_name", "description", "logo_url", "authentication_schema",
                    "request_settings_schema", "capabilities", "resource_types", "entitlement_types"):
            assert key in doc
        assert doc["request_settings_schema"]["properties"]["path"]["type"] == "string"
        assert "list_accounts" in doc["capabilities"]

    def test_connectors_lists_the_builtins(self, org):
        result = org.cli("connectors", "--json")
        assert result.exit_code == 0, result.output
        types = {c["type"]: c for c in json.loads(result.output)}
        assert {"demo", "scim", "lucid_scim", "ldap", "file"} <= set(types)
        assert all(c["error"] is None for c in types.values()), types

    def test_info_of_an_unknown_type_exits_2(self, org):
        result = org.cli("info", "nope")
        assert result.exit_code == 2 and "known:" in result.output


class TestQueries:
    def test_status_snapshots_and_diff_after_two_runs(self, org):
        assert org.run().exit_code == 0
        org.data["account"].append({"account_id": "u99", "username": "late"})
        org.data["account"][0]["display_name"] = "Renamed"
        org.save()
        assert org.run().exit_code == 0
        status = json.loads(org.cli("status", "--json").output)
        assert status[0]["connector"] == "acme" and status[0]["last_snapshot"]["status"] == "succeeded"
        assert status[0]["next_run"] is not None
        snaps = json.loads(org.cli("snapshots", "acme", "--json").output)
        assert [s["status"] for s in snaps] == ["succeeded", "succeeded"]
        assert snaps[0]["snapshot_id"] > snaps[1]["snapshot_id"]
        diff = json.loads(org.cli("diff", "acme", "--json").output)
        assert {(c["change"], c["key"]) for c in diff["changes"]["account"]} == {("added", "u99"), ("modified", "u0")}
        text = org.cli("diff", "acme").output
        assert "+ u99" in text and "display_name: User 0 -> Renamed" in text
        first = json.loads(org.cli("diff", "acme", "--from", "0", "--to", str(snaps[1]["snapshot_id"]), "--json").output)
        assert len(first["changes"]["account"]) == 5

    def test_diff_without_snapshots_says_what_to_do(self, org):
        result = org.cli("diff", "acme")
        assert result.exit_code == 1 and "ingest run acme" in result.output

    def test_sql_prints_table_csv_and_json(self, org):
        assert org.run().exit_code == 0
        q = "SELECT account_id, email FROM ingest.accounts WHERE account_id IN ('u1', 'u2') ORDER BY 1"
        rows = json.loads(org.cli("sql", q, "--format", "json").output)
        assert rows == [{"account_id": "u1", "email": "user1@example.com"},
                        {"account_id": "u2", "email": "user2@example.com"}]
        parsed = list(csv.reader(io.StringIO(org.cli("sql", q, "--format", "csv").output)))
        assert parsed == [["account_id", "email"], ["u1", "user1@example.com"], ["u2", "user2@example.com"]]
        assert "u1" in org.cli("sql", q).output
        bad = org.cli("sql", "SELECT * FROM nope")
        assert bad.exit_code == 1 and "nope" in bad.output

    def test_check_validates_credentials(self, org, tmp_path):
        ok = org.cli("check", "acme")
        assert ok.exit_code == 0 and "OK" in ok.output
        org.connector["auth"] = {"token": "wrong-token-123"}
        org.save()
        bad = org.cli("check", "acme")
        assert bad.exit_code == 1 and "refused" in bad.output
        assert "wrong-token-123" not in bad.output


class TestSecrets:
    def test_a_secret_never_reaches_logs_errors_or_the_database(self, org):
        from structlog.testing import capture_logs

        from ingest.redact import structlog_processor

        secret = "tok-9f8e7d6c5b4a"
        org.connector["settings"]["fail_in"] = "assignment"
        org.save()
        with capture_logs(processors=[structlog_processor]) as logs:
            result = org.run()
        assert result.exit_code == 1
        assert secret not in result.output
        assert secret not in json.dumps(logs, default=str)
        dump = org.query("""SELECT string_agg(t::text, ' ') AS all FROM (
            SELECT to_jsonb(s)::text AS t FROM ingest.snapshots s
            UNION ALL SELECT to_jsonb(a)::text FROM ingest.accounts_history a) x""")[0]["all"]
        assert secret not in dump


class TestDatabaseUrl:
    def test_db_url_prints_the_configured_url(self, org):
        result = org.cli("db", "url")
        assert result.exit_code == 0 and result.output.strip().startswith("postgresql://")

    def test_db_url_when_the_embedded_server_is_not_running_points_to_db_start(self, tmp_path, monkeypatch):
        from typer.testing import CliRunner

        from ingest.cli import app

        monkeypatch.delenv("INGEST_DATABASE_URL", raising=False)
        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors: {}\n")
        result = CliRunner().invoke(app, ["--config", str(cfg), "db", "url"])
        assert result.exit_code == 1 and "ingest db start" in result.output

    def test_an_unreachable_database_is_a_clear_error(self, tmp_path):
        from typer.testing import CliRunner

        from ingest.cli import app

        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors: {}\n")
        result = CliRunner().invoke(app, ["--config", str(cfg), "--database-url",
                                          "postgresql://nobody:pw-secret-1@127.0.0.1:1/x", "status"])
        assert result.exit_code == 1 and "cannot use the database" in result.output
        assert "pw-secret-1" not in result.output
