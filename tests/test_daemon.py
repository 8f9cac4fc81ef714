"""The daemon in-process against a real PostgreSQL: claims, catch-up, retries, limits, takeover, reload,
shutdown, /healthz, /metrics and what ``ingest status`` reads. (Real processes and signals:
tests/test_daemon_processes.py.)"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from typer.testing import CliRunner

from ingest.config import load_config
from ingest.connector import Connector
from ingest.daemon import Daemon
from ingest.db import get_engine, migrate
from ingest.http import HttpSettings, OffsetPaginator
from ingest.runner import run
from ingest.schedule import jitter_offset, previous_slot
from tests.servers.fake_api import FakeApi, Fault

# -- helpers ------------------------------------------------------------------------------------------------

def org(n: int = 3) -> dict[str, list[dict[str, Any]]]:
    return {"account": [{"account_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(n)],
            "entitlement": [{"entitlement_type": "group", "entitlement_id": "g1", "label": "G1"}],
            "assignment": [{"account_id": "u0", "entitlement_id": "g1"}]}


def past_daily(hours_ago: float = 2) -> str:
    """A daily schedule whose latest slot was ``hours_ago`` hours ago (the next one is a day later)."""
    t = datetime.now(UTC) - timedelta(hours=hours_ago)
    return f"{t.minute} {t.hour} * * *"


def file_connector(tmp_path: Path, name: str, data: dict | None = None, **settings: Any) -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    if data is not None:
        path.write_text(json.dumps(data))
    return {"type": "file", "settings": {"path": str(path), **settings}}


def write_config(tmp_path: Path, connectors: dict[str, Any], **daemon: Any) -> Path:
    cfg = {"timezone": "UTC",
           "daemon": {"jitter": 0, "listen": None, "lease_seconds": 2, "retries": 0, "grace_period": 1, **daemon},
           "connectors": connectors}
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with get_engine(url).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def execute(url: str, sql: str, **params: Any) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(sa.text(sql), params)


def wait_for(fn: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def snapshots(url: str, connector: str | None = None) -> list[dict[str, Any]]:
    where = "WHERE connector = :c" if connector else ""
    return query(url, f"SELECT * FROM ingest.snapshots {where} ORDER BY snapshot_id", c=connector)


def claims(url: str, connector: str | None = None) -> list[dict[str, Any]]:
    where = "WHERE connector = :c" if connector else ""
    return query(url, f"SELECT * FROM ingest.slot_claims {where} ORDER BY connector, scheduled_for", c=connector)


def events(logs: list[dict[str, Any]], name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in list(logs) if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def daemons(database_url):
    """Start daemons on the test database; every one is stopped at the end."""
    started: list[Daemon] = []

    def start(config: Path, **kw: Any) -> Daemon:
        d = Daemon(load_config(config), database_url, **kw)
        started.append(d)
        d.start()
        return d

    yield start
    for d in started:
        d.stop()


# -- a connector that speaks HTTP, for the http metrics ----------------------------------------------------

class ApiSettings(HttpSettings):
    base_url: str


class ApiConnector(Connector):
    type = "api_users"
    name = "Users over HTTP (tests)"
    Settings = ApiSettings

    def validate_credentials(self) -> dict[str, Any]:
        return {}

    def list_accounts(self):
        with self.ctx.http_client(self.settings.base_url) as client:
            for user in client.records("/users", paginator=OffsetPaginator(limit=2, total_path="total"),
                                       selector="items"):
                yield {"account_id": user["id"], "email": user["email"]}


# -- scheduling and claims ------------------------------------------------------------------------------------

class TestCatchUpAndClaims:
    def test_a_missed_slot_runs_once_at_start_and_is_recorded_on_the_snapshot(self, tmp_path, database_url,
                                                                               daemons):
        schedule = past_daily(2)
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org()), "schedule": schedule}})
        with capture_logs() as logs:
            d = daemons(cfg)
            wait_for(lambda: [c for c in claims(database_url) if c["status"] == "succeeded"], what="the catch-up")
        slot = previous_slot(schedule, "UTC", datetime.now(UTC))
        [snap] = snapshots(database_url, "acme")
        assert (snap["status"], snap["trigger"], snap["scheduled_for"]) == ("succeeded", "schedule", slot)
        [claim] = claims(database_url)
        assert (claim["scheduled_for"], claim["daemon_id"], claim["snapshot_id"], claim["attempts"]) == (
            slot, d.daemon_id, snap["snapshot_id"], 1)
        assert events(logs, "job_scheduled", connector="acme")[0]["schedule"] == schedule
        assert events(logs, "catch_up_scheduled", connector="acme")
        assert events(logs, "slot_claimed", connector="acme", via="catch_up")
        assert events(logs, "run_finished", connector="acme", status="succeeded")
        # the next run is tomorrow's slot, published for `ingest status`
        wait_for(lambda: datetime.fromisoformat(query(database_url, "SELECT next_runs FROM ingest.daemons")[0][
            "next_runs"]["acme"]) == slot + timedelta(days=1), timeout=5, what="the published plan")

    def test_a_recent_success_means_no_catch_up(self, tmp_path, database_url, daemons):
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org()), "schedule": past_daily(2)}})
        assert run(load_config(cfg), "acme", database_url=database_url).ok  # a manual run an hour ago
        with capture_logs() as logs:
            daemons(cfg)
            time.sleep(1.5)
        assert len(snapshots(database_url, "acme")) == 1
        assert claims(database_url) == []
        assert not events(logs, "catch_up_scheduled")

    def test_three_daemons_run_each_connectors_slot_exactly_once(self, tmp_path, database_url, daemons):
        names = [f"c{i}" for i in range(8)]
        cfg = write_config(tmp_path, {n: {**file_connector(tmp_path, n, org(), sleep=0.05), "schedule": past_daily(3)}
                                      for n in names}, max_concurrent_runs=2)
        with capture_logs() as logs:
            for _ in range(3):
                daemons(cfg)
            wait_for(lambda: len([c for c in claims(database_url) if c["status"] == "succeeded"]) == len(names),
                     what="every slot")
            time.sleep(0.5)
        per_connector = {n: [s["status"] for s in snapshots(database_url, n)] for n in names}
        assert per_connector == {n: ["succeeded"] for n in names}
        assert len(claims(database_url)) == len(names)
        assert len(events(logs, "slot_claimed")) == len(names)
        assert len(events(logs, "run_finished")) == len(names)
        assert len({e["daemon_id"] for e in events(logs, "slot_claimed")}) >= 2  # the work was shared

    def test_a_stale_claim_of_an_older_slot_is_abandoned_not_run(self, tmp_path, database_url, daemons):
        schedule = past_daily(2)
        slot = previous_slot(schedule, "UTC", datetime.now(UTC))
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org()), "schedule": schedule}})
        assert run(load_config(cfg), "acme", database_url=database_url).ok
        migrate(get_engine(database_url))
        execute(database_url, """INSERT INTO ingest.slot_claims (connector, scheduled_for, daemon_id, lease_until)
                                 VALUES ('acme', :s, 'dead-daemon', now() - interval '1 minute')""",
                s=slot - timedelta(days=1))
        with capture_logs() as logs:
            daemons(cfg)
            wait_for(lambda: events(logs, "slot_abandoned"), what="the abandon")
        assert [c["status"] for c in claims(database_url)] == ["abandoned"]
        assert len(snapshots(database_url, "acme")) == 1


class TestFailurePolicy:
    def test_a_failed_run_is_retried_with_doubling_backoff_then_recorded_failed(self, tmp_path, database_url,
                                                                               daemons):
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org(), fail_in="account"),
                                               "schedule": past_daily(2)}}, retries=2, retry_backoff=0.3)
        with capture_logs() as logs:
            daemons(cfg)
            wait_for(lambda: [c for c in claims(database_url) if c["status"] == "failed"], what="the retries")
        snaps = snapshots(database_url, "acme")
        assert [s["status"] for s in snaps] == ["failed"] * 3
        assert len({s["scheduled_for"] for s in snaps}) == 1
        assert "injected failure" in snaps[0]["error"]
        assert [e["delay_s"] for e in events(logs, "run_retry_scheduled")] == [0.3, 0.6]
        assert events(logs, "retries_exhausted", attempts=3)
        gaps = [(b["started_at"] - a["finished_at"]).total_seconds() for a, b in itertools.pairwise(snaps)]
        assert gaps[0] >= 0.25 and gaps[1] >= 0.55
        [claim] = claims(database_url)
        assert (claim["attempts"], claim["snapshot_id"]) == (3, snaps[-1]["snapshot_id"])

    def test_a_retry_that_succeeds_closes_the_slot_as_succeeded(self, tmp_path, database_url, daemons):
        conn = file_connector(tmp_path, "acme")  # no data file yet: the first attempt fails
        cfg = write_config(tmp_path, {"acme": {**conn, "schedule": past_daily(2)}}, retries=3, retry_backoff=0.5)
        with capture_logs() as logs:
            daemons(cfg)
            wait_for(lambda: events(logs, "run_retry_scheduled"), what="the first failure")
            Path(conn["settings"]["path"]).write_text(json.dumps(org()))
            wait_for(lambda: [c for c in claims(database_url) if c["status"] == "succeeded"], what="the retry")
        assert [s["status"] for s in snapshots(database_url, "acme")] == ["failed", "succeeded"]
        assert claims(database_url)[0]["attempts"] == 2

    def test_a_timeout_aborts_the_run_as_failed_and_nothing_partial_is_visible(self, tmp_path, database_url,
                                                                              daemons):
        cfg0 = write_config(tmp_path, {"acme": file_connector(tmp_path, "acme", org(2))})
        first = run(load_config(cfg0), "acme", database_url=database_url)
        execute(database_url, "UPDATE ingest.snapshots SET finished_at = now() - interval '2 days'")
        (tmp_path / "acme.json").write_text(json.dumps(org(20)))
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", sleep=0.1), "timeout": 0.8,
                                               "schedule": past_daily(2)}})
        daemons(cfg)
        wait_for(lambda: [c for c in claims(database_url) if c["status"] == "failed"], what="the timeout")
        last = snapshots(database_url, "acme")[-1]
        assert last["status"] == "failed" and "timed out after 0.8 s" in last["error"]
        assert (last["finished_at"] - last["started_at"]).total_seconds() < 1.6  # the source needs 2 s
        accounts = query(database_url, "SELECT account_id FROM ingest.accounts ORDER BY account_id")
        assert [a["account_id"] for a in accounts] == ["u0", "u1"]  # the previous snapshot's state
        assert query(database_url, "SELECT count(*) AS n FROM ingest.accounts_history WHERE valid_from = :s",
                     s=last["snapshot_id"])[0]["n"] == 0
        assert first.ok

    def test_status_reports_a_connector_failing_after_n_days_and_it_keeps_being_tried(self, tmp_path,
                                                                                     database_url, daemons):
        slot = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org(), fail_in="account"),
                                               "schedule": f"{slot.minute} {slot.hour} * * *"}},
                           failing_after_days=3)
        loaded = load_config(cfg)
        for days_ago in (2, 1):  # the two slots before today's failed (slots, not "now": near midnight they differ)
            r = run(loaded, "acme", database_url=database_url, trigger="schedule",
                    scheduled_for=slot - timedelta(days=days_ago))
            assert r.status == "failed"
        execute(database_url, "UPDATE ingest.snapshots SET finished_at = scheduled_for, started_at = scheduled_for")

        def status() -> dict[str, Any]:
            res = CliRunner().invoke(__import__("ingest.cli", fromlist=["app"]).app,
                                     ["--config", str(cfg), "--database-url", database_url, "status", "--json"])
            assert res.exit_code == 0, res.output
            return json.loads(res.stdout)[0]

        assert (status()["failing"], status()["failed_days"]) == (False, 2)
        daemons(cfg)  # today's slot is tried anyway, and fails: the third day
        wait_for(lambda: [c for c in claims(database_url) if c["status"] == "failed"], what="today's run")
        st = status()
        assert (st["failing"], st["failed_days"], st["consecutive_failures"]) == (True, 3, 3)


class TestLimits:
    def test_no_more_than_max_concurrent_runs_at_once(self, tmp_path, database_url, daemons):
        names = [f"c{i}" for i in range(5)]
        cfg = write_config(tmp_path, {n: {**file_connector(tmp_path, n, org(), sleep=0.15), "schedule": past_daily(2)}
                                      for n in names}, max_concurrent_runs=2)
        daemons(cfg)
        wait_for(lambda: len([c for c in claims(database_url) if c["status"] == "succeeded"]) == 5, what="all runs")
        snaps = snapshots(database_url)
        assert len(snaps) == 5
        edges = sorted([(s["started_at"], 1) for s in snaps] + [(s["finished_at"], -1) for s in snaps])
        running, most = 0, 0
        for _, step in edges:
            running += step
            most = max(most, running)
        assert most == 2

    def test_a_slot_firing_while_the_connector_runs_elsewhere_waits_and_runs_once(self, tmp_path, database_url,
                                                                                    daemons):
        """Never two runs at once: the claim is released and taken up again when the other run ends."""
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org(), sleep=0.6),
                                               "schedule": past_daily(2)}}, lease_seconds=1)
        migrate(get_engine(database_url))
        manual = threading.Thread(target=run, args=(load_config(cfg), "acme"), kwargs={"database_url": database_url})
        manual.start()
        wait_for(lambda: snapshots(database_url, "acme"), what="the manual run")
        with capture_logs() as logs:
            daemons(cfg)
            manual.join()
            wait_for(lambda: [c for c in claims(database_url) if c["status"] == "succeeded"], what="the slot")
        snaps = snapshots(database_url, "acme")
        assert [(s["trigger"], s["status"]) for s in snaps] == [("manual", "succeeded"), ("schedule", "succeeded")]
        assert snaps[1]["started_at"] >= snaps[0]["finished_at"]
        assert events(logs, "run_skipped_already_running", connector="acme")
        assert events(logs, "slot_resumed", connector="acme")


class TestTakeover:
    def test_a_claim_whose_lease_expired_is_taken_over_and_the_dead_run_marked_interrupted(
            self, tmp_path, database_url, daemons):
        schedule = past_daily(2)
        slot = previous_slot(schedule, "UTC", datetime.now(UTC))
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org()), "schedule": schedule}})
        migrate(get_engine(database_url))
        # what a daemon killed mid-run leaves: its claim (lease running out) and a `running` snapshot
        execute(database_url, """
            INSERT INTO ingest.snapshots (connector, connector_type, trigger, scheduled_for, status)
            VALUES ('acme', 'file', 'schedule', :s, 'running')""", s=slot)
        execute(database_url, """
            INSERT INTO ingest.slot_claims (connector, scheduled_for, daemon_id, lease_until, attempts, snapshot_id)
            VALUES ('acme', :s, 'dead-daemon', now() + interval '1 second', 1, 1)""", s=slot)
        with capture_logs() as logs:
            daemons(cfg)
            wait_for(lambda: [c for c in claims(database_url) if c["status"] == "succeeded"], what="the takeover")
        snaps = snapshots(database_url, "acme")
        assert [(s["status"], s["scheduled_for"]) for s in snaps] == [("interrupted", slot), ("succeeded", slot)]
        [claim] = claims(database_url)
        assert (claim["takeovers"], claim["attempts"], claim["snapshot_id"]) == (1, 2, snaps[1]["snapshot_id"])
        [e] = events(logs, "lease_expired_takeover")
        assert (e["previous_daemon"], e["connector"]) == ("dead-daemon", "acme")


class TestReload:
    def test_added_removed_and_rescheduled_connectors_take_effect_and_a_broken_file_is_ignored(
            self, tmp_path, database_url, daemons):
        future = "0 0 1 1 *"
        cfg = write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": future},
                                      "b": {**file_connector(tmp_path, "b", org()), "schedule": future}})
        d = daemons(cfg)
        before = d.planned()
        assert set(before) == {"a", "b"}
        write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": "0 0 1 2 *"},
                                "c": {**file_connector(tmp_path, "c", org()), "schedule": past_daily(2)}})
        with capture_logs() as logs:
            assert d.reload()
            wait_for(lambda: [c for c in claims(database_url, "c") if c["status"] == "succeeded"], what="c's run")
        [e] = events(logs, "config_reloaded")
        assert (e["added"], e["removed"], e["rescheduled"]) == (["c"], ["b"], ["a"])
        planned = d.planned()
        assert set(planned) == {"a", "c"} and planned["a"].month == 2
        cfg.write_text("connectors: {a: {type: file, settings: {path: 1}, unknown_key: 2}}")
        with capture_logs() as logs:
            assert not d.reload()
        [e] = events(logs, "config_reload_failed")
        assert "unknown_key" in e["error"] and e["log_level"] == "error"
        assert set(d.planned()) == {"a", "c"} and d.loaded.connectors["a"].schedule == "0 0 1 2 *"


class TestShutdown:
    def test_runs_finishing_within_the_grace_period_succeed_the_rest_are_interrupted(self, tmp_path,
                                                                                     database_url):
        cfg = write_config(tmp_path, {
            "quick": {**file_connector(tmp_path, "quick", org(), sleep=0.2), "schedule": past_daily(2)},
            "slow": {**file_connector(tmp_path, "slow", org(50), sleep=0.5), "schedule": past_daily(2)}},
            grace_period=6)  # quick needs ~1.5 s, slow ~25 s: generous, so a loaded machine still finishes quick
        d = Daemon(load_config(cfg), database_url)
        d.start()
        try:
            wait_for(lambda: len(d.active_runs()) == 2, what="both runs")
        finally:
            t0 = time.monotonic()
            assert d.stop()
        assert 5.9 < time.monotonic() - t0 < 20  # the grace period, then slow is cancelled promptly
        status = {s["connector"]: s["status"] for s in snapshots(database_url)}
        assert status == {"quick": "succeeded", "slow": "interrupted"}
        assert query(database_url, "SELECT count(*) AS n FROM ingest.accounts WHERE connector = 'slow'")[0]["n"] == 0
        by = {c["connector"]: c for c in claims(database_url)}
        assert by["quick"]["status"] == "succeeded"
        assert by["slow"]["status"] == "released"  # another daemon (or this one, restarted) finishes the slot
        [row] = query(database_url, "SELECT * FROM ingest.daemons")
        assert row["stopped_at"] is not None and row["next_runs"] == {}


class TestStatus:
    def test_status_shows_the_next_run_the_daemon_planned(self, tmp_path, database_url, daemons, monkeypatch):
        """A retry planned an hour from now is the next run, which schedule arithmetic alone cannot know."""
        from ingest.cli import app

        schedule = past_daily(2)
        cfg = write_config(tmp_path, {"acme": {**file_connector(tmp_path, "acme", org(), fail_in="account"),
                                               "schedule": schedule}}, retries=1, retry_backoff=3600, jitter=600)
        d = daemons(cfg)
        wait_for(lambda: [c for c in claims(database_url) if c["status"] == "waiting_retry"], what="the retry")
        retry_at = datetime.now(UTC) + timedelta(hours=1)

        def next_run() -> datetime:
            res = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", database_url, "status", "--json"])
            assert res.exit_code == 0, res.output
            return datetime.fromisoformat(json.loads(res.stdout)[0]["next_run"])

        wait_for(lambda: abs((next_run() - retry_at).total_seconds()) < 10, timeout=5, what="the retry in status")
        # without a live daemon: the schedule's next slot plus the connector's jitter (stopped first, so
        # its heartbeat cannot renew what the UPDATE ages)
        d.stop()
        execute(database_url, "UPDATE ingest.daemons SET heartbeat_at = now() - interval '1 hour'")
        nxt = next_run()
        slot = previous_slot(schedule, "UTC", datetime.now(UTC)) + timedelta(days=1)
        assert nxt == slot + timedelta(seconds=jitter_offset("acme", 600))


class TestHttp:
    def test_healthz_answers_200_when_alive_and_503_when_the_database_is_unreachable(self, tmp_path,
                                                                                    database_url, daemons):
        cfg = write_config(tmp_path, {}, listen="127.0.0.1:0")
        d = daemons(cfg)
        code, body = get(f"http://127.0.0.1:{d.http.port}/healthz")
        health = json.loads(body)
        assert code == 200 and health["ok"] and health["database"] and health["scheduler"]
        good = d.claims.engine
        d.claims.engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                           connect_args={"connect_timeout": 2})
        try:
            code, body = get(f"http://127.0.0.1:{d.http.port}/healthz")
        finally:
            d.claims.engine = good
        assert code == 503 and json.loads(body)["database"] is False
        assert get(f"http://127.0.0.1:{d.http.port}/nope")[0] == 404

    def test_metrics_report_the_last_run_of_each_connector(self, tmp_path, database_url, daemons, monkeypatch):
        from ingest import registry

        monkeypatch.setitem(registry.BUILTIN, "api_users", "tests.test_daemon:ApiConnector")
        users = [{"id": f"u{i}", "email": f"u{i}@example.com"} for i in range(5)]
        schedule = past_daily(2)
        with FakeApi() as api:
            api.serve_records("/users", users, style="offset", page_size=2)
            api.script([None, Fault.rate_limited(retry_after=0.01)])
            cfg = write_config(tmp_path, {
                "api": {"type": "api_users", "schedule": schedule,
                        "settings": {"base_url": api.url("/"), "backoff_initial": 0.01, "max_retry_after": 0.05}},
                "broken": {**file_connector(tmp_path, "broken", org(), fail_in="account"), "schedule": past_daily(2)},
            }, listen="127.0.0.1:0")
            d = daemons(cfg)
            wait_for(lambda: len([c for c in claims(database_url) if c["status"] in ("succeeded", "failed")]) == 2,
                     what="both runs")
            n_requests = len(api.requests)
        code, body = get(f"http://127.0.0.1:{d.http.port}/metrics")
        assert code == 200
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}

        def m(name: str, **labels: str) -> float:
            return samples[(name, tuple(sorted(labels.items())))]

        snap = {s["connector"]: s for s in snapshots(database_url)}
        assert m("ingest_database_up") == 1
        assert m("ingest_connector_last_run_status", connector="api", status="succeeded") == 1
        assert m("ingest_connector_last_run_status", connector="api", status="failed") == 0
        assert m("ingest_connector_last_run_status", connector="broken", status="failed") == 1
        assert m("ingest_connector_last_success_timestamp_seconds", connector="api") == pytest.approx(
            snap["api"]["finished_at"].timestamp())
        assert ("ingest_connector_last_success_timestamp_seconds", (("connector", "broken"),)) not in samples
        assert m("ingest_connector_last_run_duration_seconds", connector="api") == snap["api"]["stats"]["duration_s"]
        assert m("ingest_connector_last_run_records", connector="api", entity="account", kind="fetched") == 5
        assert m("ingest_connector_last_run_records", connector="api", entity="account", kind="added") == 5
        assert m("ingest_connector_last_run_http_requests", connector="api") == n_requests == 4  # 3 pages + 1 retry
        assert m("ingest_connector_last_run_http_retries", connector="api") == 1
        assert m("ingest_connector_last_run_http_throttled", connector="api") == 1
        assert m("ingest_connector_consecutive_failures", connector="broken") == 1
        assert m("ingest_connector_consecutive_failures", connector="api") == 0
        assert m("ingest_connector_failing", connector="broken") == 0
        assert m("ingest_daemon_runs_total", connector="api", status="succeeded") == 1
        assert m("ingest_daemon_http_throttled_total", connector="api") == 1
        assert m("ingest_daemon_slots_claimed_total", connector="broken") == 1
        assert m("ingest_connector_next_run_timestamp_seconds", connector="api") == pytest.approx(
            (previous_slot(schedule, "UTC", datetime.now(UTC)) + timedelta(days=1)).timestamp())
        assert m("ingest_daemon_active_runs") == 0
