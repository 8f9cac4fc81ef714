"""The snapshot pipeline end to end on real PostgreSQL: merge, atomicity, history, guard, recovery."""

from __future__ import annotations

from ingest.writer import SnapshotWriter
from tests.engine import Org, people


def _org(tmp_path, database_url, **kw) -> Org:
    org = Org(tmp_path, database_url, **kw)
    org.data["account"] = people(10)
    org.data["entitlement"] = [
        {"entitlement_type": "group", "entitlement_id": "g-admins", "label": "Admins"},
        {"entitlement_type": "group", "entitlement_id": "g-eng", "label": "Engineering"},
        {"entitlement_type": "role", "resource_type": "workspace", "resource_id": "w1",
         "entitlement_id": "owner", "label": "Owner"},
    ]
    org.data["resource"] = [{"resource_type": "workspace", "resource_id": "w1", "label": "Main"}]
    org.data["assignment"] = [{"account_id": f"u{i}", "entitlement_id": "g-eng"} for i in range(10)] + [
        {"account_id": "u0", "entitlement_id": "g-admins"},
        {"account_id": "u1", "entitlement_id": "owner", "resource_type": "workspace", "resource_id": "w1"},
    ]
    org.data["nested_entitlement"] = [{"entitlement_id": "g-eng", "member_entitlement_id": "g-admins"}]
    org.save()
    return org


def _current(org: Org) -> dict[str, list]:
    return {
        "account": org.query("SELECT * FROM ingest.accounts WHERE connector = :c ORDER BY account_id", c=org.name),
        "entitlement": org.query("SELECT * FROM ingest.entitlements WHERE connector = :c ORDER BY entitlement_id",
                                 c=org.name),
        "resource": org.query("SELECT * FROM ingest.resources WHERE connector = :c ORDER BY resource_id", c=org.name),
        "assignment": org.query("SELECT * FROM ingest.assignments WHERE connector = :c "
                                "ORDER BY account_id, entitlement_id", c=org.name),
        "nested": org.query("SELECT * FROM ingest.nested_entitlements WHERE connector = :c", c=org.name),
    }


class TestMerge:
    def test_first_run_adds_every_record(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        result = org.run()
        assert result.exit_code == 0, result.output
        snap = org.last_snapshot()
        assert snap["status"] == "succeeded"
        assert snap["stats"]["account"] == {"fetched": 10, "added": 10, "modified": 0, "removed": 0,
                                            "unchanged": 0, "invalid": 0}
        assert snap["stats"]["assignment"]["added"] == 12
        assert snap["stats"]["nested_entitlement"]["added"] == 1
        assert set(snap["stats"]["http"]) == {"requests", "retries", "throttled"}
        cur = _current(org)
        assert [a["account_id"] for a in cur["account"]] == sorted(f"u{i}" for i in range(10))
        assert cur["account"][0]["custom_attributes"] == {"department": "sales"}
        assert cur["nested"] == [{"connector": "acme", "entitlement_id": "g-eng", "member_entitlement_id": "g-admins"}]

    def test_second_run_records_added_modified_removed_and_unchanged_per_entity(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.data["account"] = [a for a in org.data["account"] if a["account_id"] != "u9"]   # leaver
        org.data["account"][0]["display_name"] = "Renamed Zero"                              # rename
        org.data["account"][1]["status"] = "SUSPENDED"                                      # suspension
        org.data["account"].append({"account_id": "u10", "username": "new"})                 # joiner
        org.data["entitlement"][1]["label"] = "Engineering (all)"
        org.data["assignment"] = [a for a in org.data["assignment"] if a["account_id"] != "u9"]
        org.data["assignment"].append({"account_id": "u10", "entitlement_id": "g-admins"})
        org.data["nested_entitlement"].append({"entitlement_id": "g-admins", "member_entitlement_id": "g-ops"})
        org.save()
        assert org.run().exit_code == 0
        stats = org.last_snapshot()["stats"]
        assert {k: stats["account"][k] for k in ("added", "modified", "removed", "unchanged")} == \
            {"added": 1, "modified": 2, "removed": 1, "unchanged": 7}
        assert {k: stats["entitlement"][k] for k in ("added", "modified", "removed", "unchanged")} == \
            {"added": 0, "modified": 1, "removed": 0, "unchanged": 2}
        assert {k: stats["assignment"][k] for k in ("added", "modified", "removed", "unchanged")} == \
            {"added": 1, "modified": 0, "removed": 1, "unchanged": 11}
        assert stats["nested_entitlement"]["added"] == 1
        sid = org.last_snapshot()["snapshot_id"]
        changes = org.query("SELECT entity, change, key, before, after FROM ingest.changes WHERE snapshot_id = :s "
                            "ORDER BY entity, change, key", s=sid)
        summary = {(c["entity"], c["change"], c["key"]) for c in changes}
        assert summary == {
            ("account", "added", "u10"), ("account", "removed", "u9"), ("account", "modified", "u0"),
            ("account", "modified", "u1"), ("entitlement", "modified", "g-eng"),
            ("assignment", "added", "u10 -> g-admins"), ("assignment", "removed", "u9 -> g-eng"),
            ("nested_entitlement", "added", "g-ops -> g-admins"),
        }
        renamed = next(c for c in changes if c["key"] == "u0")
        assert renamed["before"]["display_name"] == "User 0" and renamed["after"]["display_name"] == "Renamed Zero"
        # history: u0 has two versions, the old one closed by this snapshot
        versions = org.query("SELECT valid_from, valid_to FROM ingest.accounts_history WHERE account_id = 'u0' "
                             "ORDER BY valid_from")
        assert len(versions) == 2 and versions[0]["valid_to"] == sid and versions[1]["valid_to"] is None

    def test_a_merge_that_writes_many_versions_vacuums_that_history_after_its_commit(self, tmp_path, database_url,
                                                                                    monkeypatch):
        import structlog

        from ingest.config import load_config
        from ingest.runner import run

        monkeypatch.setattr("ingest.writer.VACUUM_AFTER_ROWS", 11)  # 12 assignments, 10 accounts
        org = _org(tmp_path, database_url, name="vacuumed")
        with structlog.testing.capture_logs() as logs:
            assert run(load_config(org.config), org.name, database_url=database_url).ok
            assert run(load_config(org.config), org.name, database_url=database_url).ok  # no change: no vacuum
        events = [e["event"] for e in logs]
        vacuumed = [e for e in logs if e["event"] == "history_vacuumed"]
        assert [e["tables"] for e in vacuumed] == [["ingest.assignments_history"]]
        assert events.index("history_vacuumed") < events.index("people_refreshed")  # before anything reads them
        pages = org.query("SELECT relpages, relallvisible FROM pg_class "
                          "WHERE oid = CAST('ingest.assignments_history' AS regclass)")[0]
        assert pages["relallvisible"] > 0  # set by VACUUM (an INSERT and ANALYZE leave it at 0)

    def test_rerun_over_unchanged_source_makes_zero_changes_and_writes_nothing(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        rows_before = org.query("SELECT count(*) AS n FROM ingest.accounts_history")[0]["n"]
        assert org.run().exit_code == 0
        snap = org.last_snapshot()
        for entity in ("account", "entitlement", "resource", "assignment", "nested_entitlement"):
            s = snap["stats"][entity]
            assert s["added"] == s["modified"] == s["removed"] == 0, (entity, s)
        assert org.query("SELECT count(*) AS n FROM ingest.accounts_history")[0]["n"] == rows_before
        assert org.query("SELECT count(*) AS n FROM ingest.changes WHERE snapshot_id = :s",
                         s=snap["snapshot_id"])[0]["n"] == 0

    def test_last_activity_shows_in_accounts_and_is_not_a_change(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        org.data["last_activity"] = [{"account_id": "u3", "last_activity_at": "2026-11-01T10:00:00Z"}]
        org.save()
        assert org.run().exit_code == 0
        row = org.query("SELECT last_activity_at FROM ingest.accounts WHERE account_id = 'u3'")[0]
        assert row["last_activity_at"].isoformat() == "2026-11-01T10:00:00+00:00"
        org.data["last_activity"][0]["last_activity_at"] = "2026-11-02T10:00:00Z"
        org.save()
        assert org.run().exit_code == 0
        assert org.last_snapshot()["stats"]["account"]["modified"] == 0
        row = org.query("SELECT last_activity_at FROM ingest.accounts WHERE account_id = 'u3'")[0]
        assert row["last_activity_at"].isoformat() == "2026-11-02T10:00:00+00:00"

    def test_invalid_records_are_counted_with_reason_and_do_not_fail_the_run(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        org.data["account"].append({"account_id": "", "email": "nobody@example.com"})
        org.data["account"].append({"account_id": "x1", "status": "ON_HOLIDAY"})
        org.save()
        result = org.run()
        assert result.exit_code == 0, result.output
        stats = org.last_snapshot()["stats"]
        assert stats["account"]["invalid"] == 2 and stats["account"]["fetched"] == 12
        reasons = [s["reason"] for s in stats["invalid_samples"]["account"]]
        assert any("account_id" in r for r in reasons) and any("status" in r for r in reasons)

    def test_duplicate_keys_from_the_source_are_stored_once(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        org.data["account"].append(dict(org.data["account"][0]))
        org.save()
        assert org.run().exit_code == 0
        assert org.query("SELECT count(*) AS n FROM ingest.accounts WHERE account_id = 'u0'")[0]["n"] == 1

    def test_connectors_are_isolated_from_each_other(self, tmp_path, database_url):
        a = _org(tmp_path, database_url, name="a")
        b = _org(tmp_path, database_url, name="b")
        assert a.run().exit_code == 0 and b.run().exit_code == 0
        b.data["account"] = b.data["account"][:8]
        b.save()
        assert b.run().exit_code == 0
        assert a.query("SELECT count(*) AS n FROM ingest.accounts WHERE connector = 'a'")[0]["n"] == 10
        assert a.query("SELECT count(*) AS n FROM ingest.accounts WHERE connector = 'b'")[0]["n"] == 8


class TestHistory:
    def test_at_functions_reconstruct_every_past_snapshot_exactly(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        seen = {}
        for day in range(4):
            if day:
                org.data["account"] = [a for a in org.data["account"] if a["account_id"] != f"u{day}"]
                org.data["account"].append({"account_id": f"n{day}", "username": f"new{day}"})
                org.data["account"][0]["display_name"] = f"Zero day {day}"
                org.data["assignment"].append({"account_id": f"n{day}", "entitlement_id": "g-eng"})
                org.save()
            assert org.run().exit_code == 0
            sid = org.last_snapshot()["snapshot_id"]
            seen[sid] = _current(org)
        for sid, state in seen.items():
            at_accounts = org.query("SELECT * FROM ingest.accounts_at(:s) ORDER BY account_id", s=sid)
            assert at_accounts == state["account"]
            at_assign = org.query("SELECT * FROM ingest.assignments_at(:s) ORDER BY account_id, entitlement_id", s=sid)
            assert at_assign == state["assignment"]
            assert org.query("SELECT * FROM ingest.entitlements_at(:s) ORDER BY entitlement_id", s=sid) == \
                state["entitlement"]
            assert org.query("SELECT * FROM ingest.resources_at(:s)", s=sid) == state["resource"]
            assert org.query("SELECT * FROM ingest.nested_entitlements_at(:s)", s=sid) == state["nested"]

    def test_access_view_joins_accounts_entitlements_and_resources(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        rows = org.query("SELECT * FROM ingest.access WHERE account_id = 'u1' ORDER BY entitlement_id")
        assert [(r["entitlement_label"], r["resource_label"], r["email"]) for r in rows] == [
            ("Engineering", None, "user1@example.com"), ("Owner", "Main", "user1@example.com")]


class TestAtomicity:
    def test_failure_mid_stream_leaves_previous_state_and_records_the_error(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = people(10, start=100)   # a totally different org ...
        org.connector["settings"].update(fail_in="assignment", fail_after=3)  # ... and the source breaks
        org.save()
        result = org.run()
        assert result.exit_code == 1
        snap = org.last_snapshot()
        assert snap["status"] == "failed" and "injected failure in assignment" in snap["error"]
        assert _current(org) == before
        assert org.query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'ingest_stage'")[0]["n"] == 0

    def test_failure_mid_merge_rolls_back_every_entity(self, tmp_path, database_url, monkeypatch):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = people(10, start=100)
        org.data["assignment"] = [{"account_id": "u100", "entitlement_id": "g-eng"}]
        org.save()
        real = SnapshotWriter._merge

        def merge(self, conn, ent):
            if ent.name == "assignment":   # accounts are already merged in this transaction
                raise RuntimeError("database went away mid-merge")
            return real(self, conn, ent)

        monkeypatch.setattr(SnapshotWriter, "_merge", merge)
        assert org.run("--allow-mass-delete").exit_code == 1
        snap = org.last_snapshot()
        assert snap["status"] == "failed" and "database went away" in snap["error"]
        assert _current(org) == before

    def test_a_run_the_database_drops_mid_merge_is_failed_and_invisible(self, tmp_path, database_url, monkeypatch):
        import sqlalchemy as sa

        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = people(12)
        org.save()
        real = SnapshotWriter._merge

        def merge(self, conn, ent):
            if ent.name == "entitlement":
                conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))
            return real(self, conn, ent)

        monkeypatch.setattr(SnapshotWriter, "_merge", merge)
        assert org.run().exit_code == 1
        snap = org.last_snapshot()
        assert snap["status"] == "failed"
        assert _current(org) == before


class TestMassDeletionGuard:
    def test_a_source_answering_empty_is_rejected_and_kept_aside(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = []
        org.save()
        result = org.run()
        assert result.exit_code == 1
        snap = org.last_snapshot()
        assert snap["status"] == "rejected"
        assert "10 of 10 accounts" in snap["error"] and "--allow-mass-delete" in snap["error"]
        assert _current(org) == before
        staged = org.query("SELECT tablename FROM pg_tables WHERE schemaname = 'ingest_stage' ORDER BY 1")
        assert f"s{snap['snapshot_id']}_assignment" in [t["tablename"] for t in staged]

    def test_allow_mass_delete_accepts_the_run_and_drops_the_rejected_staging(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.data["account"] = []
        org.save()
        assert org.run().exit_code == 1
        rejected = org.last_snapshot()["snapshot_id"]
        staged = "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'ingest_stage' AND tablename LIKE :p"
        assert org.query(staged, p=f"s{rejected}_%")[0]["n"] > 0
        assert org.run("--allow-mass-delete").exit_code == 0
        assert org.query("SELECT count(*) AS n FROM ingest.accounts")[0]["n"] == 0
        assert org.query(staged, p=f"s{rejected}_%")[0]["n"] == 0  # superseded by a successful run

    def test_ratio_is_applied_per_entity_from_config(self, tmp_path, database_url):
        org = _org(tmp_path, database_url, max_deletion_ratio=0.2)
        assert org.run().exit_code == 0
        org.data["account"] = org.data["account"][:7]       # 30 % of accounts gone: over 0.2
        org.save()
        assert org.run().exit_code == 1
        assert org.last_snapshot()["status"] == "rejected"
        org.data["account"] = people(9)                       # 10 %: fine
        org.save()
        assert org.run().exit_code == 0


class TestRecovery:
    def test_a_snapshot_left_running_by_a_dead_process_is_marked_interrupted(self, tmp_path, database_url):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.query("SELECT 1")  # engine + schema exist
        import sqlalchemy as sa

        from ingest.db import get_engine

        with get_engine(database_url).begin() as conn:
            dead = conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, status) "
                "VALUES ('acme', 'file', 'manual', 'running') RETURNING snapshot_id")).scalar_one()
            conn.execute(sa.text(f"CREATE UNLOGGED TABLE ingest_stage.s{dead}_account (x int)"))
        assert org.run().exit_code == 0
        row = org.query("SELECT status, error FROM ingest.snapshots WHERE snapshot_id = :s", s=dead)[0]
        assert row["status"] == "interrupted" and "stopped before it finished" in row["error"]
        assert not org.query("SELECT 1 FROM pg_tables WHERE tablename = :t", t=f"s{dead}_account")

    def test_a_second_run_while_one_holds_the_lock_is_refused(self, tmp_path, database_url):
        import sqlalchemy as sa

        from ingest.db import get_engine

        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        with get_engine(database_url).connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(1769, hashtext('acme'))"))
            conn.commit()
            result = org.run()
            conn.execute(sa.text("SELECT pg_advisory_unlock(1769, hashtext('acme'))"))
            conn.commit()
        assert result.exit_code == 1
        assert "in progress" in result.output
        assert org.last_snapshot()["status"] == "succeeded"


class TestMergeAhead:
    """The entities whose streams are staged are merged while later streams stage, in the commit's
    own transaction (SnapshotWriter.merge_ahead): invisible until the commit, rolled back by a failure."""

    @staticmethod
    def _gate_associations(monkeypatch, before_associations):
        """Call ``before_associations()`` when the associations stream starts (its records are read)."""
        from tests.fakes import FileConnector

        real = FileConnector.find_entitlement_associations

        def associations(self):
            before_associations()
            return real(self)

        monkeypatch.setattr(FileConnector, "find_entitlement_associations", associations)

    @staticmethod
    def _watch_merges(monkeypatch) -> dict:
        """Where each entity was merged (the thread's name), and an event once accounts were."""
        import threading

        seen: dict = {"threads": {}, "account": threading.Event()}
        real = SnapshotWriter._merge

        def merge(self, conn, ent):
            out = real(self, conn, ent)
            seen["threads"][ent.name] = threading.current_thread().name
            if ent.name == "account":
                seen["account"].set()
            return out

        monkeypatch.setattr(SnapshotWriter, "_merge", merge)
        return seen

    def test_accounts_merge_while_the_associations_stage_and_show_only_at_the_commit(
            self, tmp_path, database_url, monkeypatch):
        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = people(8) + people(3, start=50)
        org.save()
        seen = self._watch_merges(monkeypatch)
        during: list = []

        def associations():
            assert seen["account"].wait(30), "the accounts were not merged before the next stream's records"
            during.append(_current(org))  # another session: the accounts merged ahead are not committed

        self._gate_associations(monkeypatch, associations)
        assert org.run("--allow-mass-delete").exit_code == 0
        assert seen["threads"]["account"].startswith("merge-ahead-")
        assert during == [before]
        after = _current(org)
        assert [a["account_id"] for a in after["account"]] == sorted(f"u{i}" for i in [*range(8), 50, 51, 52])
        stats = org.last_snapshot()["stats"]
        assert stats["account"]["added"] == 3 and stats["account"]["removed"] == 2
        assert stats["account"]["unchanged"] == 8

    def test_a_failed_stream_cancels_the_merge_running_ahead_and_rolls_it_back(
            self, tmp_path, database_url, monkeypatch):
        import threading

        import sqlalchemy as sa

        from ingest.errors import RetryableError

        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        before = _current(org)
        org.data["account"] = people(10, start=100)
        org.save()
        sleeping = threading.Event()
        real = SnapshotWriter._merge

        def merge(self, conn, ent):
            out = real(self, conn, ent)
            if ent.name == "account":  # accounts merged ahead; then a statement that would run a minute
                sleeping.set()
                conn.execute(sa.text("SELECT pg_sleep(60)"))
            return out

        def associations():
            assert sleeping.wait(30)
            raise RetryableError("the source broke", connector=org.name)

        monkeypatch.setattr(SnapshotWriter, "_merge", merge)
        self._gate_associations(monkeypatch, associations)
        done: list = []
        t = threading.Thread(target=lambda: done.append(org.run("--allow-mass-delete")))
        t.start()
        t.join(40)  # not the minute of the sleep: the statement was cancelled
        assert not t.is_alive() and done[0].exit_code == 1
        snap = org.last_snapshot()
        assert snap["status"] == "failed" and "the source broke" in snap["error"]
        assert _current(org) == before
        assert org.query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' "
                         "AND pid <> pg_backend_pid()")[0]["n"] == 0
        assert org.query("SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'ingest_stage'")[0]["n"] == 0

    def test_a_server_idle_limit_does_not_end_the_transaction_waiting_for_later_streams(
            self, tmp_path, database_url, monkeypatch):
        """A merged-ahead transaction sits idle while the next streams stage; a server or role that
        sets ``idle_in_transaction_session_timeout`` must not end it (the merge sets it off for itself)."""
        import time

        org = _org(tmp_path, database_url)
        assert org.run().exit_code == 0
        org.data["account"] = people(12)
        org.save()
        seen = self._watch_merges(monkeypatch)

        def associations():
            assert seen["account"].wait(30)
            time.sleep(1.5)  # the accounts' merge waits, idle in its transaction

        self._gate_associations(monkeypatch, associations)
        sep = "&" if "?" in database_url else "?"
        org.url = f"{database_url}{sep}options=--idle_in_transaction_session_timeout%3D300"
        result = org.run()
        assert result.exit_code == 0, result.output
        assert org.last_snapshot()["stats"]["account"]["added"] == 2

    def test_staging_does_not_wait_for_a_commit_that_holds_the_history_locked(self, tmp_path, database_url):
        """A first load merged ahead holds its history table locked until its commit; another run's
        staging table of that entity is created from the catalog meanwhile, without waiting."""
        import psycopg

        from ingest.db import get_engine, migrate
        from ingest.staging import ENTITIES, Stager

        migrate(get_engine(database_url))
        dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as other:
            holder.execute("LOCK TABLE ingest.accounts_history IN ACCESS EXCLUSIVE MODE")
            other.execute("SET lock_timeout = '3s'")
            for json_text in (False, True):
                Stager.create(other, ENTITIES["account"], "ingest_stage.s999_account", json_text)
                kinds = dict(other.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                    "'ingest_stage.s999_account'::regclass AND attnum > 0 AND NOT attisdropped").fetchall())
                assert kinds["extra"] == ("text" if json_text else "jsonb")
                assert kinds["key_hash"] == "uuid" and kinds["last_activity_at"] == "timestamp with time zone"
                assert list(kinds)[-3:] == ["page_seq", "src", "hit"]
            holder.rollback()
            other.execute("DROP TABLE ingest_stage.s999_account")
