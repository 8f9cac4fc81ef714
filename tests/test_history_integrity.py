"""History you can trust (issue 7, items 2-5): duplicate keys, volatile values, the run lock
until commit, and point-in-time functions that refuse snapshots that did not succeed."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from connectors.scim import map_user
from ingest.db import get_engine
from ingest.errors import SnapshotError
from ingest.writer import SnapshotWriter
from tests.engine import Org, people

AT_FUNCTIONS = ("accounts_at", "resources_at", "entitlements_at", "assignments_at", "nested_entitlements_at")


def _org(tmp_path, database_url, **kw) -> Org:
    org = Org(tmp_path, database_url, **kw)
    org.data["account"] = people(5)
    org.data["entitlement"] = [{"entitlement_type": "group", "entitlement_id": "g-eng", "label": "Engineering"}]
    org.data["assignment"] = [{"account_id": f"u{i}", "entitlement_id": "g-eng"} for i in range(5)]
    org.save()
    return org


def _named_org(tmp_path, database_url, name: str) -> Org:
    """An org of its own directory and connector name, beside others in one database."""
    (tmp_path / name).mkdir()
    return _org(tmp_path / name, database_url, name=name)


def _count(org: Org, sql: str, **params) -> int:
    return org.query(sql, **params)[0]["n"]


# -- item 2: duplicate keys ------------------------------------------------------------------------------------

class TestDuplicateKeys:
    @staticmethod
    def _copies():
        a = {"account_id": "u0", "username": "user0", "display_name": "Copy A"}
        b = {"account_id": "u0", "username": "user0", "display_name": "Copy B"}
        return a, b

    def test_the_same_copy_wins_whatever_the_order_and_the_duplicate_is_counted(self, tmp_path, database_url):
        a, b = self._copies()
        winners = {}
        for name, order in (("ab", [a, b]), ("ba", [b, a])):
            org = _org(tmp_path, database_url, name=name)
            org.data["account"] = [*people(5, start=1), *order]
            org.save()
            assert org.run().exit_code == 0
            winners[name] = org.query("SELECT display_name FROM ingest.accounts WHERE connector = :c "
                                      "AND account_id = 'u0'", c=name)
            stats = org.last_snapshot()["stats"]
            assert stats["account"]["duplicates"] == 1
            assert stats["account"]["fetched"] == 7 and stats["account"]["added"] == 6
            assert stats["duplicate_samples"]["account"] == [{"key": "u0", "copies": 2}]
        assert winners["ab"] == winners["ba"] and len(winners["ab"]) == 1

    def test_a_rerun_with_the_copies_swapped_changes_nothing(self, tmp_path, database_url):
        a, b = self._copies()
        org = _org(tmp_path, database_url)
        org.data["account"] = [*people(5, start=1), a, b]
        org.save()
        assert org.run().exit_code == 0
        org.data["account"] = [b, *people(5, start=1), a]
        org.save()
        assert org.run().exit_code == 0
        snap = org.last_snapshot()
        assert snap["stats"]["account"]["modified"] == 0 and snap["stats"]["account"]["duplicates"] == 1
        assert _count(org, "SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = :s",
                      s=snap["snapshot_id"]) == 0

    def test_identical_copies_of_an_assignment_are_stored_once_and_counted(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.data["assignment"] += [{"account_id": "u1", "entitlement_id": "g-eng"}] * 2
        org.save()
        assert org.run().exit_code == 0
        stats = org.last_snapshot()["stats"]
        assert stats["assignment"]["duplicates"] == 2 and stats["assignment"]["unchanged"] == 5
        assert stats["duplicate_samples"]["assignment"] == [{"key": "u1:g-eng::", "copies": 3}]
        assert _count(org, "SELECT count(*) AS n FROM ingest.assignments WHERE account_id = 'u1'") == 1

    def test_a_merge_does_not_trust_stale_counts(self, tmp_path, database_url):
        # the re-run's merge takes the number of current versions from the last snapshot's stats;
        # when they are off (edited by hand), it counts instead of reporting duplicates or wrong figures
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        with get_engine(database_url).begin() as conn:
            conn.execute(sa.text("UPDATE ingest.snapshots SET stats = jsonb_set(stats, '{account,added}', '3')"))
        org.data["account"][1]["display_name"] = "Renamed"
        org.save()
        assert org.run().exit_code == 0
        stats = org.last_snapshot()["stats"]["account"]
        assert {k: stats[k] for k in ("added", "modified", "removed", "unchanged")} == \
            {"added": 0, "modified": 1, "removed": 0, "unchanged": 4}
        assert "duplicates" not in stats

    def test_no_duplicates_no_duplicate_stats(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        stats = org.last_snapshot()["stats"]
        assert "duplicates" not in stats["account"] and "duplicate_samples" not in stats


# -- item 3: volatile values are not changes ----------------------------------------------------------------------

class TestLastActivity:
    def test_a_day_of_only_logins_writes_no_account_version_and_no_change(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        for i, a in enumerate(org.data["account"]):
            a["last_activity_at"] = f"2026-11-0{i + 1}T10:00:00Z"
        org.data["last_activity"] = [{"account_id": "u0", "last_activity_at": "2026-11-05T08:00:00Z",
                                      "event_type": "login"}]
        org.save()
        assert org.run().exit_code == 0
        day1 = org.last_snapshot()["snapshot_id"]
        versions = _count(org, "SELECT count(*) AS n FROM ingest.accounts_history")
        assert org.query("SELECT last_activity_at::text AS t FROM ingest.accounts WHERE account_id = 'u0'") == \
            [{"t": "2026-11-05 08:00:00+00"}]  # the newest of the account record and the activity stream

        for i, a in enumerate(org.data["account"]):   # everybody logged in again, nothing else happened
            a["last_activity_at"] = f"2026-11-2{i + 1}T10:00:00Z"
        org.data["last_activity"][0].update(last_activity_at="2026-11-30T09:30:00Z", event_type="sso")
        org.save()
        assert org.run().exit_code == 0
        snap = org.last_snapshot()
        assert snap["stats"]["account"]["modified"] == 0 and snap["stats"]["account"]["unchanged"] == 5
        assert snap["stats"]["last_activity"]["updated"] == 5
        assert _count(org, "SELECT count(*) AS n FROM ingest.accounts_history") == versions
        assert _count(org, "SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = :s",
                      s=snap["snapshot_id"]) == 0
        rows = org.query("SELECT account_id, last_activity_at::text AS t FROM ingest.accounts ORDER BY account_id")
        assert rows[0] == {"account_id": "u0", "t": "2026-11-30 09:30:00+00"}
        assert rows[3] == {"account_id": "u3", "t": "2026-11-24 10:00:00+00"}
        la = org.query("SELECT * FROM ingest.last_activity WHERE account_id = 'u0'")[0]
        assert la["event_type"] == "sso" and la["snapshot_id"] == snap["snapshot_id"]
        # accounts_at shows the latest known activity, like ingest.accounts (activity is not versioned)
        assert org.query("SELECT account_id, last_activity_at::text AS t FROM ingest.accounts_at(:s) "
                         "ORDER BY account_id", s=day1) == rows

    def test_an_unchanged_activity_rewrites_nothing(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        org.data["account"][0]["last_activity_at"] = "2026-11-01T10:00:00Z"
        org.save()
        assert org.run().exit_code == 0
        assert org.run().exit_code == 0
        assert org.last_snapshot()["stats"]["last_activity"]["updated"] == 0

    def test_a_real_change_still_opens_a_version_and_keeps_the_activity(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        org.data["account"][2]["last_activity_at"] = "2026-11-01T10:00:00Z"
        org.save()
        assert org.run().exit_code == 0
        org.data["account"][2]["display_name"] = "Renamed"
        org.data["account"][2]["last_activity_at"] = None   # the source no longer says: the latest known stays
        org.save()
        assert org.run().exit_code == 0
        assert org.last_snapshot()["stats"]["account"]["modified"] == 1
        assert org.query("SELECT display_name, last_activity_at::text AS t FROM ingest.accounts "
                         "WHERE account_id = 'u2'") == [{"display_name": "Renamed", "t": "2026-11-01 10:00:00+00"}]

    def test_scim_bookkeeping_is_not_part_of_the_account(self):
        raw = {"id": "7", "userName": "ada", "active": True,
               "meta": {"resourceType": "User", "created": "2026-01-01T00:00:00Z",
                        "lastModified": "2026-11-01T00:00:00Z", "version": 'W/"1"',
                        "location": "https://scim.example/Users/7"},
               "groups": [{"value": "g1", "display": "Eng"}]}
        later = {**raw, "meta": {**raw["meta"], "lastModified": "2026-11-02T00:00:00Z", "version": 'W/"2"',
                                 "location": "https://other.example/Users/7"},
                 "groups": [{"value": "g1"}, {"value": "g2"}]}
        assert map_user(raw) == map_user(later)
        assert map_user(raw)["extra"]["meta"] == {"resourceType": "User", "created": "2026-01-01T00:00:00Z"}
        assert "groups" not in map_user(raw)["extra"]


# -- item 4: the run lock holds until commit ---------------------------------------------------------------------

def _lock_holder_pid(database_url: str, connector: str) -> int | None:
    with get_engine(database_url).connect() as conn:
        return conn.execute(sa.text(
            "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1769 "
            "AND l.objid = (hashtext(:c)::bigint & 4294967295)::oid"), {"c": connector}).scalar()


class TestRunLockUntilCommit:
    def test_a_run_that_lost_its_lock_to_a_newer_run_fails_and_commits_nothing(self, tmp_path, database_url,
                                                                                monkeypatch):
        from ingest.config import load_config
        from ingest.runner import run

        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.data["account"] = people(3, start=100)      # what the stale run saw
        org.save()
        stale_sid: list[int] = []
        release = threading.Event()
        real_commit = SnapshotWriter.commit

        def gated_commit(self, **kw):
            if not stale_sid:
                stale_sid.append(self.snapshot_id)
                assert release.wait(30)
            return real_commit(self, **kw)

        monkeypatch.setattr(SnapshotWriter, "commit", gated_commit)
        results = []
        t = threading.Thread(target=lambda: results.append(
            run(load_config(org.config), "acme", database_url=database_url, allow_mass_delete=True)))
        t.start()
        try:
            deadline = time.monotonic() + 30
            while not stale_sid and time.monotonic() < deadline:
                time.sleep(0.02)
            assert stale_sid, "the first run never reached its commit"
            # its session (and the session-level lock) is lost, as with an idle timeout or a pooler
            pid = _lock_holder_pid(database_url, "acme")
            assert pid is not None
            with get_engine(database_url).connect() as conn:
                assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            org.data["account"] = people(5) + people(1, start=50)   # a newer run takes the connector over
            org.save()
            newer = org.run()
            assert newer.exit_code == 0, newer.output
        finally:
            release.set()
            t.join(30)
        assert not t.is_alive()
        stale = results[0]
        assert stale.status != "succeeded" and "no longer running" in stale.error
        rows = org.query("SELECT snapshot_id, status FROM ingest.snapshots ORDER BY snapshot_id")
        assert [r["status"] for r in rows] == ["succeeded", "interrupted", "succeeded"]
        assert rows[1]["snapshot_id"] == stale_sid[0]
        current = [a["account_id"] for a in org.query("SELECT account_id FROM ingest.accounts ORDER BY 1")]
        assert current == ["u0", "u1", "u2", "u3", "u4", "u50"]
        assert _count(org, "SELECT count(*) AS n FROM ingest.accounts_history WHERE valid_from = :s OR valid_to = :s",
                      s=stale_sid[0]) == 0

    def test_commit_of_a_snapshot_that_is_no_longer_running_fails_and_changes_nothing(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        engine = get_engine(database_url)
        with engine.begin() as conn:
            sid = conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
                "VALUES ('acme', 'file', 'manual', 'running') RETURNING snapshot_id")).scalar_one()
        writer = SnapshotWriter(engine, "acme", sid)
        writer.stage("account", [[{"account_id": "zz"}]])
        with engine.begin() as conn:   # another run took over and interrupted this one
            conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'interrupted' WHERE snapshot_id = :s"),
                         {"s": sid})
        before = org.query("SELECT * FROM ingest.accounts_history ORDER BY account_id")
        with pytest.raises(SnapshotError, match=f"snapshot {sid} is interrupted, no longer running"):
            writer.commit(allow_mass_delete=True)
        assert org.query("SELECT * FROM ingest.accounts_history ORDER BY account_id") == before

    def test_commits_of_one_connector_take_a_transaction_lock(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        engine = get_engine(database_url)
        with engine.begin() as conn:
            sid = conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
                "VALUES ('acme', 'file', 'manual', 'running') RETURNING snapshot_id")).scalar_one()
        writer = SnapshotWriter(engine, "acme", sid)
        writer.stage("account", [people(5)])
        held: list[bool] = []

        def finish(conn, stats):   # still inside the commit transaction: another session cannot take the lock
            with engine.connect() as other:
                held.append(not other.execute(sa.text("SELECT pg_try_advisory_xact_lock(1770, hashtext('acme'))"))
                            .scalar())
                other.rollback()
            conn.execute(sa.text("UPDATE ingest.snapshots SET status = 'succeeded' WHERE snapshot_id = :s"),
                         {"s": sid})

        writer.commit(finish=finish)
        assert held == [True]

    def test_a_version_never_ends_before_it_starts(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        engine = get_engine(database_url)
        for table in ("accounts", "resources", "entitlements", "assignments", "nested_entitlements"):
            with engine.begin() as conn:
                conn.execute(sa.text(
                    f"INSERT INTO ingest.{table}_history SELECT * FROM ingest.{table}_history LIMIT 0"))
                checks = conn.execute(sa.text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                    "AND contype = 'c'"), {"t": f"ingest.{table}_history"}).scalars().all()
                assert "CHECK (((valid_to IS NULL) OR (valid_to > valid_from)))" in checks, (table, checks)
        with pytest.raises(sa.exc.IntegrityError, match="valid_range"):
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE ingest.accounts_history SET valid_to = valid_from "
                                     "WHERE account_id = 'u0'"))


# -- item 5: *_at of a snapshot that did not succeed is an error ---------------------------------------------------

class TestPointInTime:
    @pytest.mark.parametrize("status", ["failed", "running", "interrupted", "rejected"])
    def test_at_of_a_snapshot_that_did_not_succeed_is_an_error(self, tmp_path, database_url, status):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        good = org.last_snapshot()["snapshot_id"]
        with get_engine(database_url).begin() as conn:
            bad = conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
                "VALUES ('acme', 'file', 'manual', :st) RETURNING snapshot_id"), {"st": status}).scalar_one()
        for fn in AT_FUNCTIONS:
            with pytest.raises(sa.exc.DBAPIError, match=f"snapshot {bad} of connector acme is {status}, "
                                                        "not succeeded"):
                org.query(f"SELECT * FROM ingest.{fn}(:s)", s=bad)
            assert org.query(f"SELECT count(*) AS n FROM ingest.{fn}(:s)", s=good)[0]["n"] > 0 \
                or fn in ("resources_at", "nested_entitlements_at")

    def test_at_of_an_unknown_snapshot_is_an_error(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        for fn in AT_FUNCTIONS:
            with pytest.raises(sa.exc.DBAPIError, match="snapshot 999 does not exist"):
                org.query(f"SELECT * FROM ingest.{fn}(999)")

    def test_at_of_a_succeeded_snapshot_filters_like_a_table(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        sid = org.last_snapshot()["snapshot_id"]
        assert org.query("SELECT account_id FROM ingest.accounts_at(:s) WHERE account_id = 'u3'", s=sid) == \
            [{"account_id": "u3"}]


# -- first load into an empty database: indexes built after the insert -------------------------------------------

class TestFirstLoad:
    @staticmethod
    def _indexes(org: Org) -> list[dict]:
        return org.query("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'ingest' "
                         "AND tablename LIKE '%\\_history' ORDER BY 1, 2")

    def test_indexes_are_the_same_after_a_first_load_into_empty_tables(self, tmp_path, database_url):
        from ingest.db import migrate

        migrate(get_engine(database_url))
        org = _org(tmp_path, database_url)
        before = self._indexes(org)
        assert any(i["indexname"] == "assignments_current_idx" for i in before)
        assert org.run().exit_code == 0
        assert self._indexes(org) == before
        stats = org.last_snapshot()["stats"]
        assert "assignment.index" in stats["merge_timings"]   # the bulk path was taken
        with pytest.raises(sa.exc.IntegrityError):            # the unique index holds
            with get_engine(database_url).begin() as conn:
                conn.execute(sa.text("INSERT INTO ingest.assignments_history SELECT * FROM "
                                     "ingest.assignments_history WHERE valid_to IS NULL LIMIT 1"))

    def test_the_indexes_of_closed_versions_are_kept_and_serve_the_next_run(self, tmp_path, database_url):
        from ingest.db import migrate

        migrate(get_engine(database_url))
        oids = ("SELECT c.relname, c.oid::bigint AS oid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE i.indrelid = 'ingest.accounts_history'::regclass ORDER BY 1")
        org = _org(tmp_path, database_url)
        before = {r["relname"]: r["oid"] for r in org.query(oids)}
        assert org.run().exit_code == 0
        assert "account.index" in org.last_snapshot()["stats"]["merge_timings"]  # the bulk path was taken
        after = {r["relname"]: r["oid"] for r in org.query(oids)}
        assert set(after) == set(before)
        # every inserted row is current: the closed-version indexes had nothing to take and were not rebuilt
        assert [n for n in before if after[n] == before[n]] == ["accounts_closed_key_idx", "accounts_to_idx"]
        org.data["account"] = [{**p, "display_name": "Renamed"} if p["account_id"] in ("u1", "u3") else p
                               for p in org.data["account"]]
        org.save()
        assert org.run().exit_code == 0
        with get_engine(database_url).begin() as conn:  # read through the kept indexes only
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
            plan = "\n".join(conn.execute(sa.text(
                "EXPLAIN SELECT account_id FROM ingest.accounts_history WHERE valid_to IS NOT NULL")).scalars())
            closed = conn.execute(sa.text("SELECT account_id FROM ingest.accounts_history "
                                          "WHERE valid_to IS NOT NULL ORDER BY 1")).scalars().all()
        assert "accounts_closed_key_idx" in plan or "accounts_to_idx" in plan
        assert closed == ["u1", "u3"]

    @pytest.mark.parametrize("index_bytes", [0, 10**9])  # the key index fits the cache: unsorted; or not: sorted
    def test_a_later_first_load_in_key_order_or_not_gives_the_same_history(self, tmp_path, database_url,
                                                                             monkeypatch, index_bytes):
        import ingest.writer as writer_module

        first = _named_org(tmp_path, database_url, "a")
        assert first.run().exit_code == 0  # the tables are no longer empty: the next first load keeps the indexes
        statements: list[str] = []
        real = SnapshotWriter._timed

        def timed(self, conn, label, sql, params=None):
            statements.append(f"{label}: {sql}")
            return real(self, conn, label, sql, params)

        monkeypatch.setattr(SnapshotWriter, "_timed", timed)
        monkeypatch.setattr(writer_module, "INDEX_BYTES_PER_ROW", index_bytes)
        later = _named_org(tmp_path, database_url, "b")
        later.data["account"] = people(40)[::-1]
        later.save()
        assert later.run().exit_code == 0
        inserts = [s for s in statements if s.startswith("account.insert")]
        assert len(inserts) == 1 and inserts[0].endswith("ORDER BY key_hash") is (index_bytes > 0)
        assert not any(s.startswith("account.index") for s in statements)
        assert [r["account_id"] for r in later.query(
            "SELECT account_id FROM ingest.accounts WHERE connector = 'b' ORDER BY 1")] == sorted(
            f"u{i}" for i in range(40))
        assert _count(later, "SELECT count(*) AS n FROM ingest.accounts_history WHERE connector = 'b' "
                             "AND valid_to IS NULL AND valid_from = (SELECT max(snapshot_id) FROM ingest.snapshots)") == 40
        with pytest.raises(sa.exc.IntegrityError):  # the unique index holds
            with get_engine(database_url).begin() as conn:
                conn.execute(sa.text("INSERT INTO ingest.accounts_history SELECT * FROM "
                                     "ingest.accounts_history WHERE connector = 'b' AND valid_to IS NULL LIMIT 1"))

    def test_two_first_loads_at_once_both_succeed(self, tmp_path, database_url):
        from ingest.config import load_config
        from ingest.db import migrate
        from ingest.runner import run

        migrate(get_engine(database_url))
        a = _named_org(tmp_path, database_url, "a")
        b = _named_org(tmp_path, database_url, "b")
        results: dict[str, object] = {}
        threads = [threading.Thread(target=lambda o=o: results.__setitem__(
            o.name, run(load_config(o.config), o.name, database_url=database_url))) for o in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert {n: r.status for n, r in results.items()} == {"a": "succeeded", "b": "succeeded"}, \
            {n: r.error for n, r in results.items()}
        assert _count(a, "SELECT count(*) AS n FROM ingest.assignments") == 10
