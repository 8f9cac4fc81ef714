"""Early merges (issue 13): an entity whose stream is done is merged while later streams stage, in the
transaction the commit finishes. What commits is what the one-transaction commit commits; nothing is
visible before the commit; a failed, stopped or taken-over run commits nothing and leaves no
transaction behind. A commit never waits for the bulk path's exclusive lock."""

from __future__ import annotations

import threading
import time
from concurrent.futures import wait
from typing import Any

import pytest
import sqlalchemy as sa

from ingest import writer as writer_module
from ingest.db import get_engine, migrate
from ingest.errors import SnapshotError
from ingest.writer import COMMIT_LOCK_NS, SnapshotWriter


def _snapshot(engine: sa.Engine, connector: str) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
            "VALUES (:c, 'demo', 'manual', 'running') RETURNING snapshot_id"), {"c": connector}).scalar_one()


def _finish(sid: int):
    def finish(conn: sa.Connection, stats: dict[str, Any]) -> None:
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'succeeded' WHERE snapshot_id = :sid"), {"sid": sid})
    return finish


def _accounts(n: int, changed: int = -1) -> list[dict[str, Any]]:
    return [{"account_id": f"u{i}", "email": f"u{i}@example.org", "display_name": f"User {i}" + (" *" if i == changed else ""),
             "extra": {"n": i}} for i in range(n)]


def _assignments(n: int, shift: int = 0) -> list[dict[str, Any]]:
    return [{"account_id": f"u{i}", "entitlement_id": f"g{(i + shift) % 3}"} for i in range(n)]


def _stage(engine: sa.Engine, connector: str, accounts: list[dict], assignments: list[dict], *,
           early: bool) -> SnapshotWriter:
    """Stage as the runner does: accounts, (early: merge them), then assignments."""
    w = SnapshotWriter(engine, connector, _snapshot(engine, connector), workers=0, early_min=1 if early else 10**9)
    w.stage("account", [accounts])
    w.merge_early(["account"])
    w.stage("assignment", [assignments])
    w.merge_early(["assignment"])
    return w


def _history(engine: sa.Engine, connector: str) -> list[tuple]:
    """Both histories of ``connector``, snapshot ids as days (1, 2, ...) so connectors compare."""
    with engine.connect() as conn:
        days = {sid: k + 1 for k, sid in enumerate(conn.execute(sa.text(
            "SELECT snapshot_id FROM ingest.snapshots WHERE connector = :c ORDER BY 1"), {"c": connector}).scalars())}
        rows = []
        for table, cols in (("accounts", "account_id, email, display_name, status, extra"),
                            ("assignments", "account_id, entitlement_id")):
            for r in conn.execute(sa.text(f"SELECT {cols}, valid_from, valid_to FROM ingest.{table}_history "
                                          "WHERE connector = :c"), {"c": connector}):
                rows.append((table, *r[:-2], days[r[-2]], days.get(r[-1])))
        return sorted(rows, key=repr)


def _open_transactions(engine: sa.Engine, connector: str) -> int:
    """Sessions holding this connector's commit lock (an open commit transaction)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns "
            "AND objid = (hashtext(:c)::bigint & 4294967295)::oid"), {"ns": COMMIT_LOCK_NS, "c": connector}).scalar_one()


def _wait_merged(w: SnapshotWriter) -> None:
    assert w._early is not None
    wait(w._early.futures, timeout=30)
    assert all(f.done() for f in w._early.futures)


@pytest.fixture
def engine(database_url: str) -> sa.Engine:
    e = get_engine(database_url)
    migrate(e)
    return e


def test_early_merges_commit_what_one_transaction_commits(engine):
    days = [(_accounts(300), _assignments(300)),
            (_accounts(280, changed=5) + [{"account_id": "new", "email": "n@example.org"}], _assignments(290, shift=1)),
            (_accounts(280, changed=5) + [{"account_id": "u3"}], _assignments(290, shift=1))]  # u3 twice
    all_stats = {}
    for connector, early in (("plain", False), ("early", True)):
        all_stats[connector] = []
        for accounts, assignments in days:
            w = _stage(engine, connector, accounts, assignments, early=early)
            stats = w.commit(finish=_finish(w.snapshot_id), allow_mass_delete=True)
            assert ("merged_early" in stats) is early
            if early:
                assert stats["merged_early"] == ["account", "assignment"]
                assert "account.lock" not in stats["merge_timings"]  # never the bulk path's lock while staging
            all_stats[connector].append({k: v for k, v in stats.items() if k not in ("merge_timings", "merged_early")})
            assert _open_transactions(engine, connector) == 0
    assert all_stats["early"] == all_stats["plain"]
    assert all_stats["early"][1]["account"]["removed"] == 20 and all_stats["early"][2]["account"]["duplicates"] == 1
    assert _history(engine, "early") == _history(engine, "plain")
    assert len(_history(engine, "early")) > 600


def test_nothing_is_visible_before_the_commit_and_a_failed_run_leaves_nothing(engine):
    w = _stage(engine, "acme", _accounts(50), _assignments(50), early=False)
    w.commit(finish=_finish(w.snapshot_id))
    before = _history(engine, "acme")

    w = SnapshotWriter(engine, "acme", _snapshot(engine, "acme"), workers=0, early_min=1)
    w.stage("account", [_accounts(40, changed=1)])
    w.merge_early(["account"])
    _wait_merged(w)
    assert _open_transactions(engine, "acme") == 1  # merged, in a transaction of its own, not committed
    assert _history(engine, "acme") == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ingest.accounts WHERE connector = 'acme'")).scalar() == 50
    w.stage("assignment", [_assignments(40)])
    w.discard()  # the run failed in a later stream
    assert _open_transactions(engine, "acme") == 0
    assert _history(engine, "acme") == before


def test_an_early_merge_that_fails_fails_the_commit(engine, monkeypatch):
    w = _stage(engine, "acme", _accounts(50), _assignments(50), early=False)
    w.commit(finish=_finish(w.snapshot_id))
    before = _history(engine, "acme")
    real = SnapshotWriter._merge

    def merge(self, conn, ent):
        if ent.name == "account":
            raise RuntimeError("the database went away")
        return real(self, conn, ent)

    monkeypatch.setattr(SnapshotWriter, "_merge", merge)
    w = SnapshotWriter(engine, "acme", _snapshot(engine, "acme"), workers=0, early_min=1)
    w.stage("account", [_accounts(40)])
    w.merge_early(["account"])
    w.stage("assignment", [_assignments(40)])
    w.merge_early(["assignment"])  # not merged after a failed one
    with pytest.raises(RuntimeError, match="went away"):
        w.commit(finish=_finish(w.snapshot_id))
    assert _open_transactions(engine, "acme") == 0
    assert _history(engine, "acme") == before


def test_a_snapshot_taken_over_while_it_merged_early_commits_nothing(engine):
    w = _stage(engine, "acme", _accounts(50), _assignments(50), early=False)
    w.commit(finish=_finish(w.snapshot_id))
    before = _history(engine, "acme")
    w = SnapshotWriter(engine, "acme", _snapshot(engine, "acme"), workers=0, early_min=1)
    w.stage("account", [_accounts(40)])
    w.merge_early(["account"])
    _wait_merged(w)
    with engine.begin() as conn:  # a newer run marked it interrupted (its lock was lost)
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'interrupted' WHERE snapshot_id = :s"),
                     {"s": w.snapshot_id})
    w.stage("assignment", [_assignments(40)])
    with pytest.raises(SnapshotError, match="no longer running"):
        w.commit(finish=_finish(w.snapshot_id))
    assert _open_transactions(engine, "acme") == 0
    assert _history(engine, "acme") == before


def test_a_newer_run_that_took_over_waits_for_the_early_transaction(engine):
    """A run that lost its lock still holds the connector's commit lock in its early transaction: the
    newer run's commit waits for it instead of writing the same versions at the same time."""
    stale = SnapshotWriter(engine, "acme", _snapshot(engine, "acme"), workers=0, early_min=1)
    stale.stage("account", [_accounts(40)])
    stale.merge_early(["account"])
    _wait_merged(stale)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'interrupted' WHERE snapshot_id = :s"),
                     {"s": stale.snapshot_id})
    newer = _stage(engine, "acme", _accounts(60), _assignments(60), early=False)
    done = threading.Event()
    t = threading.Thread(target=lambda: (newer.commit(finish=_finish(newer.snapshot_id)), done.set()))
    t.start()
    assert not done.wait(1.0)  # waiting on the stale transaction
    stale.stage("assignment", [_assignments(40)])
    with pytest.raises(SnapshotError):
        stale.commit(finish=_finish(stale.snapshot_id))
    t.join(30)
    assert done.is_set()
    assert {r[1] for r in _history(engine, "acme") if r[0] == "accounts"} == {f"u{i}" for i in range(60)}


def test_a_commit_never_waits_for_the_bulk_lock(engine, tmp_path):
    """Another transaction writing the empty history tables (here: holding their lock) makes a first
    load keep the indexes instead of waiting for the exclusive lock."""
    w = _stage(engine, "acme", _accounts(50), _assignments(50), early=False)
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(sa.text("LOCK TABLE ingest.accounts_history IN ROW EXCLUSIVE MODE"))
    try:
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(w.commit(finish=_finish(w.snapshot_id))))
        started = time.monotonic()
        t.start()
        t.join(20)
        assert not t.is_alive() and result, "the commit waited for the lock"
        assert time.monotonic() - started < 20
        timings = result[0]["merge_timings"]
        assert "account.index" not in timings and "account.insert" in timings  # kept its indexes
        assert "assignment.index" in timings  # its table was free: the bulk path
    finally:
        tx.rollback()
        holder.close()
    assert len([r for r in _history(engine, "acme") if r[0] == "accounts"]) == 50


def test_the_runner_merges_big_streams_early(tmp_path, database_url, monkeypatch):
    from tests.test_pipeline import _current, _org, people

    monkeypatch.setattr(writer_module, "EARLY_MERGE_MIN", 5)
    org = _org(tmp_path, database_url)  # 10 accounts, 1 resource, 3 entitlements, 12 assignments
    assert org.run().exit_code == 0
    assert org.last_snapshot()["stats"]["merged_early"] == ["account", "assignment"]
    org.data["account"] = people(4, start=100)
    org.save()
    assert org.run("--allow-mass-delete").exit_code == 0
    snap = org.last_snapshot()
    assert snap["stats"]["merged_early"] == ["assignment"] and snap["stats"]["account"]["removed"] == 10
    assert [a["account_id"] for a in _current(org)["account"]] == [f"u{i}" for i in range(100, 104)]
    assert len(_current(org)["assignment"]) == 12
