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
        from tests.engine import output

        secret = "tok-9f8e7d6c5b4a"
        org.connector["settings"]["fail_in"] = "assignment"
        org.save()
        # the CLI configures its own logging: read the JSON event log it writes (at debug level)
        result = org.cli("--log-format", "json", "-v", "run", org.name)
        assert result.exit_code == 1
        text = output(result)
        assert '"event": "snapshot_started"' in text and '"event": "snapshot_failed"' in text, text[-2000:]
        assert secret not in text
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


class TestReadOnlySql:
    """`ingest sql` runs in a READ ONLY transaction unless --write."""

    def test_delete_and_drop_fail_and_change_nothing(self, org):
        assert org.run().exit_code == 0
        for q in ("DELETE FROM ingest.snapshots", "DROP TABLE ingest.snapshots CASCADE",
                  "UPDATE ingest.snapshots SET status = 'failed'",
                  "SELECT 1; DELETE FROM ingest.snapshots",
                  "COMMIT; DELETE FROM ingest.snapshots"):
            result = org.cli("sql", q)
            assert result.exit_code == 1, (q, result.output)
            assert org.query("SELECT status FROM ingest.snapshots") == [{"status": "succeeded"}], q
        assert "read-only" in org.cli("sql", "DELETE FROM ingest.snapshots").output
        assert "--write" in org.cli("sql", "DELETE FROM ingest.snapshots").output

    def test_write_changes_data_and_percent_signs_are_literal(self, org):
        assert org.run().exit_code == 0
        like = org.cli("sql", "SELECT count(*) AS n FROM ingest.accounts WHERE email LIKE '%@example.com'",
                       "--format", "json")
        assert like.exit_code == 0 and json.loads(like.output) == [{"n": 5}]
        result = org.cli("sql", "--write", "UPDATE ingest.snapshots SET error = 'noted'")
        assert result.exit_code == 0, result.output
        assert org.query("SELECT error FROM ingest.snapshots") == [{"error": "noted"}]


class TestErrorsAreText:
    def test_markup_in_values_and_errors_prints_as_text(self, org):
        result = org.cli("sql", "SELECT '[/x]' AS v, '[bold]b[/bold]' AS w")
        assert result.exit_code == 0, result.output
        assert "[/x]" in result.output and "[bold]b[/bold]" in result.output
        bad = org.cli("sql", 'SELECT * FROM "[/x]"')
        assert bad.exit_code == 1 and '"[/x]" does not exist' in bad.output

    def test_connector_context_stays_in_messages(self, org):
        org.connector["auth"] = {"token": "wrong-token-123"}
        org.save()
        bad = org.cli("check", "acme")
        assert bad.exit_code == 1 and "[connector=acme]" in bad.output
        org.connector["auth"] = {"token": "tok-9f8e7d6c5b4a"}
        org.connector["settings"]["fail_in"] = "assignment"
        org.save()
        run = org.run()
        assert run.exit_code == 1 and "injected failure in assignment" in run.output
        assert "[connector=acme]" in run.output


class TestDatabasePassword:
    URL = "postgresql://bob:pw-secret-7@127.0.0.1:1/x"

    def test_db_url_masks_a_configured_password_unless_asked(self, tmp_path):
        from typer.testing import CliRunner

        from ingest.cli import app

        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors: {}\n")
        masked = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", self.URL, "db", "url"])
        assert masked.exit_code == 0 and masked.output.strip() == "postgresql://bob:***@127.0.0.1:1/x"
        shown = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", self.URL, "db", "url",
                                         "--show-password"])
        assert shown.output.strip() == self.URL

    def test_db_shell_passes_the_password_in_the_environment_not_argv(self, tmp_path):
        import os
        import subprocess
        import sys

        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        seen = tmp_path / "seen.json"
        psql = bin_dir / "psql"
        psql.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"json.dump({{'argv': sys.argv, 'pw': os.environ.get('PGPASSWORD')}}, open({str(seen)!r}, 'w'))\n")
        psql.chmod(0o755)
        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors: {}\n")
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-c", "from ingest.cli import main; main()", "--config", str(cfg),
                               "--database-url", self.URL, "db", "shell"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(seen.read_text())
        assert got["pw"] == "pw-secret-7"
        assert got["argv"][1:] == ["postgresql://bob@127.0.0.1:1/x"]
        assert "pw-secret-7" not in proc.stdout + proc.stderr


class TestUsage:
    """Mistakes in names, options and the config exit 2 and say what was wrong."""

    def test_a_duplicated_connector_name_is_a_config_error_naming_the_line(self, tmp_path, database_url):
        from tests.engine import cli

        cfg = tmp_path / "schedules.yaml"
        cfg.write_text("connectors:\n  acme:\n    type: file\n    settings: {path: a.json}\n"
                       "  acme:\n    type: file\n    settings: {path: b.json}\n")
        result = cli(cfg, database_url, "status")
        assert result.exit_code == 2
        assert "line 5" in result.output and "duplicated key 'acme'" in result.output

    @pytest.mark.parametrize("command", ["snapshots", "diff", "check"])
    def test_an_unknown_connector_name_exits_2_naming_it(self, org, command):
        result = org.cli(command, "acmee")
        assert result.exit_code == 2, result.output
        assert "'acmee'" in result.output and "acme" in result.output.replace("'acmee'", "")

    def test_a_connector_only_in_history_is_still_known(self, org):
        assert org.run().exit_code == 0
        org.config.write_text("connectors: {}\n")
        result = org.cli("snapshots", "acme", "--json")
        assert result.exit_code == 0 and len(json.loads(result.output)) == 1

    def test_bad_option_values_are_quoted_back(self, org):
        fmt = org.cli("sql", "SELECT 1", "--format", "xml")
        assert fmt.exit_code == 2 and "--format 'xml': must be one of table, csv, json" in fmt.output
        from typer.testing import CliRunner

        from ingest.cli import app

        log = CliRunner().invoke(app, ["--log-format", "xml", "--config", str(org.config), "status"])
        assert log.exit_code == 2 and "--log-format 'xml': must be one of console, json" in log.output
        frm = org.cli("diff", "acme", "--from", "abc")
        assert frm.exit_code == 2 and "'abc'" in frm.output and "--from" in frm.output


class TestDiffNamesPeople:
    def test_diff_shows_who_and_what_beside_the_ids(self, org):
        assert org.run().exit_code == 0
        org.data["account"].append({"account_id": "u2002", "email": "ada.lovelace@example.com", "username": "ada"})
        org.data["entitlement"].append({"entitlement_type": "license", "entitlement_id": "lic-standard",
                                        "label": "Standard licence"})
        org.data["assignment"] = [{"account_id": "u2", "entitlement_id": "lic-standard"}]
        org.save()
        second = org.run("--allow-mass-delete")  # the one grant there was is removed
        assert second.exit_code == 0, second.output
        text = org.cli("diff", "acme").output
        assert "+ u2002 ada.lovelace@example.com" in text
        assert "+ lic-standard Standard licence" in text
        assert "+ u2 (user2) -> Standard licence" in text
        assert "- u1 (user1) -> Admins" in text
        changes = json.loads(org.cli("diff", "acme", "--json").output)["changes"]
        assert {c["label"] for c in changes["assignment"]} == {"u2 (user2) -> Standard licence",
                                                                "u1 (user1) -> Admins"}
