"""Checkpoints: a run that died resumes from what it had staged.

A stream (a capability: ``list_accounts``, ...) of a connector that declares ``resumable = True``
is staged in segments. Each segment's rows commit together with one row of
``ingest.stage_checkpoints``: the pages covered (``page_seq``), where each of the stream's listings
stands and the counts of what is staged. The next attempt of the same run adopts the staging and
the checkpoints (:func:`adopt`), skips streams that were done and continues the others:

- a listing whose paginator is ``resumable`` (cursor, next link, Link header) continues at the
  page after the checkpoint's; if the source refuses the saved position, the stream starts over
  (:class:`ResumeRefused`);
- a fan-out (``for_each``, in parent order) continues at the parent after the last one done (its
  parents are listed again, and must start with the same ones);
- any other listing in progress (offset, page number, SCIM ``startIndex``: positions that shift
  when the list changed) makes its stream start over.

What survives a crash of the ingest process (SIGKILL, deploy, lost connection, daemon restart):
every committed segment. Staging stays UNLOGGED (no WAL for the bulk of a run): a crash of
PostgreSQL itself empties it, which :func:`adopt` detects (row counts no longer match the
checkpoints) and then starts those streams over.

:class:`Position` is the engine's side: the stream reader (``ingest.streams``) reads the saved
position of each listing from it and marks every page handed on; the runner turns marks into
segment boundaries.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from ingest import memo
from ingest.errors import SourceError

__all__ = ["Checkpoint", "Position", "ResumeRefused", "adopt", "config_hash", "current_position",
           "drop_staging", "forget_connector", "previous_attempt", "rename_staging", "resumable", "save",
           "set_position"]

log = structlog.get_logger("ingest.checkpoints")
RESUME_WITHIN = timedelta(hours=12)  # ``ingest run``: an unfinished attempt older than this starts over
_POSITION: contextvars.ContextVar[Position | None] = contextvars.ContextVar("ingest_position", default=None)


class ResumeRefused(SourceError):
    """The source no longer accepts where a resumed listing was (an expired cursor), or a fan-out's
    parents changed: the stream starts over."""


class Position:
    """Where one stream's listings stand; shared by the reader (which marks pages) and the runner.

    ``streams``: listing name -> ``{"from_seq", "done", "state", "resumable"}`` for a paged listing,
    ``{"from_seq", "done", "parents_done", "last_parent", "resumable"}`` for a fan-out. ``seq``
    counts the pages marked (a fan-out marks a parent done). ``on_mark(seq, streams)`` runs in the
    thread that reads the stream, right after the page's records were handed on.
    """

    def __init__(self, saved: dict[str, Any] | None = None, seq: int = 0,
                 on_mark: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self.saved = copy.deepcopy(saved or {})
        self.streams: dict[str, Any] = copy.deepcopy(saved or {})
        self.seq = seq
        self.on_mark = on_mark
        self.depth = 0  # listings read inside a tracked one (a fan-out's parents) are not tracked

    def saved_for(self, name: str) -> dict[str, Any] | None:
        return self.saved.get(name)

    def begin(self, name: str, resumable: bool) -> None:
        entry = self.streams.get(name)
        if entry is None or entry.get("done"):
            self.streams[name] = {"from_seq": self.seq + 1, "done": False, "resumable": resumable}

    def page(self, name: str, **where: Any) -> None:
        self.streams[name].update(where)
        self._mark()

    def done(self, name: str) -> None:
        self.streams[name] = {"from_seq": self.streams.get(name, {}).get("from_seq", self.seq + 1), "done": True}
        self._mark()

    def _mark(self) -> None:
        self.seq += 1
        if self.on_mark is not None:
            self.on_mark(self.seq, copy.deepcopy(self.streams))


def current_position() -> Position | None:
    """The position of the stream the current thread is reading, when the run checkpoints it."""
    return _POSITION.get()


def set_position(position: Position | None) -> None:
    _POSITION.set(position)


def resumable(positions: dict[str, Any]) -> bool:
    """Every listing in the positions is done or can continue where it stands."""
    return all(e.get("done") or e.get("resumable") for e in positions.values())


@dataclass
class Checkpoint:
    stream: str
    page_seq: int
    done: bool
    positions: dict[str, Any]
    counts: dict[str, Any]

    @property
    def resumable(self) -> bool:
        return self.done or resumable(self.positions)


def config_hash(connector_type: str, settings: Any) -> str:
    """What a later attempt must match to continue this one's staging (the connector's settings)."""
    data = settings.model_dump(mode="json") if hasattr(settings, "model_dump") else settings
    blob = json.dumps([connector_type, data], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _stage_tables(conn: sa.Connection, sid: int) -> list[str]:
    return list(conn.execute(sa.text(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'ingest_stage' AND tablename LIKE :p"),
        {"p": f"s{sid}\\_%"}).scalars())


def previous_attempt(conn: sa.Connection, connector: str, config: str, scheduled_for: datetime | None,
                     within: timedelta = RESUME_WITHIN) -> int | None:
    """The unfinished attempt (failed or interrupted, nothing succeeded since) a new run continues.

    The daemon continues an attempt of the same slot (``scheduled_for``); ``ingest run`` one that
    started less than ``within`` ago. The settings must be the same and it must have checkpoints.
    """
    row = conn.execute(sa.text(
        "SELECT snapshot_id, status, config_hash, scheduled_for, started_at > now() - CAST(:w AS interval) AS recent, "
        "EXISTS (SELECT 1 FROM ingest.stage_checkpoints c WHERE c.snapshot_id = s.snapshot_id) AS checkpoints "
        "FROM ingest.snapshots s WHERE connector = :c AND status <> 'running' "
        "ORDER BY snapshot_id DESC LIMIT 1"), {"c": connector, "w": f"{within.total_seconds()} seconds"}).first()
    if row is None or row.status not in ("failed", "interrupted") or not row.checkpoints:
        return None
    if row.config_hash != config:
        log.info("resume_skipped", connector=connector, previous_snapshot=row.snapshot_id,
                 reason="the connector's settings changed")
        return None
    if scheduled_for is not None:
        if row.scheduled_for != scheduled_for:
            return None
    elif not row.recent:
        log.info("resume_skipped", connector=connector, previous_snapshot=row.snapshot_id,
                 reason=f"it started more than {within} ago")
        return None
    return int(row.snapshot_id)


def drop_staging(conn: sa.Connection, connector: str, keep: int | None = None) -> int:
    """Drop the staging and checkpoints of failed / interrupted snapshots of ``connector`` (all but ``keep``)."""
    sids = conn.execute(sa.text(
        "SELECT DISTINCT s.snapshot_id FROM ingest.snapshots s JOIN pg_tables t ON t.schemaname = 'ingest_stage' "
        "AND t.tablename LIKE 's' || s.snapshot_id || '\\_%' "
        "WHERE s.connector = :c AND s.status IN ('failed', 'interrupted') AND s.snapshot_id IS DISTINCT FROM :k "
        "UNION SELECT c.snapshot_id FROM ingest.stage_checkpoints c JOIN ingest.snapshots s USING (snapshot_id) "
        "WHERE s.connector = :c AND s.status IN ('failed', 'interrupted') AND s.snapshot_id IS DISTINCT FROM :k"),
        {"c": connector, "k": keep}).scalars().all()
    for sid in sids:
        for table in _stage_tables(conn, sid):  # CASCADE: an entity's table takes its worker segments along
            conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))
        conn.execute(sa.text("DELETE FROM ingest.stage_checkpoints WHERE snapshot_id = :s"), {"s": sid})
    return len(sids)


def adopt(conn: sa.Connection, old: int, new: int, entities: Callable[[str], tuple[str, ...]]
          ) -> dict[str, Checkpoint]:
    """Move attempt ``old``'s staging and checkpoints to snapshot ``new`` (one transaction: ``conn``).

    Rows above a checkpoint are deleted; a stream whose staging no longer matches its checkpoint
    (PostgreSQL crashed: unlogged staging is emptied) or whose position cannot continue (an offset
    listing in progress) is dropped, so it starts over. Returns the checkpoints kept, by stream.
    """
    rows = conn.execute(sa.text(
        "SELECT stream, page_seq, done, positions, counts FROM ingest.stage_checkpoints WHERE snapshot_id = :o"),
        {"o": old}).all()
    tables = set(_stage_tables(conn, old))
    connector = conn.execute(sa.text("SELECT connector FROM ingest.snapshots WHERE snapshot_id = :o"),
                             {"o": old}).scalar()
    kept: dict[str, Checkpoint] = {}
    for r in rows:
        cp = Checkpoint(r.stream, r.page_seq, r.done, r.positions, r.counts)
        ents = entities(cp.stream)
        why = None if cp.resumable else "a listing in progress cannot continue where it stood (it starts over)"
        for ent in ents if why is None else ():
            table = f"s{old}_{ent}"
            if table not in tables:
                why = "its staging is gone"
                break
            conn.execute(sa.text(f'DELETE FROM ingest_stage."{table}" WHERE page_seq > :p'), {"p": cp.page_seq})
            staged = conn.execute(sa.text(f'SELECT count(*) FROM ingest_stage."{table}"')).scalar_one()
            c = cp.counts.get(ent, {})
            if staged != c.get("fetched", 0) - c.get("invalid", 0):
                why = f"its staging has {staged} rows where the checkpoint counted " \
                      f"{c.get('fetched', 0) - c.get('invalid', 0)} (PostgreSQL restarted?)"
                break
            if c.get("reused") and not memo.readable(conn, connector, ent, f'ingest_stage."{table}"'):
                why = "the memo its rows were staged from is gone (ingest.memo)"
                break
        if why is not None:
            log.warning("resume_stream_restarts", stream=cp.stream, previous_snapshot=old, reason=why)
            for ent in ents:
                conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."s{old}_{ent}" CASCADE'))
            continue
        for ent in ents:
            rename_staging(conn, f"s{old}_{ent}", f"s{new}_{ent}")
            # staged by a version without the memo's columns (ingest.memo): every table of it gets them
            conn.execute(sa.text(f'ALTER TABLE ingest_stage."s{new}_{ent}" ADD COLUMN IF NOT EXISTS src uuid, '
                                 'ADD COLUMN IF NOT EXISTS hit boolean'))
        kept[cp.stream] = cp
    for table in set(_stage_tables(conn, old)):  # staging of streams without a checkpoint
        conn.execute(sa.text(f'DROP TABLE IF EXISTS ingest_stage."{table}" CASCADE'))
    conn.execute(sa.text("DELETE FROM ingest.stage_checkpoints WHERE snapshot_id = :o"), {"o": old})
    for cp in kept.values():
        save_sa(conn, new, cp)
    return kept


def rename_staging(conn: sa.Connection, table: str, to: str) -> list[str]:
    """Rename staging table ``table`` (in ``ingest_stage``) to ``to``, and its worker segments (its
    children, named after it) along; returns the new names, the table's first."""
    children = conn.execute(sa.text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST(:t AS regclass)"), {"t": f'ingest_stage."{table}"'}).scalars().all()
    conn.execute(sa.text(f'ALTER TABLE ingest_stage."{table}" RENAME TO "{to}"'))
    for child in children:
        conn.execute(sa.text(f'ALTER TABLE ingest_stage."{child}" RENAME TO "{to}{child.removeprefix(table)}"'))
    return [to, *(to + child.removeprefix(table) for child in children)]


_UPSERT = ("INSERT INTO ingest.stage_checkpoints (snapshot_id, stream, page_seq, done, positions, counts) "
           "VALUES (%(sid)s, %(stream)s, %(seq)s, %(done)s, %(positions)s::jsonb, %(counts)s::jsonb) "
           "ON CONFLICT (snapshot_id, stream) DO UPDATE SET page_seq = excluded.page_seq, done = excluded.done, "
           "positions = excluded.positions, counts = excluded.counts, saved_at = now()")


def _params(sid: int, cp: Checkpoint) -> dict[str, Any]:
    return {"sid": sid, "stream": cp.stream, "seq": cp.page_seq, "done": cp.done,
            "positions": json.dumps(cp.positions, default=str), "counts": json.dumps(cp.counts, default=str)}


def save(conn: Any, sid: int, cp: Checkpoint) -> None:
    """Write ``cp`` through a psycopg connection, in the transaction that commits its rows."""
    conn.execute(_UPSERT, _params(sid, cp))


def save_sa(conn: sa.Connection, sid: int, cp: Checkpoint) -> None:
    conn.exec_driver_sql(_UPSERT, _params(sid, cp))


def forget_connector(conn: sa.Connection, connector: str) -> None:
    """Every checkpoint of ``connector`` (in the transaction that commits a snapshot of it)."""
    conn.execute(sa.text("DELETE FROM ingest.stage_checkpoints k USING ingest.snapshots s "
                         "WHERE s.snapshot_id = k.snapshot_id AND s.connector = :c"), {"c": connector})
