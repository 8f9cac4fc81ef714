"""``ingest who`` and ``ingest report`` against the tables they read (the file-connector organisation of
test_people.py), the report rendered in real headless Chromium."""

from __future__ import annotations

import csv
import json

from tests.engine import output
from tests.people_browser import Marked, dump_dom, png_scanlines, screenshot
from tests.test_people import orgs, run_both  # noqa: F401 - fixture

KINDS = ("orphan_account", "leaver_with_access", "dormant_account", "privileged_access", "new_privileged_grant",
         "shared_service_account")


class TestWho:
    def test_json_answers_with_the_person_accounts_access_and_findings_of_the_tables(self, orgs):
        hr, app = orgs
        run_both(hr, app)
        result = app.cli("who", "ADA@example.com", "--json")
        assert result.exit_code == 0, output(result)
        got = json.loads(result.stdout)
        ada = hr.query("SELECT * FROM ingest.identities WHERE email = 'Ada@Example.com'")[0]
        assert got["person"]["identity_id"] == str(ada["identity_id"])
        assert got["person"]["display_name"] == "Ada Lovelace" and got["person"]["status"] == "active"
        assert {(a["connector"], a["account_id"], a["status"], a["matched_by"]) for a in got["accounts"]} == \
            {("hr", "h-ada", "ACTIVE", "rule"), ("app", "a-ada", "ACTIVE", "email")}
        want = hr.query("SELECT x.* FROM ingest.effective_access x JOIN ingest.identity_accounts ia "
                        "USING (connector, account_id) WHERE ia.identity_id = :i", i=ada["identity_id"])
        assert {(g["connector"], g["account_id"], g["entitlement_id"], tuple(g["via"]), g["depth"])
                for g in got["access"]} == \
            {(w["connector"], w["account_id"], w["entitlement_id"], tuple(w["via"]), w["depth"]) for w in want}
        adm = next(g for g in got["access"] if g["entitlement_id"] == "adm")
        assert adm["entitlement_label"] == "Platform Admins"
        assert adm["via_labels"] == ["Developers", "Team", "Ops"]
        assert [(f["kind"], f["entitlement_id"]) for f in got["findings"]] == [("privileged_access", "adm")]

    def test_table_shows_the_granting_path_and_a_leaver_is_found_by_identity_id(self, orgs, monkeypatch):
        from ingest import cli

        hr, app = orgs
        run_both(hr, app)
        monkeypatch.setattr(cli.out, "width", 200)  # a wide terminal: table cells on one line
        result = app.cli("who", "a-ada")  # a username of one of their accounts
        assert result.exit_code == 0, output(result)
        assert "Developers → Team → Ops → (this)" in result.stdout
        assert "Platform Admins" in result.stdout
        carol = hr.query("SELECT identity_id FROM ingest.identities WHERE email = 'carol@example.com'")[0]
        result = app.cli("who", str(carol["identity_id"]))
        assert result.exit_code == 0, output(result)
        assert "terminated" in result.stdout and "Leavers with access" in result.stdout

    def test_nobody_and_several_people_are_errors(self, orgs):
        hr, app = orgs
        run_both(hr, app)
        result = app.cli("who", "nobody-at-all@example.com")
        assert result.exit_code == 1
        assert "no person matches 'nobody-at-all@example.com'" in output(result)


def _marked(html: str) -> Marked:
    m = Marked("data-metric", "data-connector-metric", "data-trend-latest", "data-bar", "data-privileged")
    m.feed(html)
    return m


def check_report(query, cli, tmp_path) -> dict:
    """``ingest report`` via ``cli``; every number in the rendered page and every CSV agrees with the
    tables (read with ``query``); the screenshot is not blank. Returns the findings count per kind."""
    out = tmp_path / "review"
    result = cli("report", "--out", str(out))
    assert result.exit_code == 0, output(result)
    page = out / "access-review.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch: works offline
    counts = {k: 0 for k in KINDS}
    for r in query("SELECT kind, count(*) AS n FROM ingest.findings GROUP BY kind"):
        counts[r["kind"]] = r["n"]
    for kind in KINDS:  # one CSV per kind, one row per open finding
        with (out / f"findings-{kind}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == counts[kind], kind
        assert {(r["connector"], r["account_id"], r["entitlement_id"]) for r in rows} == {
            (r["connector"], r["account_id"], r["entitlement_id"] or "")
            for r in query("SELECT * FROM ingest.findings WHERE kind = :k", k=kind)}

    m = _marked(dump_dom(page))
    assert m.root.get("data-ready") == "1"  # the page's own script ran

    def one(sql: str, **params) -> int:
        return query(sql, **params)[0]["n"]

    metric = {k: int(v[0].replace(",", "")) for (a, k), v in m.found.items() if a == "data-metric"}
    assert metric == {
        "people": one("SELECT count(*) AS n FROM ingest.identities"),
        "terminated": one("SELECT count(*) AS n FROM ingest.identities WHERE status = 'terminated'"),
        "accounts": one("SELECT count(*) AS n FROM ingest.accounts"),
        "grants": one("SELECT count(*) AS n FROM ingest.assignments"),
        "findings": sum(counts.values()),
    }
    by_cell = {f"{r['kind']}|{r['connector']}": r["n"]
               for r in query("SELECT kind, connector, count(*) AS n FROM ingest.findings GROUP BY 1, 2")}
    cells = {key: int(texts[0]) for (a, key), texts in m.found.items() if a == "cell"}
    connectors = [r["connector"] for r in query("SELECT DISTINCT connector FROM ingest.snapshots "
                                                 "WHERE status = 'succeeded' ORDER BY 1")]
    assert len(cells) == len(KINDS) * (len(connectors) + 1)
    for key, n in cells.items():
        kind, connector = key.split("|")
        assert n == (counts[kind] if connector == "*" else by_cell.get(key, 0)), key
    assert {k: int(v[0]) for (a, k), v in m.found.items() if a == "data-bar"} == counts
    for key in ("accounts", "grants", "findings"):
        assert int(m.found[("data-trend-latest", key)][0].replace(",", "")) == metric[key], key
    assert [int(x) for x in m.found[("data-connector-metric", "accounts")]] == \
        [one("SELECT count(*) AS n FROM ingest.accounts WHERE connector = :c", c=c) for c in connectors]
    assert [int(x) for x in m.found[("data-connector-metric", "grants")]] == \
        [one("SELECT count(*) AS n FROM ingest.assignments WHERE connector = :c", c=c) for c in connectors]
    top = {k: int(v[0]) for (a, k), v in m.found.items() if a == "data-privileged"}
    assert top == {str(r["identity_id"]): r["n"] for r in query(
        "SELECT identity_id, count(*) AS n FROM ingest.findings WHERE kind = 'privileged_access' "
        "AND identity_id IS NOT NULL GROUP BY 1")}

    lines = png_scanlines(screenshot(page, tmp_path / "review.png"))
    assert len(lines) >= 1000
    assert len(set(lines)) > 100  # text, tables and charts, not an empty page
    return counts


class TestReport:
    def test_html_and_csv_agree_with_the_tables_in_a_real_browser(self, orgs, tmp_path):
        hr, app = orgs
        run_both(hr, app)
        counts = check_report(app.query, app.cli, tmp_path)
        assert counts == {"orphan_account": 2, "leaver_with_access": 1, "dormant_account": 1, "privileged_access": 2,
                          "new_privileged_grant": 0, "shared_service_account": 1}
        with (tmp_path / "review" / "findings-leaver_with_access.csv").open() as f:
            leaver = next(csv.DictReader(f))
        assert (leaver["connector"], leaver["account_id"], leaver["person_email"]) == \
            ("app", "a-carol", "carol@example.com")
