"""Staging in worker processes (issue 13 item 2): the same snapshot as staging in one process,
and a failure or a cancellation anywhere leaves nothing behind."""

from __future__ import annotations

import os
import signal
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from ingest import checkpoints
from ingest.checkpoints import Checkpoint
from ingest.db import get_engine, migrate
from ingest.errors import Cancelled, SnapshotError
from ingest.records import AccountStatus
from ingest.staging import ENTITIES
from ingest.writer import SnapshotWriter


def _snapshot(engine: sa.Engine, connector: str) -> int:
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
            "VALUES (:c, 'file', 'manual', 'running') RETURNING snapshot_id"), {"c": connector}).scalar_one()


def _accounts(n: int) -> list[dict]:
    out = [{"account_id": f"u{i:05d}", "email": f"u{i}@example.org", "username": f"user{i}",
            "display_name": f"Zoë {i}", "custom_attributes": {"n": i}, "extra": {"raw": {"i": i}}}
           for i in range(n)]
    out[7] = {"account_id": "", "username": "empty id"}     # invalid: reported, not staged
    # values JSON would change on the way to a worker (datetimes, enums, tuples): the same rows either way
    # (one in each of four batches: a batch JSON cannot carry exactly is pickled as a whole)
    out[30]["last_activity_at"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    out[131]["status"] = AccountStatus.SUSPENDED
    out[232]["extra"] = {"pair": (1, 2), "n": 1.5}
    out[333]["extra"] = {"at": datetime(2026, 1, 2, 3, 4, 5), "day": date(2026, 1, 2)}
    out[n // 2 + 3] = {"account_id": "u\x00nul"}                # invalid: NUL
    out.append({**out[20], "display_name": "the other copy"})   # the same key twice, far apart (other segment)
    return out


def _assignments(n: int) -> list[dict]:
    return [{"account_id": f"u{i % 1000:05d}", "entitlement_id": f"g{i % 37}"} for i in range(n)]


def _batches(records: list[dict], size: int = 100):
    return [records[i:i + size] for i in range(0, len(records), size)]


def _stage_tables(engine: sa.Engine, sid: int) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'ingest_stage' "
                                    "AND tablename LIKE :p ORDER BY 1"), {"p": f"s{sid}\\_%"}).scalars().all()


def _finish(sid: int):
    def finish(conn, stats):
        conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'succeeded' WHERE snapshot_id = :s"), {"s": sid})
    return finish


class TestParallelStaging:
    def test_workers_stage_the_same_snapshot_as_one_process(self, database_url):
        engine = get_engine(database_url)
        migrate(engine)
        results = {}
        for connector, workers in (("one", 0), ("par", 2)):
            sid = _snapshot(engine, connector)
            writer = SnapshotWriter(engine, connector, sid, workers=workers, parallel_min=500)
            writer.stage("account", _batches(_accounts(2000)))
            writer.stage("assignment", _batches(_assignments(5000)))
            writer.stage("entitlement", _batches([{"entitlement_type": "group", "entitlement_id": f"g{i}"}
                                                  for i in range(37)]))   # below parallel_min: one process
            with engine.connect() as conn:
                children = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = CAST(:t AS regclass)"),
                    {"t": writer.stage_table("account")}).scalar_one()
            assert children == (2 if workers == 2 else 0)
            stats = writer.commit(finish=_finish(sid))
            assert _stage_tables(engine, sid) == []
            results[connector] = stats
            with engine.connect() as conn:
                results[connector + "_rows"] = {
                    t: conn.execute(sa.text(
                        f"SELECT {cols} FROM ingest.{t} WHERE connector = :c ORDER BY {cols}"),
                        {"c": connector}).all()
                    for t, cols in (("accounts", "account_id, email, display_name, status, custom_attributes, extra"),
                                    ("assignments", "account_id, entitlement_id"),
                                    ("entitlements", "entitlement_id"))}
        assert results["par_rows"] == results["one_rows"]
        by_id = {r[0]: r for r in results["par_rows"]["accounts"]}
        assert by_id["u00131"][3] == "SUSPENDED"
        assert by_id["u00232"][5] == {"pair": [1, 2], "n": 1.5}
        assert by_id["u00333"][5] == {"at": "2026-01-02T03:04:05", "day": "2026-01-02"}
        assert len(results["par_rows"]["accounts"]) == 1998 and len(results["par_rows"]["assignments"]) == 5000
        for entity in ("account", "assignment", "entitlement"):
            for k in ("fetched", "invalid", "added"):
                assert results["par"][entity][k] == results["one"][entity][k], (entity, k)
        assert results["par"]["account"]["invalid"] == 2
        assert results["par"]["account"]["duplicates"] == results["one"]["account"]["duplicates"] == 1
        assert sorted(s["key"] for s in results["par"]["invalid_samples"]["account"]) == ["", "u\x00nul"]

    def test_a_worker_that_dies_fails_the_stage_and_leaves_no_staging(self, database_url):
        engine = get_engine(database_url)
        migrate(engine)
        sid = _snapshot(engine, "par")
        writer = SnapshotWriter(engine, "par", sid, workers=1, parallel_min=100)
        pools = []

        def batches():
            for i, batch in enumerate(_batches(_assignments(20_000))):
                if i == 5:
                    pools.append(writer._pool)
                    os.kill(writer._pool.procs[0].pid, signal.SIGKILL)
                yield batch

        with pytest.raises(SnapshotError, match="worker 0"):
            writer.stage("assignment", batches())
        assert pools and not any(p.is_alive() for p in pools[0].procs)
        writer.discard()
        assert _stage_tables(engine, sid) == []

    def test_cancelling_the_run_stops_the_workers_and_leaves_no_staging(self, database_url):
        engine = get_engine(database_url)
        migrate(engine)
        sid = _snapshot(engine, "par")
        writer = SnapshotWriter(engine, "par", sid, workers=1, parallel_min=100)
        writer.stage("account", _batches(_accounts(1000)))   # one entity staged and committed by the workers
        pool = writer._pool

        def batches():
            for i, batch in enumerate(_batches(_assignments(20_000))):
                if i == 10:
                    raise Cancelled("stopped: the daemon is shutting down")
                yield batch

        with pytest.raises(Cancelled):
            writer.stage("assignment", batches())
        assert not any(p.is_alive() for p in pool.procs)
        writer.discard()
        assert _stage_tables(engine, sid) == []

    def test_a_resumed_attempt_adopts_the_segments_its_workers_committed(self, database_url):
        engine = get_engine(database_url)
        migrate(engine)
        old = _snapshot(engine, "par")
        writer = SnapshotWriter(engine, "par", old, workers=1, parallel_min=100)
        pages = [_Page(seq + 1, _assignments(1000)[seq * 100:(seq + 1) * 100]) for seq in range(10)]

        def then(conn):  # the checkpoint covers pages 1-6 (as if a segment had ended there)
            checkpoints.save(conn, old, Checkpoint("list_grants", 6, False, {"grants": {"resumable": True}},
                                                   {"assignment": {"fetched": 600, "invalid": 0}}))

        writer.stage("assignment", pages, then=then)
        writer.close_workers()   # the attempt dies here
        new = _snapshot(engine, "par")
        with engine.begin() as conn:
            kept = checkpoints.adopt(conn, old, new, lambda stream: ("assignment",))
        assert list(kept) == ["list_grants"]
        tables = _stage_tables(engine, new)
        assert f"s{new}_assignment" in tables and len(tables) == 2  # the table and its worker's segment
        assert _stage_tables(engine, old) == []
        resumed = SnapshotWriter(engine, "par", new, workers=1, parallel_min=100)
        resumed.restore("assignment", kept["list_grants"].counts["assignment"])
        resumed.stage("assignment", [_Page(seq + 1, _assignments(1000)[seq * 100:(seq + 1) * 100])
                                     for seq in range(6, 10)], append=True)
        stats = resumed.commit(finish=_finish(new))
        assert stats["assignment"]["fetched"] == 1000 and stats["assignment"]["added"] == 1000
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(DISTINCT (account_id, entitlement_id)) FROM ingest.assignments "
                                        "WHERE connector = 'par'")).scalar_one() == 1000
        assert _stage_tables(engine, new) == []


class _Page(list):
    def __init__(self, seq: int, records: list) -> None:
        super().__init__(records)
        self.seq = seq


class TestJsonStaging:
    @pytest.mark.parametrize("workers", [0, 1])
    def test_a_rerun_stages_json_as_text_and_the_merge_stores_exact_jsonb(self, database_url, workers):
        """A first load stages JSON columns as jsonb (parsed while fetching); a re-run stages them as text
        (PostgreSQL does not parse what it will not write) and the merge parses only the rows it writes:
        the history holds the same jsonb either way, and unchanged rows stay unchanged."""
        engine = get_engine(database_url)
        migrate(engine)
        connector = f"json{workers}"

        def kinds(writer: SnapshotWriter) -> set[str]:
            with engine.connect() as conn:
                return set(conn.execute(sa.text(
                    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ingest_stage' "
                    "AND c.relname LIKE :p AND a.attname IN ('extra', 'custom_attributes')"),
                    {"p": writer.stage_table("account").split(".")[1] + "%"}).scalars())

        day1 = [{"account_id": f"u{i}", "custom_attributes": {"n": str(i)},
                 "extra": {"raw": {"i": i, "name": "Zoë \"quoted\" \\ back"}}} for i in range(1200)]
        day2 = [dict(a) for a in day1]
        day2[5] = {**day2[5], "extra": {"raw": {"i": 5, "name": "changed", "tab": "a\tb\nc"}}}
        day2[6] = {**day2[6], "custom_attributes": {"n": "six"}}
        got = []
        for records in (day1, day2):
            sid = _snapshot(engine, connector)
            writer = SnapshotWriter(engine, connector, sid, workers=workers, parallel_min=500)
            writer.stage("account", _batches(records))
            got.append(kinds(writer))
            stats = writer.commit(finish=_finish(sid))
        assert got == [{"jsonb"}, {"text"}]
        assert stats["account"] == {**stats["account"], "added": 0, "modified": 2, "removed": 0, "unchanged": 1198}
        with engine.connect() as conn:
            rows = dict(conn.execute(sa.text(
                "SELECT account_id, jsonb_build_array(custom_attributes, extra) FROM ingest.accounts "
                "WHERE connector = :c"), {"c": connector}).all())
            types = conn.execute(sa.text(
                "SELECT DISTINCT jsonb_typeof(extra) FROM ingest.accounts_history WHERE connector = :c"),
                {"c": connector}).scalars().all()
        assert rows == {a["account_id"]: [a["custom_attributes"], a["extra"]] for a in day2}
        assert types == ["object"]

    def test_a_resumed_attempt_keeps_the_json_kind_of_the_staging_it_adopts(self, database_url):
        """An attempt that staged a first load (jsonb) and died is resumed after another snapshot of the
        connector succeeded: the resumed attempt appends jsonb, the kind its adopted table has."""
        engine = get_engine(database_url)
        migrate(engine)
        old = _snapshot(engine, "kind")
        writer = SnapshotWriter(engine, "kind", old, workers=1, parallel_min=100)
        writer.stage("account", [_Page(1, [{"account_id": f"u{i}", "extra": {"i": i}} for i in range(300)])],
                     then=lambda conn: checkpoints.save(conn, old, Checkpoint(
                         "list_accounts", 1, False, {"accounts": {"resumable": True}},
                         {"account": {"fetched": 300, "invalid": 0}})))
        writer.close_workers()
        other = _snapshot(engine, "kind")  # a run in between succeeds: the connector now has accounts
        w2 = SnapshotWriter(engine, "kind", other, workers=0)
        w2.stage("account", [[{"account_id": "x", "extra": {}}]])
        w2.commit(finish=_finish(other))
        new = _snapshot(engine, "kind")
        with engine.begin() as conn:
            kept = checkpoints.adopt(conn, old, new, lambda stream: ("account",))
        resumed = SnapshotWriter(engine, "kind", new, workers=1, parallel_min=100)
        resumed.restore("account", kept["list_accounts"].counts["account"])
        resumed.stage("account", [_Page(2, [{"account_id": f"u{i}", "extra": {"i": i}} for i in range(300, 600)])],
                      append=True)
        assert resumed.json_as_text(ENTITIES["account"], True) is False
        stats = resumed.commit(finish=_finish(new), allow_mass_delete=True)
        assert stats["account"]["added"] == 600 and stats["account"]["removed"] == 1
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM ingest.accounts WHERE connector = 'kind' "
                                        "AND (extra ->> 'i')::int = substr(account_id, 2)::int")).scalar_one() == 600
