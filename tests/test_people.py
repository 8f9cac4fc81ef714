"""People and effective access on real PostgreSQL, with two ``file`` connectors: an HR source and an app.

Day 1: e-mail matches in another case with spaces, an employee-number match, a terminated person
still active in the app, an orphan, an ambiguous account, a service account on a person's e-mail,
nested groups three deep with a cycle and an admin group reached only through nesting.
Day 2: someone is terminated and a new nesting edge makes a new admin.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import yaml

from ingest.config import parse_config
from ingest.errors import ConfigError
from tests.engine import Org

IDENTITY = {"sources": ["hr"], "match": ["email", "employee_id"],
            "attributes": {"employee_id": "custom_attributes.employeeNumber"}, "dormant_after_days": 30}


def person(aid: str, email: str | None, emp: str | None, status: str = "ACTIVE", **kw) -> dict:
    return {"account_id": aid, "email": email, "username": aid, "display_name": kw.pop("name", aid.upper()),
            "status": status, "custom_attributes": {"employeeNumber": emp} if emp else {}, **kw}


def group(gid: str, label: str) -> dict:
    return {"entitlement_type": "group", "entitlement_id": gid, "label": label}


def nest(parent: str, member: str) -> dict:
    """Members of ``member`` are members of ``parent``."""
    return {"entitlement_id": parent, "member_entitlement_id": member}


def set_identity(org: Org, identity: dict | None) -> None:
    cfg = yaml.safe_load(org.config.read_text())
    cfg.pop("identity", None)
    if identity is not None:
        cfg["identity"] = identity
    org.config.write_text(yaml.safe_dump(cfg))


@pytest.fixture
def orgs(tmp_path, database_url):
    hr = Org(tmp_path, database_url, name="hr")
    hr.data["account"] = [
        person("h-ada", "Ada@Example.com", "E1", name="Ada Lovelace"),
        person("h-bob", "bob@example.com", "E2", name="Bob"),
        person("h-carol", "carol@example.com", "E3", status="SUSPENDED", name="Carol"),
        person("h-dan", "dan@example.com", "E4", name="Dan"),
        person("h-eve1", "eve1@example.com", "E9", name="Eve One"),
        person("h-eve2", "eve2@example.com", "E9", name="Eve Two"),
    ]
    hr.save()
    app = Org(tmp_path, database_url, name="app")
    app.data["account"] = [
        person("a-ada", "  ada@EXAMPLE.com ", None),                       # e-mail, other case, spaces
        person("a-bob", "robert@other.example", "E2",                      # employee number only
               last_activity_at="2020-01-01T00:00:00+00:00"),
        person("a-carol", "carol@example.com", None),                      # leaver, still active here
        person("a-nobody", "nobody@example.com", None),                    # orphan
        person("a-eve", None, "E9"),                                       # two people could claim it
        person("a-svc", "dan@example.com", None, account_type="service"),  # service account on a person's mail
        person("a-bot", None, None, account_type="service"),               # service account, no person: fine
    ]
    app.data["entitlement"] = [group("dev", "Developers"), group("team", "Team"), group("ops", "Ops"),
                               group("adm", "Platform Admins"), group("rd", "Readers")]
    app.data["assignment"] = [{"account_id": "a-ada", "entitlement_id": "dev"},
                              {"account_id": "a-bob", "entitlement_id": "ops"},
                              {"account_id": "a-bob", "entitlement_id": "team"},
                              {"account_id": "a-carol", "entitlement_id": "rd"}]
    # dev -> team -> ops -> adm, and ops -> dev closes a cycle
    app.data["nested_entitlement"] = [nest("team", "dev"), nest("ops", "team"), nest("adm", "ops"), nest("dev", "ops")]
    app.save()
    set_identity(app, IDENTITY)
    return hr, app


def run_both(hr: Org, app: Org) -> tuple[int, int]:
    for org in (hr, app):
        result = org.run()
        assert result.exit_code == 0, result.output
    return hr.last_snapshot()["snapshot_id"], app.last_snapshot()["snapshot_id"]


def people(org: Org) -> dict[str, dict]:
    return {r["email"]: r for r in org.query("SELECT * FROM ingest.identities")}


def links(org: Org) -> dict[tuple[str, str], tuple[str, str]]:
    rows = org.query("SELECT i.email, ia.connector, ia.account_id, ia.matched_by FROM ingest.identity_accounts ia "
                     "JOIN ingest.identities i USING (identity_id)")
    return {(r["connector"], r["account_id"]): (r["email"], r["matched_by"]) for r in rows}


def findings(org: Org, kind: str | None = None) -> list[dict]:
    rows = org.query("SELECT * FROM ingest.findings ORDER BY kind, connector, account_id, entitlement_id")
    return [r for r in rows if kind is None or r["kind"] == kind]


def effective(org: Org, account: str) -> dict[str, tuple[list[str], int]]:
    rows = org.query("SELECT * FROM ingest.effective_access WHERE connector = 'app' AND account_id = :a", a=account)
    return {r["entitlement_id"]: (r["via"], r["depth"]) for r in rows}


class TestResolution:
    def test_source_accounts_are_people_and_others_link_by_the_keys_in_order(self, orgs):
        hr, app = orgs
        run_both(hr, app)
        p = people(hr)
        assert set(p) == {"Ada@Example.com", "bob@example.com", "carol@example.com", "dan@example.com",
                          "eve1@example.com", "eve2@example.com"}
        assert p["Ada@Example.com"]["display_name"] == "Ada Lovelace"
        assert p["Ada@Example.com"]["employee_id"] == "E1"
        assert {e: r["status"] for e, r in p.items()} == {
            "Ada@Example.com": "active", "bob@example.com": "active", "carol@example.com": "terminated",
            "dan@example.com": "active", "eve1@example.com": "active", "eve2@example.com": "active"}
        assert all(r["source_connector"] == "hr" for r in p.values())
        got = links(hr)
        assert got[("app", "a-ada")] == ("Ada@Example.com", "email")
        assert got[("app", "a-bob")] == ("bob@example.com", "employee_id")
        assert got[("app", "a-carol")] == ("carol@example.com", "email")
        assert got[("app", "a-svc")] == ("dan@example.com", "email")
        assert got[("hr", "h-ada")] == ("Ada@Example.com", "rule")
        for unlinked in ("a-nobody", "a-eve", "a-bot"):
            assert ("app", unlinked) not in got

    def test_without_an_identity_section_every_email_is_a_person(self, orgs):
        hr, app = orgs
        set_identity(app, None)
        run_both(hr, app)
        p = people(hr)
        # one person per e-mail address of a user account, compared lower-cased and trimmed
        assert set(p) == {"ada@example.com", "bob@example.com", "carol@example.com", "dan@example.com",
                          "eve1@example.com", "eve2@example.com", "robert@other.example", "nobody@example.com"}
        assert all(r["status"] == "active" and r["source_connector"] is None for r in p.values())
        got = links(hr)
        assert got[("app", "a-ada")] == got[("hr", "h-ada")] == ("ada@example.com", "email")
        assert ("app", "a-eve") not in got  # no e-mail, and e-mail is the only key
        assert {f["account_id"] for f in findings(hr, "orphan_account")} == {"a-eve"}

    def test_identity_config_errors_name_the_field(self, tmp_path):
        base = {"connectors": {"hr": {"type": "file", "settings": {"path": "x"}}}}
        cases = [
            ({"sources": ["nope"]}, "identity.sources[0]: no connector named 'nope'"),
            ({"match": ["email", "phone"]}, "identity.match.1"),
            ({"attributes": {"employee_id": "custom_attributes"}},
             "identity.attributes: Value error, employee_id: 'custom_attributes' is not an account attribute"),
            ({"attributes": {"employee_id": {"nope": "custom_attributes.x"}}},
             "identity.attributes.employee_id.nope: no connector named 'nope'"),
            ({"privileged": ["(unclosed"]}, "identity.privileged"),
            ({"dormant_after_days": 0}, "identity.dormant_after_days"),
            ({"sourcez": ["hr"]}, "identity.sourcez: unknown key"),
        ]
        for identity, message in cases:
            with pytest.raises(ConfigError) as e:
                parse_config({**base, "identity": identity}, tmp_path / "schedules.yaml")
            assert message in str(e.value), (identity, str(e.value))


class TestEffectiveAccess:
    def test_nesting_is_expanded_transitively_with_the_shortest_path_and_cycles_are_safe(self, orgs):
        hr, app = orgs
        run_both(hr, app)
        assert effective(app, "a-ada") == {"dev": ([], 0), "team": (["dev"], 1), "ops": (["dev", "team"], 2),
                                           "adm": (["dev", "team", "ops"], 3)}
        # team is direct (depth 0) though also reached through ops -> dev -> team; dev through ops
        assert effective(app, "a-bob") == {"ops": ([], 0), "team": ([], 0), "dev": (["ops"], 1),
                                           "adm": (["ops"], 1)}
        total = app.query("SELECT count(*) AS n FROM ingest.effective_access")[0]["n"]
        distinct = app.query("SELECT count(DISTINCT (connector, account_id, entitlement_id)) AS n "
                             "FROM ingest.effective_access")[0]["n"]
        assert total == distinct == 4 + 4 + 1


class TestFindings:
    def test_day_one(self, orgs):
        hr, app = orgs
        _, app1 = run_both(hr, app)
        p = people(hr)
        orphans = {f["account_id"]: f for f in findings(app, "orphan_account")}
        assert set(orphans) == {"a-nobody", "a-eve"}  # service accounts are never orphans by themselves
        assert orphans["a-nobody"]["detail"]["reason"] == "no match"
        assert orphans["a-eve"]["detail"]["reason"] == "ambiguous"
        assert sorted(orphans["a-eve"]["detail"]["candidates"]) == sorted(
            str(p[e]["identity_id"]) for e in ("eve1@example.com", "eve2@example.com"))
        assert [(f["account_id"], f["identity_id"]) for f in findings(app, "leaver_with_access")] == \
            [("a-carol", p["carol@example.com"]["identity_id"])]
        assert [f["account_id"] for f in findings(app, "dormant_account")] == ["a-bob"]
        priv = {(f["account_id"], f["entitlement_id"]): f["detail"] for f in findings(app, "privileged_access")}
        assert set(priv) == {("a-ada", "adm"), ("a-bob", "adm")}
        assert priv[("a-ada", "adm")]["via"] == ["dev", "team", "ops"]
        assert findings(app, "new_privileged_grant") == []  # a connector's first snapshot is not "new"
        shared = findings(app, "shared_service_account")
        assert [(f["account_id"], f["identity_id"]) for f in shared] == [("a-svc", p["dan@example.com"]["identity_id"])]
        assert {f["since"] for f in findings(app)} == {app1}

    def test_day_two_updates_findings_and_keeps_since(self, orgs):
        hr, app = orgs
        hr1, app1 = run_both(hr, app)
        bob = people(hr)["bob@example.com"]["identity_id"]
        hr.data["account"][1]["status"] = "SUSPENDED"          # Bob leaves
        hr.save()
        app.data["nested_entitlement"].append(nest("adm", "rd"))  # Readers now grants Platform Admins
        app.data["account"][3]["email"] = "bob@example.com"       # the orphan turns out to be Bob's
        app.save()
        hr2, app2 = run_both(hr, app)
        assert people(hr)["bob@example.com"]["status"] == "terminated"
        leavers = {f["account_id"]: f for f in findings(app, "leaver_with_access")}
        assert set(leavers) == {"a-carol", "a-bob", "a-nobody"}
        assert leavers["a-carol"]["since"] == app1 and leavers["a-bob"]["since"] == hr2
        assert leavers["a-bob"]["identity_id"] == bob
        assert {f["account_id"] for f in findings(app, "orphan_account")} == {"a-eve"}
        priv = {(f["account_id"], f["entitlement_id"]): f for f in findings(app, "privileged_access")}
        assert set(priv) == {("a-ada", "adm"), ("a-bob", "adm"), ("a-carol", "adm")}
        assert priv[("a-ada", "adm")]["since"] == app1          # stable across runs
        assert priv[("a-carol", "adm")]["since"] == app2
        assert priv[("a-carol", "adm")]["detail"]["via"] == ["rd"]
        new = findings(app, "new_privileged_grant")
        assert [(f["account_id"], f["entitlement_id"], f["since"]) for f in new] == [("a-carol", "adm", app2)]
        # resolved findings are kept with the snapshot after which they were gone
        gone = app.query("SELECT * FROM ingest.findings_history WHERE resolved IS NOT NULL")
        assert [(g["kind"], g["account_id"], g["since"], g["resolved"]) for g in gone] == \
            [("orphan_account", "a-nobody", app1, app2)]
        # a run with no change: nothing else opened or resolved; new_privileged_grant gone with the next snapshot
        before = {(f["kind"], f["account_id"], f["entitlement_id"], f["since"]) for f in findings(app)
                  if f["kind"] != "new_privileged_grant"}
        assert app.run().exit_code == 0
        assert findings(app, "new_privileged_grant") == []
        assert {(f["kind"], f["account_id"], f["entitlement_id"], f["since"]) for f in findings(app)} == before


class TestHistory:
    def test_a_past_day_is_reconstructed_exactly(self, orgs):
        hr, app = orgs
        run_both(hr, app)
        day1 = {
            "identities": hr.query("SELECT * FROM ingest.identities ORDER BY identity_id"),
            "links": hr.query("SELECT * FROM ingest.identity_accounts ORDER BY connector, account_id"),
            "effective": hr.query("SELECT * FROM ingest.effective_access "
                                  "ORDER BY connector, account_id, entitlement_id"),
        }
        t1 = datetime.now(UTC)
        hr.data["account"][1]["status"] = "SUSPENDED"
        hr.data["account"].pop(0)  # Ada's HR record deleted: she stays a person, terminated
        hr.save()
        app.data["nested_entitlement"].append(nest("adm", "rd"))
        app.data["assignment"].append({"account_id": "a-nobody", "entitlement_id": "dev"})
        app.save()
        run_both(hr, app)
        now = {"identities": hr.query("SELECT * FROM ingest.identities ORDER BY identity_id")}
        assert now["identities"] != day1["identities"]
        ada = next(r for r in now["identities"] if r["email"] == "Ada@Example.com")
        assert ada["status"] == "terminated"
        past = {
            "identities": hr.query("SELECT * FROM ingest.identities_at(:t) ORDER BY identity_id", t=t1),
            "links": hr.query("SELECT * FROM ingest.identity_accounts_at(:t) ORDER BY connector, account_id", t=t1),
            "effective": hr.query("SELECT * FROM ingest.effective_access_at(:t) "
                                  "ORDER BY connector, account_id, entitlement_id", t=t1),
        }
        assert past == day1
        # and "now" through the history functions equals the tables
        later = datetime.now(UTC)
        assert hr.query("SELECT * FROM ingest.identities_at(:t) ORDER BY identity_id", t=later) == now["identities"]
        assert hr.query("SELECT * FROM ingest.effective_access_at(:t) ORDER BY connector, account_id, entitlement_id",
                        t=later) == hr.query("SELECT * FROM ingest.effective_access "
                                             "ORDER BY connector, account_id, entitlement_id")
        assert isinstance(ada["identity_id"], uuid.UUID)


class TestScope:
    def test_an_app_snapshot_refreshes_only_that_app_and_agrees_with_a_full_refresh(self, orgs):
        from ingest.config import load_config
        from ingest.db import get_engine
        from ingest.people import refresh

        hr, app = orgs
        run_both(hr, app)
        app.data["nested_entitlement"].append(nest("adm", "rd"))
        app.data["account"][3]["email"] = "bob@example.com"
        app.data["account"].append(person("a-new", "DAN@example.com ", None))
        app.save()
        from structlog.testing import capture_logs

        from ingest.runner import run

        with capture_logs() as logs:
            assert run(load_config(app.config), "app", database_url=app.url).ok
        done = [e for e in logs if e["event"] == "people_refreshed"]
        assert [e["scope"] for e in done] == ["app"]
        assert set(done[0]["paths"]) == {"app"}

        def state() -> dict:
            return {
                "links": hr.query("SELECT * FROM ingest.identity_accounts ORDER BY connector, account_id"),
                "people": hr.query("SELECT * FROM ingest.identities ORDER BY identity_id"),
                "paths": hr.query("SELECT * FROM ingest.entitlement_paths ORDER BY 1, 2, 3"),
                "findings": hr.query("SELECT * FROM ingest.findings ORDER BY kind, connector, account_id, "
                                     "entitlement_id"),
            }

        scoped = state()
        assert ("app", "a-new") in links(hr)
        cfg = load_config(app.config).config.identity
        full = refresh(get_engine(app.url), cfg, app.last_snapshot()["snapshot_id"])
        assert full["scope"] == "all"
        assert full["findings"] == {"opened": 0, "resolved": 0}
        assert state() == scoped


class TestShutdown:
    def test_a_cancelled_refresh_stops_at_once_keeps_the_previous_state_and_the_next_one_is_full(self, orgs):
        import threading

        import sqlalchemy as sa
        from structlog.testing import capture_logs

        from ingest.config import load_config
        from ingest.db import get_engine
        from ingest.people import refresh_after_commit

        hr, app = orgs
        run_both(hr, app)
        before = app.query("SELECT * FROM ingest.identity_accounts ORDER BY connector, account_id")
        engine = get_engine(app.url)
        cfg = load_config(app.config).config.identity
        sid = app.last_snapshot()["snapshot_id"]
        cancel = threading.Event()
        with engine.connect() as blocker:  # hold the people lock so the refresh waits inside its transaction
            blocker.execute(sa.text("SELECT pg_advisory_lock(hashtext('ingest:people'))"))
            threading.Timer(0.5, cancel.set).start()
            with capture_logs() as logs:
                assert refresh_after_commit(engine, cfg, sid, "app", cancel) is False
            blocker.execute(sa.text("SELECT pg_advisory_unlock(hashtext('ingest:people'))"))
            blocker.commit()
        assert [e["event"] for e in logs] == ["people_refresh_failed"]
        assert "canceling statement" in logs[0]["error"]
        assert app.query("SELECT * FROM ingest.identity_accounts ORDER BY connector, account_id") == before
        assert app.query("SELECT snapshot_id FROM ingest.people_state")[0]["snapshot_id"] is None
        # already cancelled: skipped; and the next refresh recomputes everything
        with capture_logs() as logs:
            assert refresh_after_commit(engine, cfg, sid, "app", cancel) is False
        assert [e["event"] for e in logs] == ["people_refresh_skipped"]
        with capture_logs() as logs:
            assert refresh_after_commit(engine, cfg, sid, "app") is True
        assert [e["scope"] for e in logs if e["event"] == "people_refreshed"] == ["all"]
