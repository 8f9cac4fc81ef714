"""One run of one connector = one snapshot. ``ingest run`` and the daemon both call :func:`run`."""

from __future__ import annotations

import contextvars
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

from ingest.config import LoadedConfig, ResolvedConnector
from ingest.connector import CAPABILITIES, ConnectorContext
from ingest.db import get_engine, migrate
from ingest.errors import AlreadyRunningError, Cancelled, IngestError, ListingChangedError, MassDeletionError
from ingest.http import CancelToken, using_token
from ingest.redact import redact
from ingest.writer import ENTITIES, SnapshotWriter

__all__ = ["RunResult", "Cancelled", "run", "interrupt_stale", "Progress"]

log = structlog.get_logger("ingest.runner")
_LOCK_NS = 1769  # advisory lock namespace: (1769, hashtext(connector)) = "a run of this connector"
_BATCH = 2000
RELISTS = 2  # a stream whose listing came back short (records deleted while paging) is listed again this often

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
        is_nested = (getattr(item, "entity", None) == "nested_entitlement"
                     or (isinstance(item, dict) and "member_entitlement_id" in item))
        return "nested_entitlement" if is_nested else "assignment"
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


def _prefetched(source: Iterable[Any], token: CancelToken, timings: _Timings,
                depth: int = 8) -> Iterator[list[Any]]:
    """Run ``source`` in a thread, handing batches over a bounded queue (fetch overlaps writing).

    ``timings.fetch`` gets the time the thread spent inside the connector (not waiting on the queue).
    When the consumer leaves early (an error, Ctrl-C, the run's token), the run's token is cancelled so
    the thread's waits end at once, and the thread is joined.
    """
    check = token.check
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        with using_token(token):  # the HTTP layer (and any fetcher) in this thread obeys the run's token
            _produce()

    def _produce() -> None:
        it = iter(source)
        clock = time.perf_counter
        started = clock()
        try:
            batch: list[Any] = []
            for item in it:
                if stop.is_set():  # cancelled or timed out: stop fetching now, not at the end of the source
                    return
                batch.append(item)
                if len(batch) >= _BATCH:
                    timings.fetch += clock() - started
                    while not stop.is_set():
                        try:
                            q.put(batch, timeout=0.2)
                            break
                        except queue.Full:
                            pass
                    if stop.is_set():
                        return
                    batch = []
                    started = clock()
            timings.fetch += clock() - started
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


def interrupt_stale(conn: sa.Connection, connector: str, reason: str | None = None) -> int:
    """Mark ``running`` snapshots of ``connector`` as ``interrupted`` (caller holds the run lock)."""
    rows = conn.execute(sa.text(
        "UPDATE ingest.snapshots SET status = 'interrupted', finished_at = now(), "
        "error = coalesce(error, :e) WHERE connector = :c AND status = 'running' RETURNING snapshot_id"),
        {"c": connector, "e": reason or "the process running this snapshot stopped before it finished"}).all()
    for (sid,) in rows:
        for ent in ENTITIES:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS ingest_stage.s{sid}_{ent}"))
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
) -> RunResult:
    """Take one snapshot of connector ``name``; never raises for a failed run (see ``RunResult``).

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
            sid = lock_conn.execute(sa.text(
                "INSERT INTO ingest.snapshots (connector, connector_type, trigger, scheduled_for, status, host, pid) "
                "VALUES (:c, :t, :tr, :sf, 'running', :h, :p) RETURNING snapshot_id"),
                {"c": name, "t": rc.type, "tr": trigger, "sf": scheduled_for, "h": socket.gethostname(),
                 "p": os.getpid()}).scalar_one()
            if on_snapshot:
                on_snapshot(sid)
            with structlog.contextvars.bound_contextvars(connector=name, snapshot_id=sid):
                result = _take(rc, sid, engine, lock_conn, started, token, progress, allow_mass_delete)
                if result.ok:  # derived stage: people, effective access, findings
                    from ingest.people import refresh_after_commit

                    refresh_after_commit(engine, loaded.config.identity, sid, name, cancel)
                return result
        finally:
            try:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:c))"), {"ns": _LOCK_NS, "c": name})
            except sa.exc.SQLAlchemyError as e:  # the session (and its lock) is gone already
                log.warning("run_lock_lost", connector=name, error=redact(str(e)))


def _take(rc: ResolvedConnector, sid: int, engine: sa.Engine, conn: sa.Connection, started: float,
          token: CancelToken, progress: Progress | None, allow_mass_delete: bool) -> RunResult:
    """Fetch, stage and commit; records the outcome. Ctrl-C (KeyboardInterrupt) marks the snapshot
    ``interrupted`` and is raised again once that is recorded."""
    log.info("snapshot_started", connector_type=rc.type)
    from ingest.credentials import CredentialStore

    check = token.check
    ctx = ConnectorContext(name=rc.name, settings=rc.settings, auth=rc.auth, state_dir=str(rc.data_dir),
                           credentials=CredentialStore.for_engine(engine, rc.data_dir), cancel=token)
    writer = SnapshotWriter(engine, rc.name, sid)
    timings = _Timings()
    if progress is not None:
        report = progress

        def progress(entity: str, n: int) -> None:
            report(entity, n, ctx.stats.requests)

    status, error, stats, keep_stage = "failed", None, {}, False
    interrupted: KeyboardInterrupt | None = None
    try:
        check()
        with rc.cls(ctx) as connector:
            for capability, records in connector.streams():
                check()
                log.info("stream_started", stream=capability)
                t = time.perf_counter()
                for attempt in range(RELISTS + 1):
                    try:
                        _stage_stream(writer, capability, records, token, progress, timings)
                        break
                    except ListingChangedError as e:
                        # staged rows of this stream are dropped and the stream listed again from the start:
                        # a short listing never becomes removals
                        for entity in _entities_of(capability):
                            writer.staged.pop(entity, None)
                        if attempt == RELISTS:
                            e.message = f"{e.message}; still short after listing the stream {RELISTS + 1} times"
                            e.stream = e.stream or capability
                            raise
                        log.warning("stream_relisted", stream=capability, attempt=attempt + 2,
                                    received=e.received, announced=e.announced)
                        check()
                        records = getattr(connector, capability)()
                elapsed = time.perf_counter() - t
                timings.stage += elapsed
                log.info("stream_staged", stream=capability, seconds=round(elapsed, 3),
                         records={e: s.fetched for e, s in writer.staged.items()})
            check()

            merge_started = time.perf_counter()

            def finish(c: sa.Connection, s: dict[str, Any]) -> None:
                s["http"] = ctx.stats.as_dict()
                timings.merge = time.perf_counter() - merge_started
                s["timings"] = timings.as_dict()
                s["peak_rss_mb"] = _peak_rss_mb()
                c.execute(sa.text(
                    "UPDATE ingest.snapshots SET status = 'succeeded', finished_at = now(), "
                    "stats = CAST(:s AS jsonb) WHERE snapshot_id = :sid"),
                    {"s": _json(s), "sid": sid})

            stats = writer.commit(max_deletion_ratio=rc.max_deletion_ratio, allow_mass_delete=allow_mass_delete,
                                  finish=finish)
            status = "succeeded"
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
    if status != "succeeded":
        try:
            writer.discard(keep=keep_stage)
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
                  progress: Progress | None, timings: _Timings) -> None:
    batches = _prefetched(records, token, timings)
    if capability != "find_entitlement_associations":
        writer.stage(CAPABILITIES[capability], batches, progress)
        return
    # Associations hold two entities: split them into two staging tables in one pass.
    nested: list[Any] = []

    def assignments() -> Iterator[list[Any]]:
        for batch in batches:
            if any(_entity_of(capability, item) == "nested_entitlement" for item in batch):
                nested.extend(item for item in batch if _entity_of(capability, item) == "nested_entitlement")
                batch = [item for item in batch if _entity_of(capability, item) != "nested_entitlement"]
            yield batch

    writer.stage("assignment", assignments(), progress)
    writer.stage("nested_entitlement", [nested], progress)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)
