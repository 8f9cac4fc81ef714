"""The snapshot writer: records in, one atomic snapshot out.

Records stream into per-snapshot UNLOGGED staging tables with COPY (memory
stays flat), then one transaction merges every entity into its ``*_history``
table by hash: unchanged rows are not touched, changed rows are closed and
re-opened, rows the source no longer returns are closed. Until that
transaction commits, queries see the previous snapshot.

In that transaction: a key sent twice keeps the copy with the greatest row hash
(counted in stats as ``duplicates``); last activity goes to ``ingest.last_activity``
in place, never into a version; and the commit holds a transaction-level lock on
the connector and requires its snapshot to still be ``running``. That transaction
may begin while later streams still stage (``merge_ahead``: the entities already
staged are merged on a thread of its own), and commits once, at the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog

from ingest import memo
from ingest.errors import MassDeletionError, SnapshotError
from ingest.pages import Undecoded
from ingest.redact import redact
from ingest.staging import (
    ENTITIES,
    MAX_INVALID_SAMPLES,
    PARALLEL_MIN,
    PARALLEL_MIN_BYTES,
    Entity,
    StagePool,
    Stager,
    _EntityStats,
    analyze_stage,
    default_workers,
    json_columns,
    stage_schema,
)

__all__ = ["ENTITIES", "Entity", "SnapshotWriter", "drop_staging", "stage_schema"]

log = structlog.get_logger("ingest.writer")
MERGE_WORK_MEM = "128MB"
MERGE_PARALLEL_TUPLE_COST = 0.001
BULK_LOAD = True  # a first load into an empty history table builds its indexes after the insert
# a merge that writes this many new versions of an entity (a first load, mostly) has its history table
# vacuumed once the snapshot committed (vacuum_loaded)
VACUUM_AFTER_ROWS = 100_000
COMMIT_LOCK_NS = 1770  # advisory lock namespace: (1770, hashtext(connector)) = "a commit of this connector"
# bytes a row of a history table's unique index on key_hash takes, about (see SnapshotWriter._insert_sorted)
INDEX_BYTES_PER_ROW = 40
AHEAD_POLL_SECONDS = 1.0  # a merge begun ahead checks this often that its snapshot still owns the connector


class SnapshotWriter:
    """Stages and commits one snapshot of one connector.

    ``stage(entity, records)`` may be called once per entity; ``commit()`` merges
    all staged entities in one transaction; ``discard()`` drops the staging.
    """

    def __init__(self, engine: sa.Engine, connector: str, snapshot_id: int, *, workers: int | None = None,
                 parallel_min: int = PARALLEL_MIN) -> None:
        self.engine = engine
        self.connector = connector
        self.snapshot_id = snapshot_id
        self.workers = workers if workers is not None else default_workers()  # staging processes (0: none)
        self.parallel_min = parallel_min
        self._stager = Stager(connector, snapshot_id)
        self._pool: StagePool | None = None
        self.staged: dict[str, _EntityStats] = {}
        self.duplicates: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self.merge_timings: dict[str, float] = {}
        self._prefix = f"s{snapshot_id}_"
        self._json_text: dict[str, bool] = {}  # per entity: its staging holds JSON columns as text
        self._memo: dict[str, str | None] = {}  # per entity: the connector's memo of it (ingest.memo)
        self.loaded: list[str] = []  # history tables the commit wrote VACUUM_AFTER_ROWS versions or more into
        self._ahead: _Ahead | None = None  # the commit's transaction, opened early by merge_ahead()

    def stage_table(self, entity: str) -> str:
        return f"ingest_stage.{self._prefix}{entity}"

    # -- staging (how records get in: ingest.staging) ------------------------------------------
    def row(self, ent: Entity, d: dict[str, Any]) -> tuple:
        return self._stager.row(ent, d)

    def validate(self, ent: Entity, item: Any, stats: _EntityStats) -> dict[str, Any] | None:
        return self._stager.validate(ent, item, stats)

    def stage(self, entity: str, batches: Iterable[list[Any]],
              progress: Callable[[str, int], None] | None = None, *, append: bool = False,
              then: Callable[[psycopg.Connection], None] | None = None, analyze: bool = True,
              check: Callable[[], None] | None = None, divert: list[tuple[int, list[Any]]] | None = None) -> None:
        """COPY batches of ``entity`` records (models or dicts) into staging, validating each one.

        The staging table is created (``append``: added to) and filled, then ``then(conn)`` runs in
        the transaction that makes the rows part of the staging (a checkpoint commits with the rows
        it covers). A batch's ``seq`` attribute (default 0) is its rows' ``page_seq``.

        A call that reaches ``parallel_min`` records (or ``PARALLEL_MIN_BYTES`` of undecoded pages) is
        staged by ``workers`` processes (:class:`~ingest.staging.StagePool`); ``check`` is called
        while waiting on them (the run's cancellation). Otherwise one transaction here: created (or added to) and filled, so a
        new table is COPYed with FREEZE.

        A batch may be an :class:`~ingest.pages.Undecoded` page (decoded where it is staged).
        ``divert`` (entitlement associations staged as assignments): their nested groups are added
        to it as ``(seq, records)`` before ``then`` runs, not staged.
        """
        ent = ENTITIES[entity]
        stats = self.staged.setdefault(entity, _EntityStats())
        table = self.stage_table(entity)
        json_text = self.json_as_text(ent, append)
        batches = iter(batches)
        head: list[list[Any]] = []
        parallel = False
        if self.workers > 0:
            n = size = 0
            for batch in batches:
                head.append(batch)
                n += len(batch)
                if type(batch) is Undecoded:
                    size += len(batch.body)
                if n >= self.parallel_min or size >= PARALLEL_MIN_BYTES:
                    parallel = True
                    break
        stream = itertools.chain(head, batches)
        if parallel:
            if self._pool is None:
                self._pool = StagePool(self._dsn(), self.connector, self.snapshot_id, self.workers)
            try:
                self._pool.stage(ent, table, stream, stats, progress, check, create=not append, then=then,
                                 analyze=analyze, json_text=json_text, divert=divert, memo=self.memo(ent))
            except BaseException:
                self._pool.abort()
                self._pool = None
                raise
        else:
            with psycopg.connect(self._dsn(), autocommit=True) as conn:
                with conn.transaction():
                    self._stager.copy_into(conn, ent, table, stream, stats, progress, create=not append,
                                           json_text=json_text, divert=divert, memo=self.memo(ent))
                    if then is not None:
                        then(conn)
                if analyze:
                    analyze_stage(conn, table)
        if progress is not None:
            progress(entity, stats.fetched)

    def copy_into(self, conn: psycopg.Connection, entity: str, batches: Iterable[list[Any]], *, create: bool,
                  progress: Callable[[str, int], None] | None = None) -> None:
        """COPY ``batches`` into ``entity``'s staging in ``conn``'s transaction (``create``: a new table)."""
        stats = self.staged.setdefault(entity, _EntityStats())
        ent = ENTITIES[entity]
        self._stager.copy_into(conn, ent, self.stage_table(entity), batches, stats, progress, create=create,
                               json_text=self.json_as_text(ent, not create))

    def memo(self, ent: Entity) -> str | None:
        """The connector's memo of ``ent`` (:mod:`ingest.memo`), looked for once per entity."""
        if ent.name not in self._memo:
            with self.engine.connect() as c:
                self._memo[ent.name] = memo.find(c, self.connector, ent.name, ent.columns + ("key_hash", "row_hash"))
        return self._memo[ent.name]

    def json_as_text(self, ent: Entity, append: bool) -> bool:
        """Whether ``ent``'s staging holds its JSON columns as text (see :func:`~ingest.staging.json_columns`):
        on a re-run (the connector has a succeeded snapshot), not on a first load. Decided once per
        entity; a staging table that already exists (``append``: a resumed attempt's) keeps its own kind.
        (The memo's hits carry no JSON column: its kind does not matter here.)"""
        if ent.name in self._json_text or not json_columns(ent):
            return self._json_text.get(ent.name, False)
        like = self.stage_table(ent.name) if append else None
        with self.engine.connect() as c:
            kind = None
            if like is not None:
                kind = c.execute(sa.text(
                    "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                    "WHERE a.attrelid = to_regclass(:t) AND a.attname = :col AND NOT a.attisdropped"),
                    {"t": like, "col": json_columns(ent)[0]}).scalar()
            if kind is not None:
                text = kind == "text"
            else:
                text = c.execute(sa.text(
                    "SELECT EXISTS (SELECT 1 FROM ingest.snapshots WHERE connector = :c AND status = 'succeeded')"),
                    {"c": self.connector}).scalar()
        self._json_text[ent.name] = bool(text)
        return bool(text)

    def close_workers(self) -> None:
        """Stop the staging processes (staging is over)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def analyze(self, entity: str) -> None:
        with psycopg.connect(self._dsn(), autocommit=True) as conn:
            analyze_stage(conn, self.stage_table(entity))

    def restore(self, entity: str, counts: dict[str, Any]) -> None:
        """What an earlier attempt staged of ``entity`` (its checkpoint's counts): the stats go on from there."""
        stats = self.staged[entity] = _EntityStats()
        stats.fetched, stats.invalid = counts.get("fetched", 0), counts.get("invalid", 0)
        stats.reused, stats.memo = counts.get("reused", 0), counts.get("memo", 0)
        stats.samples = list(counts.get("samples", []))

    def counts(self, entity: str) -> dict[str, Any]:
        """What is staged of ``entity`` so far, as a checkpoint keeps it (``reused``: hit rows of the memo)."""
        stats = self.staged.get(entity) or _EntityStats()
        return {"fetched": stats.fetched, "invalid": stats.invalid, "samples": stats.samples,
                "reused": stats.reused, "memo": stats.memo}

    def _dsn(self) -> str:
        url = self.engine.url
        return url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://", 1)

    # -- commit ----------------------------------------------------------------
    def merge_ahead(self, complete: Iterable[str]) -> None:
        """Start merging, in the background, the entities whose staging is ``complete`` while later
        streams stage (a first load of 1M accounts: their insert and index builds beside the staging
        of the memberships, on the core the staging leaves idle).

        This is the commit's own transaction, opened early on a connection of its own: nothing of
        it is visible before :meth:`commit`, and :meth:`discard` rolls it back. Only the head of
        ``ENTITIES``' order goes ahead (every entity before it merged ahead already), so runs of
        different connectors take the history tables' locks in one order, as the commit does. The
        snapshot's row is locked and checked by :meth:`commit` only: a checkpoint's key-share lock
        on it must not wait for this transaction. An error here is raised by the next call, or by
        the commit.
        """
        if self._ahead is not None:
            self._ahead.raise_error()
        going = self._ahead.names if self._ahead is not None else []
        names = []
        for name, ent in ENTITIES.items():
            if ent.table is None or name in going:
                continue
            if name not in complete or name not in self.staged:
                break
            names.append(name)
        if not names:
            return
        if self._ahead is None:
            self._ahead = _Ahead(self)
        for name in names:
            log.info("merge_ahead", entity=name)
            self._ahead.put(name)

    def commit(self, *, max_deletion_ratio: float = 1.0, allow_mass_delete: bool = False,
               finish: Callable[[sa.Connection, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Merge every staged entity in one transaction and return the stats.

        ``finish(conn, stats)`` runs inside the transaction (the runner marks the
        snapshot succeeded there), so data and status commit together. Raises
        :class:`MassDeletionError` (nothing committed, staging kept) when an
        entity would lose more than ``max_deletion_ratio`` of its rows, and
        :class:`SnapshotError` (nothing committed) when the snapshot is no longer
        ``running`` (another run took the connector over). Entities merged ahead
        (:meth:`merge_ahead`) are in this transaction already.
        """
        self.close_workers()
        ahead = self._ahead
        if ahead is not None:
            conn, tx, merged = ahead.join()  # raises its error (rolled back); discard() still stops it then
            self._ahead = None
        else:
            conn = self.engine.connect()
            tx, merged = conn.begin(), {}
        stats: dict[str, Any] = {}
        too_many: list[str] = []
        duplicate_samples: dict[str, list[dict[str, Any]]] = {}
        with conn, tx:
            if ahead is None:
                self._open_merge(conn)
            self._hold_snapshot(conn)
            for name, ent in ENTITIES.items():
                if ent.table is None or name not in self.staged:
                    continue
                s = merged[name] if name in merged else self._merge(conn, ent)
                s["fetched"] = self.staged[name].fetched
                s["invalid"] = self.staged[name].invalid
                if self.staged[name].reused:  # of fetched: staged from the memo (ingest.memo)
                    s["reused"] = self.staged[name].reused
                if name in self.duplicates:
                    s["duplicates"], duplicate_samples[name] = self.duplicates[name]
                stats[name] = s
                if s["added"] + s["modified"] >= VACUUM_AFTER_ROWS:
                    self.loaded.append(f"ingest.{ent.table}_history")
                if (not allow_mass_delete and s["before"] > 0
                        and s["removed"] / s["before"] > max_deletion_ratio):
                    too_many.append(f"{s['removed']} of {s['before']} {ent.table}")
            moved = self._record_last_activity(conn)
            if "last_activity" in self.staged:
                la = self.staged["last_activity"]
                stats["last_activity"] = {"fetched": la.fetched, "invalid": la.invalid}
            if moved is not None:
                stats.setdefault("last_activity", {})["updated"] = moved
            samples = {k: v.samples for k, v in self.staged.items() if v.samples}
            if samples:
                stats["invalid_samples"] = samples
            if duplicate_samples:
                stats["duplicate_samples"] = duplicate_samples
            stats["merge_timings"] = self.merge_timings  # with what the rest of the commit adds
            for s in stats.values():
                if isinstance(s, dict):
                    s.pop("before", None)
            if too_many:
                err = MassDeletionError(
                    f"rejected: the run would remove {', '.join(too_many)} (more than "
                    f"max_deletion_ratio {max_deletion_ratio:g}); the fetched data is kept in "
                    f"{self.stage_table('*')} for inspection; re-run with --allow-mass-delete to accept it",
                    connector=self.connector,
                )
                err.stats = stats
                raise err  # leaving the block rolls the merge back
            with self._timing("memo.keep"):
                memo.keep(conn, self.connector, self.snapshot_id,
                          [(ENTITIES[n], self.memo(ENTITIES[n]) if st.reused else None, st.reused)
                           for n, st in self.staged.items() if st.memo])
            with self._timing("staging.drop"):
                drop_staging(conn, self.snapshot_id)
                self._drop_superseded_rejections(conn)
            if finish is not None:
                finish(conn, stats)
        return stats

    def vacuum_loaded(self) -> None:
        """VACUUM the history tables the commit wrote many new versions into; never raises.

        Rows a transaction inserts carry no hint bits and their pages are not all-visible: the first
        reads after it (the people refresh, the next run's diff, users' queries) would set them page
        by page, and autovacuum would rewrite the same pages later, in the middle of whatever runs
        then. Vacuumed now, while they are in the cache: measured, 1M users / 5M memberships, 3.8 s
        after the first load, and the next run's merge 7.9 -> 5.6 s (PostgreSQL's CPU during that run
        55 -> 45 s). A failure is logged (autovacuum will come by).
        """
        if not self.loaded:
            return
        started = time.perf_counter()
        try:
            with psycopg.connect(self._dsn(), autocommit=True) as conn:
                conn.execute(f"VACUUM {', '.join(self.loaded)}")
        except psycopg.Error as e:
            log.warning("history_vacuum_failed", tables=self.loaded, error=redact(str(e)))
            return
        log.info("history_vacuumed", tables=self.loaded, seconds=round(time.perf_counter() - started, 3))

    def _open_merge(self, conn: sa.Connection) -> None:
        """The merge transaction's settings, and its lock on the connector's commits.

        The run's session-level lock can be lost before the commit (idle timeout, a pooler, a
        killed connection); the transaction-level lock serialises commits of this connector then.
        """
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:ns, hashtext(:c))"),
                     {"ns": COMMIT_LOCK_NS, "c": self.connector})
        # ours to set for this transaction only: the diff's hash join and the sorts stay in
        # memory (PostgreSQL's default 4 MB spills them to disk in many batches)
        conn.execute(sa.text(f"SET LOCAL work_mem = '{MERGE_WORK_MEM}'"))
        # the diff (CREATE TABLE AS: the only statement here PostgreSQL runs in parallel) keeps only
        # the changed rows, but the planner cannot know how few they are and prices every row through
        # the Gather; at the default 0.1 it never plans the parallel hash join (measured, 5M current
        # assignments, 1 % changed: 4.5 s one process -> 3.4 s with two workers)
        conn.execute(sa.text(f"SET LOCAL parallel_tuple_cost = {MERGE_PARALLEL_TUPLE_COST}"))
        # merged ahead, the transaction waits for the rest of the staging: a server's idle limit
        # must not end it
        conn.execute(sa.text("SET LOCAL idle_in_transaction_session_timeout = 0"))

    def _hold_snapshot(self, conn: sa.Connection, lock: bool = True) -> None:
        """Make sure this snapshot still owns the connector, and (``lock``) keep it so until the commit.

        Another run may have taken the connector over after this one lost its session-level
        lock, and marked this snapshot ``interrupted``. The row lock on the snapshot holds until
        this transaction ends.
        """
        status = conn.execute(sa.text("SELECT status FROM ingest.snapshots WHERE snapshot_id = :sid"
                                      + (" FOR UPDATE" if lock else "")),
                              {"sid": self.snapshot_id}).scalar_one_or_none()
        if status != "running":
            raise SnapshotError(
                f"snapshot {self.snapshot_id} is {status or 'missing'}, no longer running: another run took "
                "the connector over after this one lost its lock; nothing was committed",
                connector=self.connector)

    @contextlib.contextmanager
    def _timing(self, label: str) -> Iterator[None]:
        """Add the seconds of the block to ``merge_timings[label]`` (stats, bench)."""
        t = time.perf_counter()
        yield
        self.merge_timings[label] = round(self.merge_timings.get(label, 0.0) + time.perf_counter() - t, 3)

    def _timed(self, conn: sa.Connection, label: str, sql: str, params: dict[str, Any] | None = None):
        """Execute one merge statement, timed (``_timing``)."""
        with self._timing(label):
            return conn.execute(sa.text(sql), params or {})

    def _drop_duplicates(self, conn: sa.Connection, ent: Entity) -> int:
        """Keep one copy per key of what the source sent twice: the one with the greatest row hash.

        Deterministic whatever the order the copies came in. Records the number of copies
        dropped and samples of their keys in ``self.duplicates`` (for ``stats``) and returns
        the number dropped. Called only when the merge saw a sign of duplicates (a unique
        violation, or counts that do not add up), so a clean source pays nothing for it.
        """
        stage = self.stage_table(ent.name)
        dup = f"_dup_{ent.name}"
        self._timed(conn, f"{ent.name}.duplicates", (
            f"CREATE TEMP TABLE {dup} ON COMMIT DROP AS SELECT key_hash, count(*) AS copies "
            f"FROM {stage} GROUP BY key_hash HAVING count(*) > 1"))
        dropped = int(conn.execute(sa.text(f"SELECT coalesce(sum(copies - 1), 0) FROM {dup}")).scalar_one())
        if dropped:
            keys_sql = ", ".join(f"s.{c}" for c in ent.key)
            samples = [
                {"key": ":".join(r[:-1]), "copies": r[-1]}
                for r in conn.execute(sa.text(
                    f"SELECT DISTINCT ON (d.key_hash) {keys_sql}, d.copies FROM {dup} d JOIN {stage} s "
                    f"USING (key_hash) ORDER BY d.key_hash LIMIT {MAX_INVALID_SAMPLES}"))
            ]
            conn.execute(sa.text(
                f"DELETE FROM {stage} s USING {dup} d WHERE s.key_hash = d.key_hash AND EXISTS "
                f"(SELECT 1 FROM {stage} t WHERE t.key_hash = s.key_hash "
                f"AND (t.row_hash, t.tableoid, t.ctid) > (s.row_hash, s.tableoid, s.ctid))"))  # tableoid: segments
            self.duplicates[ent.name] = (dropped, samples)
            log.warning("duplicate_keys_from_source", entity=ent.name, dropped=dropped,
                        samples=[x["key"] for x in samples[:5]])
        conn.execute(sa.text(f"DROP TABLE {dup}"))
        return dropped

    def _current_count(self, conn: sa.Connection, ent: Entity, exact: bool = False) -> int:
        """How many current versions the connector has for ``ent``: from the last succeeded
        snapshot's stats (added + modified + unchanged, kept exact by every merge), else counted."""
        if not exact:
            n = conn.execute(sa.text(
                "SELECT (stats -> :e ->> 'added')::bigint + (stats -> :e ->> 'modified')::bigint "
                "+ (stats -> :e ->> 'unchanged')::bigint FROM ingest.snapshots "
                "WHERE connector = :c AND status = 'succeeded' AND stats ? :e "
                "ORDER BY snapshot_id DESC LIMIT 1"), {"c": self.connector, "e": ent.name}).scalar()
            if n is not None:
                return int(n)
        return self._timed(conn, f"{ent.name}.count_current", (
            f"SELECT count(*) FROM ingest.{ent.table}_history WHERE connector = :c AND valid_to IS NULL"),
            {"c": self.connector}).scalar_one()

    def _record_last_activity(self, conn: sa.Connection) -> int | None:
        """Upsert the staged last activity (account records and the last-activity stream) into
        ``ingest.last_activity``, in place; the newest value per account wins. Returns the rows moved."""
        parts = []
        if "account" in self.staged:
            parts.append(f"SELECT account_id, last_activity_at, NULL::text AS event_type, 1 AS pri "
                         f"FROM {self.stage_table('account')} WHERE last_activity_at IS NOT NULL")
        if "last_activity" in self.staged:
            parts.append(f"SELECT account_id, last_activity_at, event_type, 0 AS pri "
                         f"FROM {self.stage_table('last_activity')} WHERE last_activity_at IS NOT NULL")
        if not parts:
            return None
        return self._timed(conn, "last_activity.upsert", (
            "INSERT INTO ingest.last_activity AS l (connector, account_id, last_activity_at, event_type, snapshot_id) "
            "SELECT DISTINCT ON (account_id) :c, account_id, last_activity_at, event_type, :sid "
            f"FROM ({' UNION ALL '.join(parts)}) x ORDER BY account_id, last_activity_at DESC, pri "
            "ON CONFLICT (connector, account_id) DO UPDATE SET last_activity_at = excluded.last_activity_at, "
            "event_type = excluded.event_type, snapshot_id = excluded.snapshot_id "
            "WHERE (l.last_activity_at, l.event_type) IS DISTINCT FROM (excluded.last_activity_at, excluded.event_type)"),
            {"c": self.connector, "sid": self.snapshot_id}).rowcount

    def _drop_superseded_rejections(self, conn: sa.Connection) -> None:
        """A rejected snapshot's data stays in staging for inspection until a later run succeeds."""
        tables = conn.execute(sa.text(
            "SELECT t.tablename FROM pg_tables t JOIN ingest.snapshots s "
            "ON t.tablename LIKE 's' || s.snapshot_id || '\\_%' "
            "WHERE t.schemaname = 'ingest_stage' AND s.connector = :c AND s.status = 'rejected' "
            "AND s.snapshot_id < :sid"), {"c": self.connector, "sid": self.snapshot_id}).scalars().all()
        for table in tables:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))
        if tables:
            log.info("rejected_staging_dropped", tables=len(tables))

    def _first_in_database(self, conn: sa.Connection, ent: Entity) -> bool:
        """No succeeded snapshot of any connector has merged ``ent`` yet (its history is likely empty)."""
        return not conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM ingest.snapshots WHERE status = 'succeeded' AND stats ? :e)"),
            {"e": ent.name}).scalar()

    def _load_without_indexes(self, conn: sa.Connection, ent: Entity, insert: str, p: dict[str, Any]) -> int:
        """First load into an empty history table (locked): drop its indexes, insert, build them again.

        Building an index from sorted data once costs a fraction of maintaining it row by row.
        A duplicate key fails the unique index build (an IntegrityError, like the INSERT would).
        The indexes of closed versions stay: every inserted row is current (``valid_to`` NULL), so
        the insert adds nothing to them, and building them again would scan the table for no row
        (measured on 1M assignments: 0.09 s a scan; two such indexes a table).
        """
        hist = f"ingest.{ent.table}_history"
        defs = conn.execute(sa.text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = CAST(:t AS regclass) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
            "AND pg_get_expr(i.indpred, i.indrelid) IS DISTINCT FROM '(valid_to IS NOT NULL)' ORDER BY c.relname"),
            {"t": hist}).all()
        for index, _ in defs:
            conn.execute(sa.text(f'DROP INDEX ingest."{index}"'))
        opened = self._timed(conn, f"{ent.name}.insert", insert, p).rowcount
        conn.execute(sa.text(f"SET LOCAL maintenance_work_mem = '{MERGE_WORK_MEM}'"))
        for _, definition in defs:
            self._timed(conn, f"{ent.name}.index", definition)
        return opened

    def _insert_sorted(self, conn: sa.Connection, hist: str, rows: int) -> bool:
        """Whether a first load into a history table that keeps its indexes inserts in key order.

        In key order the unique index on ``key_hash`` grows at its right edge; in any other order
        each row lands on a random page of it, which costs nothing while the index stays in
        shared_buffers and a read and a write per row once it does not. Sorting costs the rows'
        spill to disk (wide rows: much of it). So: in key order once the index, with the rows the
        table already has, would outgrow half of shared_buffers. Measured into a fresh indexed table
        (default settings, `bench/merge.py`'s rows): 1M SCIM-wide accounts 8.0 s unsorted against
        11.2 s sorted; 5M assignments 24.3 s unsorted against 12.3 s sorted.
        """
        buffers, existing = conn.execute(sa.text(
            "SELECT pg_size_bytes(current_setting('shared_buffers')), greatest(reltuples, 0)::bigint "
            "FROM pg_class WHERE oid = CAST(:t AS regclass)"), {"t": hist}).one()
        return (rows + existing) * INDEX_BYTES_PER_ROW > buffers // 2

    def _merge(self, conn: sa.Connection, ent: Entity) -> dict[str, int]:
        """Merge one entity's staging into its history; the cost follows the change.

        One pass diffs staging against the connector's current versions by key (a full
        join on ``key_hash``) into a temporary table of the changed keys only; closing and
        opening versions then touch just those rows (index lookups), and every count comes
        from that table. A first load is one INSERT: into an empty table without its indexes
        (built after it), otherwise in key order once the key index outgrows the cache
        (``_insert_sorted``).

        Duplicate keys from the source are found without a pass of their own: on a first
        load the unique index refuses them; on a re-run the diff's counts do not add up
        (more staged rows matched current versions than there are current versions, or a
        key twice among the changed ones). Then they are dropped and the merge repeated.
        """
        hist = f"ingest.{ent.table}_history"
        stage = self.stage_table(ent.name)
        p = {"c": self.connector, "sid": self.snapshot_id}
        cols = ", ".join(ent.versioned)
        as_jsonb = json_columns(ent)  # staged as jsonb or as text (json_as_text): the cast parses only the latter
        values = ", ".join(f"CAST({c} AS jsonb)" if c in as_jsonb else c for c in ent.versioned)
        name = ent.name
        st = self.staged[name]
        rows = st.fetched - st.invalid - self.duplicates.get(name, (0, []))[0]  # rows in staging
        bulk = BULK_LOAD and self._first_in_database(conn, ent)
        if bulk:  # lock before this transaction reads the table: two first loads never wait on each other's reads
            self._timed(conn, f"{name}.lock", f"LOCK TABLE {hist} IN ACCESS EXCLUSIVE MODE")
        has_current = self._timed(conn, f"{name}.exists", f"SELECT EXISTS (SELECT 1 FROM {hist} "
                                  "WHERE connector = :c AND valid_to IS NULL)", p).scalar()
        if not has_current:
            if st.reused:  # hits from a memo, yet no current version (none of this entity's rows were kept)
                self._fill_hits(conn, ent, stage)
            insert = (f"INSERT INTO {hist} (connector, {cols}, key_hash, row_hash, valid_from) "
                      f"SELECT :c, {values}, key_hash, row_hash, :sid FROM {stage}")
            empty = bulk and not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {hist})")).scalar()

            def load() -> int:
                if empty:  # no index to keep in order while inserting: the index builds sort by themselves
                    return self._load_without_indexes(conn, ent, insert, p)
                ordered = insert + " ORDER BY key_hash" if self._insert_sorted(conn, hist, rows) else insert
                return self._timed(conn, f"{name}.insert", ordered, p).rowcount

            try:
                with conn.begin_nested():
                    opened = load()
            except sa.exc.IntegrityError:  # the same key twice in staging
                self._drop_duplicates(conn, ent)
                opened = load()
            if opened:
                # the next run's diff is planned from these statistics (autovacuum may not have come by)
                self._timed(conn, f"{name}.analyze", f"ANALYZE {hist}")
            return {"added": opened, "modified": 0, "removed": 0, "unchanged": 0, "before": 0}
        diff = f"_diff_{name}"
        self._timed(conn, f"{name}.diff", (
            f"CREATE TEMP TABLE {diff} ON COMMIT DROP AS "
            f"SELECT s.*, h.key_hash AS old_key_hash FROM {stage} s FULL JOIN "
            f"(SELECT key_hash, row_hash FROM {hist} WHERE connector = :c AND valid_to IS NULL) h "
            f"ON h.key_hash = s.key_hash "
            f"WHERE s.key_hash IS NULL OR h.key_hash IS NULL OR s.row_hash <> h.row_hash"), p)
        new_rows, new_keys, mod_rows, mod_keys, removed, hits = (int(x) for x in self._timed(conn, f"{name}.count", (
            f"SELECT count(*) FILTER (WHERE old_key_hash IS NULL), "
            f"count(DISTINCT key_hash) FILTER (WHERE old_key_hash IS NULL), "
            f"count(*) FILTER (WHERE key_hash IS NOT NULL AND old_key_hash IS NOT NULL), "
            f"count(DISTINCT old_key_hash) FILTER (WHERE key_hash IS NOT NULL AND old_key_hash IS NOT NULL), "
            f"count(*) FILTER (WHERE key_hash IS NULL), count(*) FILTER (WHERE hit) FROM {diff}")).one())
        before = self._current_count(conn, ent)
        matched = rows - new_rows  # staged rows that found a current version (each at most once without duplicates)
        if matched != before - removed:
            before = self._current_count(conn, ent, exact=True)
        if matched > before - removed or new_rows != new_keys or mod_rows != mod_keys:
            conn.execute(sa.text(f"DROP TABLE {diff}"))
            if not self._drop_duplicates(conn, ent):
                raise SnapshotError(f"{ent.table}: the merge's counts do not add up ({rows} staged, {before} "
                                    f"current, {new_rows} new, {removed} gone); nothing was committed",
                                    connector=self.connector)
            return self._merge(conn, ent)
        added, modified = new_rows, mod_rows
        if hits:  # hit rows that open a version: their columns from the memo
            self._fill_hits(conn, ent, diff)
        if added + modified + removed:
            conn.execute(sa.text(f"ANALYZE {diff}"))
        closed = self._timed(conn, f"{name}.close", (
            f"UPDATE {hist} h SET valid_to = :sid FROM {diff} d "
            f"WHERE d.old_key_hash IS NOT NULL AND h.key_hash = d.old_key_hash AND h.valid_to IS NULL"),
            p).rowcount if modified + removed else 0
        opened = self._timed(conn, f"{name}.open", (
            f"INSERT INTO {hist} (connector, {cols}, key_hash, row_hash, valid_from) "
            f"SELECT :c, {values}, key_hash, row_hash, :sid FROM {diff} WHERE key_hash IS NOT NULL "
            f"ORDER BY key_hash"), p).rowcount if added + modified else 0
        if closed != modified + removed or opened != added + modified:
            raise SnapshotError(f"{ent.table}: the merge closed {closed} and opened {opened} versions where the "
                                f"diff had {added} added, {modified} modified, {removed} removed; nothing was committed",
                                connector=self.connector)
        unchanged = before - modified - removed
        return {
            "added": added,
            "modified": modified,
            "removed": removed,
            "unchanged": unchanged,
            "before": before,
        }

    def _fill_hits(self, conn: sa.Connection, ent: Entity, table: str) -> None:
        """Give the hit rows of ``table`` (staging, or the diff of it) every column from the memo row
        they stand for (:mod:`ingest.memo`: a hit carries only its key, hashes and last activity).

        Raises :class:`SnapshotError` (nothing committed) when the memo no longer has them all."""
        used = self.memo(ent)
        if used is None or conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": used}).scalar() is None:
            raise SnapshotError(f"{ent.table}: rows staged from the memo of {ent.name} cannot be read back (the memo "
                                "is gone); nothing was committed", connector=self.connector)
        kept, as_json = memo.narrow(ent), json_columns(ent)
        rest = [c for c in ent.columns if c not in kept]
        if not rest:
            return
        target = as_json and conn.execute(sa.text(  # the staging's JSON kind (json_as_text), the memo's may differ
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
            "AND attname = :col"), {"t": self.stage_table(ent.name), "col": as_json[0]}).scalar()
        sets = ", ".join(f"{c} = CAST(m.{c} AS {target})" if c in as_json else f"{c} = m.{c}" for c in rest)
        filled = self._timed(conn, f"{ent.name}.fill", (
            f"UPDATE {table} t SET {sets} FROM (SELECT DISTINCT ON (src) * FROM {used} "
            f"WHERE src IN (SELECT src FROM {table} WHERE hit)) m WHERE t.hit AND t.src = m.src")).rowcount
        wanted = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE hit")).scalar_one()
        if filled != wanted:
            raise SnapshotError(f"{ent.table}: {wanted - filled} of the rows staged from the memo of {ent.name} "
                                "are no longer in it; nothing was committed", connector=self.connector)

    def discard(self, keep: bool = False) -> None:
        """Stop the staging workers and drop the staging tables (``keep`` leaves them: for inspection,
        or for the next attempt to continue from). A merge begun ahead is stopped and rolled back first
        (its transaction reads the staging)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.abandon()
        if self._pool is not None:
            self._pool.abort()
            self._pool = None
        if keep:
            return
        with self.engine.begin() as conn:
            drop_staging(conn, self.snapshot_id)


class _Ahead:
    """The merge transaction of :meth:`SnapshotWriter.merge_ahead`: a thread merges the entities put
    to it, one after another, on a connection of its own (the server does the work; the thread waits
    on it without the GIL). :meth:`join` hands the open transaction to the commit; :meth:`abandon`
    cancels what runs and rolls everything back."""

    def __init__(self, writer: SnapshotWriter) -> None:
        self.writer = writer
        self.names: list[str] = []
        self.merged: dict[str, dict[str, int]] = {}
        self.error: BaseException | None = None
        self._todo: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.conn = writer.engine.connect()
        try:
            self.tx = self.conn.begin()
        except BaseException:
            self.conn.close()
            raise
        self._raw = self.conn.connection.driver_connection  # cancels the statement running (abandon)
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._work,),  # the log's context
                                        name=f"merge-ahead-{writer.snapshot_id}", daemon=True)
        self._thread.start()

    def put(self, name: str) -> None:
        self.names.append(name)
        self._todo.put(name)

    def _work(self) -> None:
        """Merge what is put; between merges, every ``AHEAD_POLL_SECONDS``, make sure the snapshot still
        owns the connector: a run that took it over (this one lost its session) must not wait for this
        transaction's locks until this run reaches its commit. Then the transaction ends here."""
        try:
            self.writer._open_merge(self.conn)
            while not self._stop.is_set():
                try:
                    name = self._todo.get(timeout=AHEAD_POLL_SECONDS)
                except queue.Empty:
                    self.writer._hold_snapshot(self.conn, lock=False)
                    continue
                if name is None:
                    break
                t = time.perf_counter()
                self.merged[name] = self.writer._merge(self.conn, ENTITIES[name])
                log.info("merged_ahead", entity=name, seconds=round(time.perf_counter() - t, 3))
        except BaseException as e:  # noqa: BLE001 - handed to the commit (or dropped by abandon)
            self.error = e
            with contextlib.suppress(Exception):
                self.tx.rollback()  # its locks go now, not when the run gets to its commit

    def raise_error(self) -> None:
        if self.error is not None:
            self.abandon()
            raise self.error

    def join(self) -> tuple[sa.Connection, sa.RootTransaction, dict[str, dict[str, int]]]:
        """Wait for what was put; the connection with its open transaction, and each entity's merge counts."""
        self._todo.put(None)
        self._thread.join()
        self.raise_error()
        return self.conn, self.tx, self.merged

    def abandon(self) -> None:
        """Stop the merge (a statement running is cancelled) and roll its transaction back."""
        self._stop.set()
        self._todo.put(None)
        while self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._raw.cancel_safe(timeout=5.0)
            self._thread.join(0.5)
        with contextlib.suppress(Exception):
            if self.tx.is_active:
                self.tx.rollback()
        with contextlib.suppress(Exception):
            self.conn.close()


def drop_staging(conn: sa.Connection, snapshot_id: int) -> int:
    """Drop every staging table of a snapshot (entities and their worker segments); returns how many."""
    tables = conn.execute(sa.text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'ingest_stage' AND tablename LIKE :p "
        "ORDER BY length(tablename)"), {"p": f"s{snapshot_id}\\_%"}).scalars().all()
    for table in tables:  # a parent first: CASCADE takes its segments with it
        conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))
    return len(tables)
