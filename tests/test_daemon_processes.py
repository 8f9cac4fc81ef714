"""Real ``ingest daemon`` processes against one real PostgreSQL: several daemons per database, kill -9
mid-run, SIGTERM, SIGHUP and --watch-config. The measured figures are printed (``pytest -s``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ingest.config import load_config
from ingest.runner import run
from ingest.schedule import previous_slot
from tests.test_daemon import (
    claims,
    execute,
    file_connector,
    get,
    org,
    past_daily,
    query,
    snapshots,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
# the test-only `file` connector type, registered in the child before the CLI starts
ENTRY = ("from ingest import registry; registry.BUILTIN['file'] = 'tests.fakes:FileConnector'; "
         "from ingest.cli import main; main()")


class DaemonProcess:
    """``ingest daemon`` in a child process; its JSON log events are collected as they arrive."""

    def __init__(self, config: Path, database_url: str, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENTRY, "--config", str(config), "--database-url", database_url,
             "--log-format", "json", "daemon", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def find(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == name
                and all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, name: str, timeout: float = 60, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(name, **match)
            if found:
                return found[0]
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {name} {match} within {timeout} s; exit={self.proc.poll()}; log tail:\n"
                             + "".join(self.raw[-30:]))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


@pytest.fixture
def spawn(database_url):
    """Start daemon processes; every one is killed at the end, whatever happened."""
    procs: list[DaemonProcess] = []

    def start(config: Path, *args: str) -> DaemonProcess:
        p = DaemonProcess(config, database_url, *args)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.stop()


def at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["timestamp"])


def wait_db(fn, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_two_daemons_run_every_connector_exactly_once_per_minute_slot(tmp_path, database_url, spawn):
    names = ["alpha", "beta", "gamma"]
    cfg = write_config(tmp_path, {n: {**file_connector(tmp_path, n, org(), sleep=0.3), "schedule": "* * * * *"}
                                  for n in names}, lease_seconds=5, max_concurrent_runs=2)
    daemons = [spawn(cfg), spawn(cfg)]
    for d in daemons:
        d.wait_event("daemon_started")
    first_full = previous_slot("* * * * *", "UTC", datetime.now(UTC)) + timedelta(minutes=1)
    last = first_full + timedelta(minutes=1)  # two whole minute slots after both daemons were up

    def last_done() -> bool:
        done = [c for c in claims(database_url) if c["scheduled_for"] == last and c["status"] == "succeeded"]
        return len(done) == len(names)

    wait_db(last_done, timeout=(last - datetime.now(UTC)).total_seconds() + 30, what="the last slot")
    for d in daemons:
        d.signal(signal.SIGTERM)
    assert [d.wait(timeout=20) for d in daemons] == [0, 0]

    snaps = snapshots(database_url)
    per_slot: dict[tuple[str, datetime], list[str]] = {}
    for s in snaps:
        per_slot.setdefault((s["connector"], s["scheduled_for"]), []).append(s["status"])
    slots = sorted({slot for _, slot in per_slot})
    duplicates = sum(len(v) - 1 for v in per_slot.values())
    # every minute from the first slot run to the last, every connector, once, succeeded
    expected = [slots[0] + timedelta(minutes=i) for i in range(len(slots))]
    assert slots == expected and slots[-1] == last and len(slots) >= 2
    assert per_slot == {(n, s): ["succeeded"] for n in names for s in slots}
    assert all(s["trigger"] == "schedule" for s in snaps)
    assert len(claims(database_url)) == len(names) * len(slots)
    claimed_by = {d.pid: len(d.find("slot_claimed")) for d in daemons}
    skipped = sum(len(d.find("slot_skipped_already_claimed")) for d in daemons)
    assert sum(claimed_by.values()) == len(names) * len(slots)
    assert skipped >= len(names) * (len(slots) - 1)  # on each scheduled minute the other daemon lost the race
    print(f"\n[multi-daemon] slots={len(slots)} connectors={len(names)} runs={len(snaps)} duplicates={duplicates} "
          f"claims_per_daemon={list(claimed_by.values())} skipped_already_claimed={skipped}")


def test_a_daemon_killed_mid_run_loses_its_lease_and_another_finishes_the_slot(tmp_path, database_url, spawn):
    schedule = past_daily(2)
    slot = previous_slot(schedule, "UTC", datetime.now(UTC))
    cfg = write_config(tmp_path, {"slow": {**file_connector(tmp_path, "slow", org(20), sleep=0.25),
                                           "schedule": schedule}}, lease_seconds=4)
    a, b = spawn(cfg), spawn(cfg)
    deadline = time.monotonic() + 30
    while not (a.find("run_started") or b.find("run_started")):
        assert time.monotonic() < deadline, "no daemon started the run"
        time.sleep(0.05)
    victim, survivor = (a, b) if a.find("run_started") else (b, a)
    survivor.wait_event("daemon_started")
    wait_db(lambda: [s for s in snapshots(database_url) if s["status"] == "running"], 10, "the running snapshot")
    time.sleep(0.5)  # mid-run
    victim.proc.kill()  # SIGKILL: no shutdown, no cleanup; its connection (and run lock) drop
    killed_at = datetime.now(UTC)
    assert victim.wait(timeout=10) == -signal.SIGKILL

    takeover = survivor.wait_event("lease_expired_takeover", timeout=30, connector="slow")
    finished = survivor.wait_event("run_finished", timeout=30, connector="slow")
    assert finished["status"] == "succeeded"
    snaps = snapshots(database_url, "slow")
    assert [(s["status"], s["scheduled_for"], s["pid"]) for s in snaps] == [
        ("interrupted", slot, victim.pid), ("succeeded", slot, survivor.pid)]
    # the claim is closed just after the snapshot commits and run_finished is logged: wait for it
    [claim] = wait_db(lambda: [c for c in claims(database_url) if c["status"] != "claimed"], 30, "the closed claim")
    assert (claim["status"], claim["takeovers"], claim["snapshot_id"]) == ("succeeded", 1, snaps[1]["snapshot_id"])
    assert claim["daemon_id"] == takeover["daemon_id"] != takeover["previous_daemon"]
    assert query(database_url, "SELECT count(*) AS n FROM ingest.accounts")[0]["n"] == 20
    recovered = (at(takeover) - killed_at).total_seconds()
    completed = (at(finished) - killed_at).total_seconds()
    assert recovered < 4 + 2 + 2  # lease + sweep interval + slack
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(timeout=20) == 0
    print(f"\n[kill -9] slots=1 runs={len(snaps)} (1 interrupted, 1 succeeded) duplicates=0 "
          f"lease=4s takeover_after={recovered:.1f}s slot_completed_after={completed:.1f}s")


def test_sigterm_lets_quick_runs_finish_interrupts_the_rest_and_exits_0(tmp_path, database_url, spawn):
    schedule = past_daily(2)
    slow = file_connector(tmp_path, "slow", org(5))
    assert run(load_config(write_config(tmp_path, {"slow": slow})), "slow", database_url=database_url).ok
    execute(database_url, "UPDATE ingest.snapshots SET finished_at = now() - interval '2 days'")
    accounts = "SELECT account_id FROM ingest.accounts WHERE connector = 'slow' ORDER BY account_id"
    before = query(database_url, accounts)
    assert len(before) == 5
    (tmp_path / "slow.json").write_text(json.dumps(org(40)))
    cfg = write_config(tmp_path, {
        "quick": {**file_connector(tmp_path, "quick", org(), sleep=0.2), "schedule": schedule},
        "slow": {**slow, "settings": {**slow["settings"], "sleep": 0.5}, "schedule": schedule}}, grace_period=6)
    d = spawn(cfg)
    d.wait_event("run_started", connector="quick")
    d.wait_event("run_started", connector="slow")
    time.sleep(0.3)
    d.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert d.wait(timeout=20) == 0
    took = time.monotonic() - t0
    # the grace period is waited out (quick needs ~1.5 s, slow ~20 s), then slow is cancelled promptly;
    # the grace is generous so that quick finishes within it even on a loaded machine
    assert 5.5 < took < 20
    status = {s["connector"]: s["status"] for s in snapshots(database_url) if s["trigger"] == "schedule"}
    assert status == {"quick": "succeeded", "slow": "interrupted"}
    assert query(database_url, accounts) == before  # the interrupted run left nothing behind
    assert d.find("shutdown_started") and d.find("shutdown_cancelling_runs", connectors=["slow"])
    assert d.find("shutdown_finished", stuck_runs=[])
    assert {c["connector"]: c["status"] for c in claims(database_url)} == {"quick": "succeeded", "slow": "released"}


def test_sighup_reloads_a_changed_config_and_keeps_the_running_one_when_the_new_is_broken(
        tmp_path, database_url, spawn):
    from ingest.cli import app

    future = "0 0 1 1 *"
    cfg = write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": future}},
                       listen="127.0.0.1:0")
    d = spawn(cfg)
    port = d.wait_event("http_listening")["port"]
    d.wait_event("daemon_started")
    write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": "0 0 1 2 *"},
                            "b": {**file_connector(tmp_path, "b", org()), "schedule": past_daily(2)}},
                 listen="127.0.0.1:0")
    d.signal(signal.SIGHUP)
    reloaded = d.wait_event("config_reloaded")
    assert (reloaded["reason"], reloaded["added"], reloaded["rescheduled"]) == ("SIGHUP", ["b"], ["a"])
    d.wait_event("run_finished", connector="b", status="succeeded")

    def status() -> dict[str, Any]:
        res = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", database_url, "status", "--json"])
        assert res.exit_code == 0, res.output
        return {it["connector"]: it for it in json.loads(res.stdout)}

    wait_db(lambda: (status()["a"]["next_run"] or "")[5:10] == "02-01", 5, "a's new schedule in status")
    cfg.write_text("connectors:\n  a: {type: file, settings: {path: [unclosed\n")
    d.signal(signal.SIGHUP)
    failed = d.wait_event("config_reload_failed")
    assert "not valid YAML" in failed["error"] and failed["level"] == "error"
    code, body = get(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and json.loads(body)["ok"]
    [row] = query(database_url, "SELECT next_runs FROM ingest.daemons WHERE stopped_at IS NULL")
    assert set(row["next_runs"]) == {"a", "b"}
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=20) == 0


def test_watch_config_reloads_when_the_file_changes(tmp_path, database_url, spawn):
    cfg = write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": "0 0 1 1 *"}})
    d = spawn(cfg, "--watch-config")
    d.wait_event("daemon_started")
    write_config(tmp_path, {"a": {**file_connector(tmp_path, "a", org()), "schedule": "0 0 1 1 *"},
                            "c": {**file_connector(tmp_path, "c", org()), "schedule": past_daily(2)}})
    reloaded = d.wait_event("config_reloaded", timeout=10)
    assert (reloaded["reason"], reloaded["added"], reloaded["removed"]) == ("file changed", ["c"], [])
    d.wait_event("run_finished", connector="c", status="succeeded")
    d.signal(signal.SIGINT)
    assert d.wait(timeout=20) == 0


def test_placement_labelled_and_unlabelled_daemons_each_run_their_connectors_exactly_once(
        tmp_path, database_url, spawn, monkeypatch):
    """runs_on places a connector on the daemons with one of its labels; unplaced ones run on unlabelled daemons."""
    from ingest import cli as ingest_cli
    from ingest.cli import app

    schedule = past_daily(2)  # the last slot was missed: every daemon tries to catch it up at once
    conns = {"hq": {}, "berlin": {"runs_on": ["dmz-berlin"]}, "either": {"runs_on": ["dmz-berlin", "dmz-paris"]},
             "nowhere": {"runs_on": ["dmz-tokyo"]}}
    cfg = write_config(tmp_path, {n: {**file_connector(tmp_path, n, org(), sleep=0.2), "schedule": schedule, **extra}
                                  for n, extra in conns.items()}, lease_seconds=4)
    plain = [spawn(cfg), spawn(cfg)]
    berlin, paris = spawn(cfg, "--label", "dmz-berlin"), spawn(cfg, "-l", "dmz-paris")
    by_pid = {d.pid: d for d in (*plain, berlin, paris)}
    for d in by_pid.values():
        d.wait_event("daemon_started")
    wait_db(lambda: len([s for s in snapshots(database_url) if s["status"] == "succeeded"]) == 3, 30, "three runs")
    # a claim is closed just after its snapshot commits: wait for all three, not for a fixed time
    wait_db(lambda: len([c for c in claims(database_url) if c["status"] == "succeeded"]) == 3, 30, "three closed claims")
    time.sleep(1.0)  # a duplicate run, if placement or claims were wrong, would show up now

    ran = {}
    for s in snapshots(database_url):
        ran.setdefault(s["connector"], []).append((s["status"], s["pid"]))
    assert set(ran) == {"hq", "berlin", "either"}  # nobody carries dmz-tokyo
    assert all(len(v) == 1 and v[0][0] == "succeeded" for v in ran.values()), ran
    assert by_pid[ran["hq"][0][1]] in plain
    assert by_pid[ran["berlin"][0][1]] is berlin
    assert by_pid[ran["either"][0][1]] in (berlin, paris)
    assert {c["connector"]: c["status"] for c in claims(database_url)} == {
        "hq": "succeeded", "berlin": "succeeded", "either": "succeeded"}
    assert berlin.find("daemon_started")[0]["placed_elsewhere"] == ["hq", "nowhere"]
    assert paris.find("daemon_started")[0]["placed_elsewhere"] == ["berlin", "hq", "nowhere"]

    res = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", database_url, "status", "--json"])
    assert res.exit_code == 0, res.output
    where = {it["connector"]: it for it in json.loads(res.stdout)}
    assert where["berlin"]["runs_on"] == ["dmz-berlin"] and where["hq"]["runs_on"] == []
    assert {d.split(":")[1] for d in where["berlin"]["daemons"]} == {str(berlin.pid)}
    assert {d.split(":")[1] for d in where["hq"]["daemons"]} == {str(d.pid) for d in plain}
    assert {d.split(":")[1] for d in where["either"]["daemons"]} == {str(berlin.pid), str(paris.pid)}
    assert where["nowhere"]["daemons"] == []
    # a wide table, so the row fits on one line (COLUMNS alone was not enough in a pytest-xdist worker: the CLI
    # console is built at import and rich had fixed its width to 80 there)
    monkeypatch.setattr(ingest_cli.out, "_width", 250)
    res = CliRunner().invoke(app, ["--config", str(cfg), "--database-url", database_url, "status"],
                             env={"COLUMNS": "250"})
    line = next(x for x in res.stdout.splitlines() if "nowhere" in x)
    assert "dmz-tokyo" in line
    for d in by_pid.values():
        d.signal(signal.SIGTERM)
    assert [d.wait(timeout=20) for d in by_pid.values()] == [0, 0, 0, 0]


def test_daemon_label_must_be_a_plain_name(tmp_path):
    from ingest.cli import app

    cfg = write_config(tmp_path, {})
    res = CliRunner().invoke(app, ["--config", str(cfg), "daemon", "--label", "dmz berlin"])
    assert res.exit_code == 2
    assert "dmz berlin" in res.output and "--label" in res.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_daemons_with_one_config_both_keep_running_when_the_metrics_port_is_taken(tmp_path, database_url, spawn):
    """High availability from one config: the second daemon cannot bind daemon.listen, says so and schedules."""
    port = _free_port()
    schedule = past_daily(2)  # never run: each daemon catches its connector up at once
    cfg = write_config(tmp_path, {"hq": {**file_connector(tmp_path, "hq", org()), "schedule": schedule},
                                  "edge": {**file_connector(tmp_path, "edge", org()), "schedule": schedule,
                                           "runs_on": ["edge"]}},
                       listen=f"127.0.0.1:{port}")
    first = spawn(cfg)
    assert first.wait_event("http_listening")["port"] == port
    first.wait_event("daemon_started")
    second = spawn(cfg, "--label", "edge")  # one config; placement only tells which daemon ran what
    failed = second.wait_event("metrics_listen_failed")
    assert failed["level"] == "error" and failed["listen"] == f"127.0.0.1:{port}" and "--listen" in failed["hint"]
    second.wait_event("daemon_started")
    wait_db(lambda: {s["connector"] for s in snapshots(database_url) if s["status"] == "succeeded"} == {"hq", "edge"},
            timeout=60, what="both connectors' runs")
    assert first.proc.poll() is None and second.proc.poll() is None, "both daemons keep running"
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    for d in (first, second):
        d.signal(signal.SIGTERM)
    assert [first.wait(timeout=20), second.wait(timeout=20)] == [0, 0]


def test_listen_on_the_command_line_overrides_the_config(tmp_path, database_url, spawn):
    port = _free_port()
    cfg = write_config(tmp_path, {"hq": {**file_connector(tmp_path, "hq", org()), "schedule": "0 3 * * *"}},
                       listen=None)
    d = spawn(cfg, "--listen", f"127.0.0.1:{port}")
    assert d.wait_event("http_listening")["port"] == port
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and b"ingest_" in body
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=20) == 0
