"""One run of one connector = one snapshot. ``ingest run`` and the daemon both call :func:`run`."""

from __future__ import annotations

import contextlib
import contextvars
import gc
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog

from ingest import checkpoints, pages
from ingest.checkpoints import Checkpoint, Position, ResumeRefused
from ingest.config import LoadedConfig, ResolvedConnector
from ingest.connector import CAPABILITIES, ConnectorContext
from ingest.db import get_engine, migrate
from ingest.errors import AlreadyRunningError, Cancelled, IngestError, ListingChangedError, MassDeletionError
from ingest.http import CancelToken, using_token
from ingest.pages import Undecoded
from ingest.redact import redact
from ingest.staging import GC_THRESHOLD, is_nested
from ingest.writer import SnapshotWriter

__all__ = ["RunResult", "Cancelled", "run", "interrupt_stale", "Progress"]

log = structlog.get_logger("ingest.runner")
_LOCK_NS = 1769  # advisory lock namespace: (1769, hashtext(connector)) = "a run of this connector"
_BATCH = 500
RELISTS = 2  # a stream whose listing came back short (records deleted while paging) is listed again this often
# a checkpointed stream commits what it staged this often (and whenever the source is slow to answer)
CHECKPOINT_SECONDS = float(os.environ.get("INGEST_CHECKPOINT_SECONDS", "30"))

Progress = Callable[[str, int, int], None]  # (entity, records so far, HTTP requests so far)


@dataclass
class RunResult:
    connector: str
    snapshot_id: int | None
    status: str
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def _entity_of(capability: str, item: Any) -> str:
    if capability == "find_entitlement_associations":
        return "nested_entitlement" if is_nested(item) else "assignment"
    return CAPABILITIES[capability]


class _Timings:
    """Seconds per phase: ``fetch`` (inside the connector), ``stage`` (validate + COPY), ``merge``."""

    def __init__(self) -> None:
        self.fetch = self.stage = self.merge = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"fetch_s": round(self.fetch, 3), "stage_s": round(self.stage, 3), "merge_s": round(self.merge, 3)}


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Batch(list):
    """Records handed from the fetch thread to staging: ``seq`` is their page of the stream, ``mark`` the
    stream's position once they are staged (set on the last batch of a page of a checkpointed stream)."""

    __slots__ = ("seq", "mark")

    def __init__(self, seq: int = 0) -> None:
        super().__init__()
        self.seq = seq
        self.mark: dict[str, Any] | None = None


_IDLE = _Batch()  # the fetch side handed nothing for a while (checkpointed streams only)


def _prefetched(source: Iterable[Any], token: CancelToken, timings: _Timings, depth: int = 3,
                position: Position | None = None, undecoded: bool = False) -> Iterator[list[Any]]:
    """Run ``source`` in a thread, handing batches over a bounded queue (fetch overlaps writing).

    ``timings.fetch`` gets the time the thread spent inside the connector (not waiting on the queue).
    When the consumer leaves early (an error, Ctrl-C, the run's token), the run's token is cancelled so
    the thread's waits end at once, and the thread is joined.

    With a ``position`` (a checkpointed stream), the reader's marks end batches: every page's last
    batch carries the position after it (``_Batch.mark``), and ``_IDLE`` comes when nothing arrived
    for half a second (staging may commit what it has).

    ``undecoded``: the source may hand on pages undecoded (:mod:`ingest.pages`); each is a batch of its
    own, with the ``seq`` of the page it is.
    """
    check = token.check
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()
    waited = [0.0]  # seconds the fetch thread waited on the queue from inside the connector (marks)

    def produce() -> None:
        with using_token(token):  # the HTTP layer (and any fetcher) in this thread obeys the run's token
            checkpoints.set_position(position)
            pages.hand_on(undecoded)
            _produce()

    def put(batch: list[Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(batch, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def _produce() -> None:
        it = iter(source)
        clock = time.perf_counter
        started = clock()
        batch = _Batch(1 + position.seq if position is not None else 0)

        def on_mark(seq: int, streams: dict[str, Any]) -> None:  # runs inside next(it): a page was handed on
            nonlocal batch
            t = clock()
            batch.seq, batch.mark = seq, streams
            if not put(batch):
                raise Cancelled("the run stopped")
            batch = _Batch(seq + 1)
            waited[0] += clock() - t

        def hand(b: Any) -> bool:  # the time since the last hand-over (less the marks' waits) was fetching
            nonlocal started
            timings.fetch += clock() - started - waited[0]
            handed = put(b)
            started, waited[0] = clock(), 0.0
            return handed

        if position is not None:
            position.on_mark = on_mark
        try:
            for item in it:
                if stop.is_set():  # cancelled or timed out: stop fetching now, not at the end of the source
                    return
                if type(item) is Undecoded:  # a page as it came: a batch by itself, after what came before
                    if batch:
                        if not hand(batch):
                            return
                        batch = _Batch(batch.seq)
                    item.seq = batch.seq
                    if not hand(item):
                        return
                    continue
                batch.append(item)
                if len(batch) >= _BATCH:
                    if not hand(batch):
                        return
                    batch = _Batch(batch.seq)
            timings.fetch += clock() - started - waited[0]
            q.put(batch)
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    t = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="ingest-fetch", daemon=True)
    t.start()
    producer_ended = False
    try:
        while True:
            try:
                got = q.get(timeout=0.5)
            except queue.Empty:
                check()
                if position is not None:
                    yield _IDLE
                continue
            if got is done:
                producer_ended = True
                return
            if isinstance(got, BaseException):
                producer_ended = True
                raise got
            check()
            yield got
    finally:
        stop.set()
        if not producer_ended:  # the consumer left early: whatever the producer waits on must end now
            token.cancel("the run stopped")
        # drain so a blocked producer can see the stop flag
        while t.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
            t.join(timeout=0.1)


class _Segments:
    """Cuts a checkpointed stream's batches into segments, each committed with its checkpoint.

    A segment ends after a page's last batch once ``every`` seconds passed, or when the fetch side
    is idle (a slow source: what is staged commits now), but only where every listing of the stream
    could continue from the mark (a listing in progress that cannot resume gains nothing from it).
    ``pending`` is the (seq, positions) the segment covers; ``ended`` once the stream is done.
    """

    def __init__(self, batches: Iterable[list[Any]], every: float) -> None:
        self._it = iter(batches)
        self.every = every
        self.ended = False
        self.pending: tuple[int, dict[str, Any]] | None = None

    def next(self) -> Iterator[list[Any]]:
        started = time.monotonic()
        self.pending = None
        last: tuple[int, dict[str, Any]] | None = None
        at_mark = False
        for batch in self._it:
            if batch is _IDLE:
                if at_mark and last is not None and checkpoints.resumable(last[1]):
                    self.pending = last
                    return
                continue
            yield batch
            mark = getattr(batch, "mark", None)
            if mark is not None:
                last, at_mark = (batch.seq, mark), True
                if checkpoints.resumable(mark) and time.monotonic() - started >= self.every:
                    self.pending = last
                    return
            elif batch:
                at_mark = False
        self.ended = True


# The cyclic GC's youngest generation is collected every 700 container allocations by default; decoding
# and mapping pages allocates millions of dicts that die young by reference counting (no cycles), and the
# collections cost the run's process ~25-40 % of its CPU on SCIM pages. While runs take snapshots the
# thresholds are raised to staging.GC_THRESHOLD (cyclic garbage is still collected, less often).
_gc_lock = threading.Lock()
_gc_users: list[tuple[int, ...]] = []  # the thresholds before the first run that is still going


@contextlib.contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Raise the GC's thresholds while at least one run (of this process) is in here."""
    with _gc_lock:
        if not _gc_users:
            _gc_users.append(gc.get_threshold())
            gc.set_threshold(*GC_THRESHOLD)
        else:
            _gc_users.append(GC_THRESHOLD)
    try:
        yield
    finally:
        with _gc_lock:
            before = _gc_users.pop()
            if not _gc_users:
                gc.set_threshold(*before)


def interrupt_stale(conn: sa.Connection, connector: str, reason: str | None = None) -> int:
    """Mark ``running`` snapshots of ``connector`` as ``interrupted`` (caller holds the run lock).

    Their staging stays: the next run continues from it or drops it (:mod:`ingest.checkpoints`)."""
    rows = conn.execute(sa.text(
        "UPDATE ingest.snapshots SET status = 'interrupted', finished_at = now(), "
        "error = coalesce(error, :e) WHERE connector = :c AND status = 'running' RETURNING snapshot_id"),
        {"c": connector, "e": reason or "the process running this snapshot stopped before it finished"}).all()
    for (sid,) in rows:
        log.warning("snapshot_interrupted", connector=connector, snapshot_id=sid)
    return len(rows)


def run(
    loaded: LoadedConfig,
    name: str,
    *,
    database_url: str,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    allow_mass_delete: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    timeout: float | None = None,
    on_snapshot: Callable[[int], None] | None = None,
    fresh: bool = False,
) -> RunResult:
    """Take one snapshot of connector ``name``; never raises for a failed run (see ``RunResult``).

    For a connector that checkpoints its streams (``Connector.resumable``), the run continues the last
    attempt that died (failed or interrupted) from what it had staged: the daemon an attempt of the
    same slot (``scheduled_for``), ``ingest run`` one that started less than
    :data:`ingest.checkpoints.RESUME_WITHIN` ago, with the same settings. ``fresh`` starts over.

    Raises :class:`AlreadyRunningError` when another run of the connector holds its lock,
    and :class:`ConfigError` for an unknown name.
    """
    rc: ResolvedConnector = loaded.connector(name)
    engine = get_engine(database_url)
    migrate(engine)
    started = time.monotonic()
    timeout = timeout if timeout is not None else rc.timeout
    # One token for the whole run: the daemon's cancel event, the timeout and Ctrl-C all end up here, and
    # every wait of the HTTP layer (Retry-After, backoff, rate limit, look-ahead) wakes up on it.
    token = CancelToken(deadline=started + timeout if timeout else None,
                        timeout_message=f"timed out after {timeout:g} s" if timeout else "timed out",
                        parent=cancel, parent_message="stopped: the daemon is shutting down")

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock_conn:
        got = lock_conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:c))"),
                                {"ns": _LOCK_NS, "c": name}).scalar()
        if not got:
            raise AlreadyRunningError(f"another run of {name!r} is in progress", connector=name)
        try:
            interrupt_stale(lock_conn, name)
            config = checkpoints.config_hash(rc.type, rc.settings)
            previous = None
            if getattr(rc.cls, "resumable", False) and not fresh:
                previous = checkpoints.previous_attempt(lock_conn, name, config, scheduled_for)
            checkpoints.drop_staging(lock_conn, name, keep=previous)
            sid = lock_conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, scheduled_for, status, host, pid, "
                "config_hash) VALUES (:c, :t, :tr, :sf, 'running', :h, :p, :ch) RETURNING snapshot_id"),
                {"c": name, "t": rc.type, "tr": trigger, "sf": scheduled_for, "h": socket.gethostname(),
                 "p": os.getpid(), "ch": config}).scalar_one()
            saved: dict[str, Checkpoint] = {}
            if previous is not None:
                with engine.begin() as conn:
                    saved = checkpoints.adopt(conn, previous, sid, _entities_of)
                log.info("snapshot_resumes", connector=name, snapshot_id=sid, previous_snapshot=previous,
                         streams={k: ("done" if v.done else v.page_seq) for k, v in saved.items()})
            if on_snapshot:
                on_snapshot(sid)
            with structlog.contextvars.bound_contextvars(connector=name, snapshot_id=sid):
                committed: list[SnapshotWriter] = []
                with fewer_gc_passes():
                    result = _take(rc, sid, engine, lock_conn, started, token, progress, allow_mass_delete,
                                   (previous, saved), committed)
                if result.ok:  # derived stage: people, effective access, findings
                    from ingest.people import refresh_after_commit

                    if committed and not (cancel is not None and cancel.is_set()):
                        committed[0].vacuum_loaded()  # a bulk load's pages, before anything reads them

                    refresh_after_commit(engine, loaded.config.identity, sid, name, cancel)
                return result
        finally:
            try:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:c))"), {"ns": _LOCK_NS, "c": name})
            except sa.exc.SQLAlchemyError as e:  # the session (and its lock) is gone already
                log.warning("run_lock_lost", connector=name, error=redact(str(e)))


def _take(rc: ResolvedConnector, sid: int, engine: sa.Engine, conn: sa.Connection, started: float,
          token: CancelToken, progress: Progress | None, allow_mass_delete: bool,
          resume: tuple[int | None, dict[str, Checkpoint]] = (None, {}),
          committed: list[SnapshotWriter] | None = None) -> RunResult:
    """Fetch, stage and commit; records the outcome. Ctrl-C (KeyboardInterrupt) marks the snapshot
    ``interrupted`` and is raised again once that is recorded. ``resume``: the attempt this one
    continues and the checkpoints adopted from it, by stream. ``committed`` gets the writer once
    the snapshot committed (its work after the commit is the caller's)."""
    log.info("snapshot_started", connector_type=rc.type)
    from ingest.credentials import CredentialStore

    check = token.check
    ctx = ConnectorContext(name=rc.name, settings=rc.settings, auth=rc.auth, state_dir=str(rc.data_dir),
                           credentials=CredentialStore.for_engine(engine, rc.data_dir), cancel=token)
    writer = SnapshotWriter(engine, rc.name, sid, workers=rc.stage_workers)
    timings = _Timings()
    if progress is not None:
        report = progress

        def progress(entity: str, n: int) -> None:
            report(entity, n, ctx.stats.requests)

    status, error, stats, keep_stage = "failed", None, {}, False
    interrupted: KeyboardInterrupt | None = None
    tracked = getattr(rc.cls, "resumable", False)
    previous, saved = resume
    resumed: dict[str, Any] = {}
    complete: set[str] = set()  # entities whose streams are staged: merged ahead of the rest (merge_ahead)
    try:
        check()
        with rc.cls(ctx) as connector:
            for capability, records in connector.streams():
                check()
                cp = saved.get(capability)
                if cp is not None:
                    for entity in _entities_of(capability):
                        writer.restore(entity, cp.counts.get(entity, {}))
                    resumed[capability] = {"page_seq": cp.page_seq, "done": cp.done,
                                           "records": {e: cp.counts.get(e, {}).get("fetched", 0)
                                                       for e in _entities_of(capability)}}
                    if cp.done:
                        log.info("stream_resumed", stream=capability, skipped="staged before")
                        complete.update(_entities_of(capability))
                        writer.merge_ahead(complete)
                        continue
                position = Position(cp.positions, cp.page_seq) if cp is not None else Position() if tracked else None
                log.info("stream_started", stream=capability, resumed_at=cp.page_seq if cp is not None else None)
                t = time.perf_counter()
                relists = refused = 0
                while True:
                    try:
                        _stage_stream(writer, capability, records, token, progress, timings, position,
                                      append=cp is not None)
                        break
                    except (ListingChangedError, ResumeRefused) as e:
                        # staged rows of this stream are dropped and the stream listed again from the start:
                        # a short listing never becomes removals; a refused resume starts over
                        for entity in _entities_of(capability):
                            writer.staged.pop(entity, None)
                        if isinstance(e, ResumeRefused):
                            if refused:
                                raise
                            refused += 1
                            log.warning("stream_restarted", stream=capability, reason=e.message)
                            resumed.setdefault(capability, {})["restarted"] = e.message
                        else:
                            if relists == RELISTS:
                                e.message = f"{e.message}; still short after listing the stream {RELISTS + 1} times"
                                e.stream = e.stream or capability
                                raise
                            relists += 1
                            log.warning("stream_relisted", stream=capability, attempt=relists + 1,
                                        received=e.received, announced=e.announced)
                        cp, position = None, Position() if tracked else None
                        check()
                        records = getattr(connector, capability)()
                elapsed = time.perf_counter() - t
                timings.stage += elapsed
                log.info("stream_staged", stream=capability, seconds=round(elapsed, 3),
                         records={e: s.fetched for e, s in writer.staged.items()})
                complete.update(_entities_of(capability))
                writer.merge_ahead(complete)
            check()

            merge_started = time.perf_counter()

            def finish(c: sa.Connection, s: dict[str, Any]) -> None:
                s["http"] = ctx.stats.as_dict()
                timings.merge = time.perf_counter() - merge_started
                s["timings"] = timings.as_dict()
                s["peak_rss_mb"] = _peak_rss_mb()
                if previous is not None:
                    s["resumed"] = {"from_snapshot": previous, "streams": resumed}
                checkpoints.forget_connector(c, rc.name)  # committed: nothing of this connector to continue
                c.execute(sa.text(
                    "UPDATE ingest.snapshots SET status = 'succeeded', finished_at = now(), "
                    "stats = CAST(:s AS jsonb) WHERE snapshot_id = :sid"),
                    {"s": _json(s), "sid": sid})

            stats = writer.commit(max_deletion_ratio=rc.max_deletion_ratio, allow_mass_delete=allow_mass_delete,
                                  finish=finish)
            status = "succeeded"
            if committed is not None:
                committed.append(writer)
    except MassDeletionError as e:
        status, error, keep_stage = "rejected", str(e), True
        stats = getattr(e, "stats", {})
    except Cancelled as e:
        status, error = e.status, str(e)
    except IngestError as e:
        if token.reason is not None:  # a stream that failed because the run was being stopped
            error, status = token.reason
        else:
            error = str(e)
    except KeyboardInterrupt as e:  # Ctrl-C: recorded as interrupted, then raised again
        token.cancel("interrupted (Ctrl-C)")
        status, error, interrupted = "interrupted", "interrupted (Ctrl-C)", e
    except Exception as e:  # a bug or a database error: still recorded, never partial
        error = f"{type(e).__name__}: {e}"
        log.exception("snapshot_crashed")
    duration = time.monotonic() - started
    error = redact(error) if error else None
    stats.setdefault("http", ctx.stats.as_dict())
    stats.setdefault("timings", timings.as_dict())
    stats.setdefault("peak_rss_mb", _peak_rss_mb())
    stats["duration_s"] = round(duration, 3)
    if previous is not None:
        stats.setdefault("resumed", {"from_snapshot": previous, "streams": resumed})
    if status != "succeeded":
        try:  # a checkpointed run keeps its staging: the next attempt continues from it (or drops it)
            writer.discard(keep=keep_stage or tracked)
        except Exception:
            log.warning("stage_cleanup_failed")
        try:
            conn.execute(sa.text(
                "UPDATE ingest.snapshots SET status = :st, finished_at = now(), error = :e, "
                "stats = CAST(:s AS jsonb) WHERE snapshot_id = :sid"),
                {"st": status, "e": error, "s": _json(stats), "sid": sid})
        except Exception as e:
            log.error("snapshot_status_not_recorded", error=redact(str(e)))
        log.error("snapshot_" + status, error=error, duration_s=round(duration, 3))
        if interrupted is not None:
            raise interrupted
    else:
        conn.execute(sa.text("UPDATE ingest.snapshots SET stats = stats || CAST(:s AS jsonb) "
                             "WHERE snapshot_id = :sid"), {"s": _json({"duration_s": stats["duration_s"]}),
                                                            "sid": sid})
        log.info("snapshot_committed", duration_s=round(duration, 3),
                 **{k: {x: v.get(x) for x in ("added", "modified", "removed")}
                    for k, v in stats.items() if isinstance(v, dict) and "added" in v})
    return RunResult(rc.name, sid, status, stats, error, duration)


def _entities_of(capability: str) -> tuple[str, ...]:
    if capability == "find_entitlement_associations":
        return ("assignment", "nested_entitlement")
    return (CAPABILITIES[capability],)


def _stage_stream(writer: SnapshotWriter, capability: str, records: Iterable[Any], token: CancelToken,
                  progress: Progress | None, timings: _Timings, position: Position | None = None,
                  append: bool = False) -> None:
    """Stage one stream: one transaction, or (``position``: checkpointed) one per segment, each with
    its checkpoint. ``append``: staging continues an earlier attempt's."""
    entities = _entities_of(capability)
    segments = _Segments(_prefetched(records, token, timings, position=position, undecoded=writer.workers > 0),
                         CHECKPOINT_SECONDS if position is not None else float("inf"))
    create = not append
    while not segments.ended:
        # associations hold two entities: staging them as assignments puts their nested groups aside,
        # staged into their own table in the same transaction as the segment
        aside: list[tuple[int, list[Any]]] = []
        batches = segments.next()

        def then(conn: Any, create: bool = create, aside: list[tuple[int, list[Any]]] = aside) -> None:
            if len(entities) > 1:
                writer.copy_into(conn, entities[1], aside, create=create)
            if position is not None:
                seq, streams = (position.seq, position.streams) if segments.ended else segments.pending
                checkpoints.save(conn, writer.snapshot_id, Checkpoint(
                    capability, seq, segments.ended, streams, {e: writer.counts(e) for e in entities}))

        writer.stage(entities[0], batches, progress, append=not create, then=then, analyze=False, check=token.check,
                     divert=aside if len(entities) > 1 else None)
        create = False
        if position is not None and not segments.ended:
            log.info("stream_checkpointed", stream=capability, page_seq=segments.pending[0],
                     records={e: writer.staged[e].fetched for e in entities if e in writer.staged})
    for entity in entities:
        writer.analyze(entity)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
