"""`ingest new-connector NAME`: the generated plugin package installs, passes its own tests as generated,
and ingest finds it through its entry point; bad names and occupied directories are refused (exit 2).

The package is installed the cheap real way: ``pip install --no-deps --no-build-isolation --no-index
--target SITE`` (this venv's setuptools builds it, offline), and SITE goes on PYTHONPATH of the
subprocesses that run its tests and the ``ingest`` CLI, so only the installed entry point can make
ingest see the new type.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest.cli import app
from ingest.errors import ConfigError
from ingest.registry import get_connector_class
from ingest.scaffold import FILES, NAME_RULE

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Plugin:
    root: Path
    site: Path

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("INGEST_CONFIG", "INGEST_DATABASE_URL", "PYTHONPATH")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(ROOT)])
        return subprocess.run([sys.executable, *args], cwd=cwd or self.root, env=env, capture_output=True,
                              text=True, timeout=180)


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Plugin:
    work = tmp_path_factory.mktemp("new-connector")
    made = _cli("new-connector", "acme_hr", "--dir", str(work / "ingest-acme_hr"))
    assert made.exit_code == 0, made.output
    site = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", str(site), str(work / "ingest-acme_hr")],
                             capture_output=True, text=True, timeout=180)
    assert install.returncode == 0, install.stderr[-3000:]
    return Plugin(root=work / "ingest-acme_hr", site=site)


class TestTheGeneratedPackage:
    def test_it_has_the_entry_point_streams_fake_and_tests(self, plugin):
        """Every file is written; the entry point names the package's Connector; the streams are declarations."""
        assert sorted(str(p.relative_to(plugin.root)) for p in plugin.root.rglob("*")
                      if p.is_file() and "build" not in p.parts and ".egg-info" not in str(p)) == sorted(
            p.format(name="acme_hr") for p in FILES.values())
        pyproject = (plugin.root / "pyproject.toml").read_text()
        assert '[project.entry-points."ingest.connectors"]\nacme_hr = "ingest_acme_hr:Connector"' in pyproject
        source = (plugin.root / "ingest_acme_hr" / "__init__.py").read_text()
        assert "Stream(" in source and "for_each=groups" in source
        assert "while " not in source, "the engine owns the loops: no paging loop in the connector"
        assert "127.0.0.1" in (plugin.root / "tests" / "fake_acme_hr.py").read_text()
        [entry] = (plugin.site).glob("ingest_acme_hr-*.dist-info/entry_points.txt")
        assert "[ingest.connectors]\nacme_hr = ingest_acme_hr:Connector" in entry.read_text()

    def test_it_passes_its_own_tests_as_generated(self, plugin, tmp_path):
        """The conformance kit, the full-read test and the mapping tests pass against the generated fake."""
        result = plugin.run("-m", "pytest", "-v", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}")
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        passed = re.search(r"(\d+) passed", summary)
        assert passed and int(passed.group(1)) >= 8, summary  # 4+ kit tests, the full read, 3 mapping tests
        assert not re.search(r"failed|error|skipped", summary), summary
        assert re.search(r"TestAcmeHrConformance::test_a_bad_credential_fails_check_cleanly PASSED", result.stdout)

    def test_ingest_lists_it_once_installed(self, plugin, tmp_path):
        """`ingest info` and `ingest connectors` see the new type through the installed entry point only."""
        both = plugin.run("-c", "import json; from typer.testing import CliRunner; from ingest.cli import app; "
                          "r = [CliRunner().invoke(app, a) for a in (['info', 'acme_hr', '--json'], "
                          "['connectors', '--json'])]; print(json.dumps([(x.exit_code, x.output) for x in r]))",
                          cwd=tmp_path)
        assert both.returncode == 0, both.stderr[-3000:]
        (info_rc, info), (listed_rc, listed) = json.loads(both.stdout)
        assert info_rc == 0, info
        doc = json.loads(info)
        assert (doc["app_id"], doc["user_friendly_name"]) == ("acme_hr", "Acme Hr")
        assert doc["capabilities"] == ["validate_credentials", "list_accounts", "list_entitlements",
                                       "find_entitlement_associations"]
        assert doc["authentication_schema"]["properties"]["bearer_token"]["writeOnly"] is True
        assert "base_url" in doc["request_settings_schema"]["properties"]
        assert listed_rc == 0, listed
        [row] = [r for r in json.loads(listed) if r["type"] == "acme_hr"]
        assert row["error"] is None and "list_accounts" in row["capabilities"]
        with pytest.raises(ConfigError, match="unknown connector type 'acme_hr'"):
            get_connector_class("acme_hr")  # this process has no such entry point: the install made the difference


class TestTheCommand:
    def test_it_writes_into_ingest_name_by_default_and_says_what_next(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = _cli("new-connector", "zebra")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "ingest-zebra" / "ingest_zebra" / "__init__.py").is_file()
        assert 'zebra = "ingest_zebra:Connector"' in (tmp_path / "ingest-zebra" / "pyproject.toml").read_text()
        assert "tests/test_conformance.py" in result.output and "pytest" in result.output

    @pytest.mark.parametrize(("name", "why"), [
        ("Acme", NAME_RULE), ("acme-hr", "e.g. 'acme_hr'"), ("1acme", NAME_RULE), ("acme hr", NAME_RULE),
        ("ac.me", NAME_RULE), ("acme_", "e.g. 'acme'"), ("ac__me", "e.g. 'ac_me'"), ("a" * 41, "at most 40 characters"), ("class", "Python keyword"),
        ("scim", "built-in connector type"), ("", NAME_RULE),
    ])
    def test_a_bad_name_is_refused_with_the_rule_and_writes_nothing(self, tmp_path, name, why):
        result = _cli("new-connector", name, "--dir", str(tmp_path / "out"))
        assert result.exit_code == 2, result.output
        assert f"connector name {name!r}" in result.output and why in " ".join(result.output.split())
        assert not (tmp_path / "out").exists()

    def test_an_occupied_directory_is_refused_and_force_overwrites_only_generated_files(self, tmp_path):
        target = tmp_path / "mine"
        target.mkdir()
        (target / "NOTES.txt").write_text("my notes")
        result = _cli("new-connector", "acme", "--dir", str(target))
        assert result.exit_code == 2, result.output
        assert "already exists" in result.output and "--force" in result.output
        assert sorted(p.name for p in target.iterdir()) == ["NOTES.txt"]

        assert _cli("new-connector", "acme", "--dir", str(target), "--force").exit_code == 0
        (target / "pyproject.toml").write_text("edited")
        assert _cli("new-connector", "acme", "--dir", str(target), "--force").exit_code == 0
        assert 'acme = "ingest_acme:Connector"' in (target / "pyproject.toml").read_text()
        assert (target / "NOTES.txt").read_text() == "my notes"

    def test_an_empty_directory_is_used_and_a_file_is_refused(self, tmp_path):
        (tmp_path / "empty").mkdir()
        assert _cli("new-connector", "acme", "--dir", str(tmp_path / "empty")).exit_code == 0
        assert (tmp_path / "empty" / "README.md").is_file()
        (tmp_path / "afile").write_text("x")
        result = _cli("new-connector", "acme", "--dir", str(tmp_path / "afile"), "--force")
        assert result.exit_code == 2 and "not a directory" in result.output
