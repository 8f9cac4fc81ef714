"""Coordination through PostgreSQL: slot claims with leases, and the daemons table (sql/002_daemon.sql).

Exactly once per slot rests on two things the database guarantees:

* ``INSERT ... ON CONFLICT DO NOTHING`` on ``(connector, scheduled_for)``: of the
  daemons that fire a slot, one gets the row;
* the runner's session advisory lock on the connector: never two runs at once,
  and a dead process's lock goes with its connection.

A claim's owner renews ``lease_until`` on every heartbeat. Another daemon takes
over only a claim whose lease has passed, with a conditional ``UPDATE`` (one
winner), and only when the connector's run lock is free.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ingest.db import sqlalchemy_url

__all__ = ["OPEN", "Claims"]

OPEN = ("claimed", "waiting_retry", "released")
_LOCK_NS = 1769  # the runner's advisory lock namespace


class Claims:
    """One daemon's view of ``ingest.slot_claims`` and its row in ``ingest.daemons``."""

    def __init__(self, database_url: str, daemon_id: str, lease_seconds: float) -> None:
        # A small pool of its own: heartbeats must not queue behind the runs' connections.
        self.engine = sa.create_engine(
            sqlalchemy_url(database_url), pool_size=3, max_overflow=3, pool_pre_ping=True,
            connect_args={"application_name": "ingest-daemon", "connect_timeout": 5})
        self.daemon_id = daemon_id
        self.lease = float(lease_seconds)

    def _exec(self, sql: str, **params: Any) -> sa.CursorResult:
        with self.engine.begin() as conn:
            return conn.execute(sa.text(sql), {"me": self.daemon_id, "lease": self.lease, **params})

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            return conn.execute(sa.text(sql), {"me": self.daemon_id, "lease": self.lease, **params}).all()

    def close(self) -> None:
        self.engine.dispose()

    # -- the daemons table ----------------------------------------------------------------
    def register(self, *, listen: str | None, config_path: str, version: str) -> None:
        self._exec("""
            INSERT INTO ingest.daemons (daemon_id, host, pid, lease_seconds, listen, config_path, version)
            VALUES (:me, :host, :pid, :lease, :listen, :path, :version)""",
                   host=socket.gethostname(), pid=os.getpid(), listen=listen, path=config_path, version=version)
        # forget daemons that have not been heard of for a week
        self._exec("DELETE FROM ingest.daemons WHERE heartbeat_at < now() - interval '7 days'")

    def heartbeat(self, next_runs: dict[str, str], working: list[str], listen: str | None = None) -> int:
        """Renew this daemon's leases on the ``working`` connectors and publish its plan; returns leases renewed."""
        with self.engine.begin() as conn:
            renewed = conn.execute(sa.text(
                "UPDATE ingest.slot_claims SET lease_until = now() + make_interval(secs => :lease) "
                "WHERE daemon_id = :me AND status IN ('claimed', 'waiting_retry') AND connector = ANY(:names)"),
                {"me": self.daemon_id, "lease": self.lease, "names": working}).rowcount
            conn.execute(sa.text(
                "UPDATE ingest.daemons SET heartbeat_at = now(), next_runs = CAST(:nr AS jsonb), "
                "listen = coalesce(:listen, listen) WHERE daemon_id = :me"),
                {"me": self.daemon_id, "nr": json.dumps(next_runs), "listen": listen})
        return renewed

    def stopped(self) -> None:
        self._exec("UPDATE ingest.daemons SET stopped_at = now(), heartbeat_at = now(), next_runs = '{}' "
                   "WHERE daemon_id = :me")

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1

    # -- claims ---------------------------------------------------------------------------
    def claim(self, connector: str, slot: datetime) -> bool:
        """Take the slot; False when another daemon (or an earlier attempt) already has it."""
        return self._exec("""
            INSERT INTO ingest.slot_claims (connector, scheduled_for, daemon_id, lease_until)
            VALUES (:c, :s, :me, now() + make_interval(secs => :lease))
            ON CONFLICT (connector, scheduled_for) DO NOTHING RETURNING 1""", c=connector, s=slot).first() is not None

    def start_attempt(self, connector: str, slot: datetime, attempt: int) -> bool:
        """Mark attempt number ``attempt`` as running; False when the claim is no longer this daemon's."""
        return self._exec("""
            UPDATE ingest.slot_claims SET status = 'claimed', attempts = :a, not_before = NULL,
                   lease_until = now() + make_interval(secs => :lease)
            WHERE connector = :c AND scheduled_for = :s AND daemon_id = :me
              AND status IN ('claimed', 'waiting_retry')""", c=connector, s=slot, a=attempt).rowcount == 1

    def set_snapshot(self, connector: str, slot: datetime, snapshot_id: int) -> None:
        self._exec("UPDATE ingest.slot_claims SET snapshot_id = :sid WHERE connector = :c AND scheduled_for = :s",
                   c=connector, s=slot, sid=snapshot_id)

    def wait_retry(self, connector: str, slot: datetime, at: datetime, snapshot_id: int | None) -> None:
        self._exec("""
            UPDATE ingest.slot_claims SET status = 'waiting_retry', not_before = :at,
                   snapshot_id = coalesce(:sid, snapshot_id)
            WHERE connector = :c AND scheduled_for = :s AND daemon_id = :me""",
                   c=connector, s=slot, at=at, sid=snapshot_id)

    def release(self, connector: str, slot: datetime, snapshot_id: int | None = None) -> None:
        """Give the slot up unfinished: any daemon may take it over at once."""
        self._exec("""
            UPDATE ingest.slot_claims SET status = 'released', lease_until = now(),
                   snapshot_id = coalesce(:sid, snapshot_id)
            WHERE connector = :c AND scheduled_for = :s AND daemon_id = :me
              AND status IN ('claimed', 'waiting_retry')""", c=connector, s=slot, sid=snapshot_id)

    def release_all(self) -> int:
        """At shutdown: every claim still held goes back to the pool (a waiting retry keeps its time)."""
        return self._exec("""
            UPDATE ingest.slot_claims SET status = 'released', lease_until = now()
            WHERE daemon_id = :me AND status IN ('claimed', 'waiting_retry')""").rowcount

    def finish(self, connector: str, slot: datetime, status: str, snapshot_id: int | None) -> None:
        """Record the slot's outcome (whoever owns the claim now: the work is done)."""
        self._exec("""
            UPDATE ingest.slot_claims SET status = :st, finished_at = now(),
                   snapshot_id = coalesce(:sid, snapshot_id)
            WHERE connector = :c AND scheduled_for = :s AND status IN ('claimed', 'waiting_retry', 'released')""",
                   c=connector, s=slot, st=status, sid=snapshot_id)

    def abandon(self, connector: str, slot: datetime) -> bool:
        """A newer slot came: this one will not be finished (only an open claim with a passed lease)."""
        return self._exec("""
            UPDATE ingest.slot_claims SET status = 'abandoned', finished_at = now()
            WHERE connector = :c AND scheduled_for = :s AND status IN ('claimed', 'waiting_retry', 'released')
              AND (daemon_id = :me OR lease_until < now())""", c=connector, s=slot).rowcount == 1

    def abandon_mine(self, connectors: list[str]) -> int:
        """Connectors removed from the config: drop the retries this daemon still planned for them."""
        return self._exec("""
            UPDATE ingest.slot_claims SET status = 'abandoned', finished_at = now()
            WHERE daemon_id = :me AND connector = ANY(:names) AND status = 'waiting_retry'""",
                          names=list(connectors)).rowcount

    def expired(self, connectors: list[str]) -> list[Any]:
        """Open claims of these connectors whose lease has passed (and whose retry time, if any, has come)."""
        return self._rows("""
            SELECT connector, scheduled_for, daemon_id, status, attempts, lease_until, snapshot_id,
                   extract(epoch FROM now() - lease_until) AS expired_for
            FROM ingest.slot_claims
            WHERE status IN ('claimed', 'waiting_retry', 'released') AND lease_until < now()
              AND (not_before IS NULL OR not_before <= now()) AND connector = ANY(:names)
            ORDER BY scheduled_for""", names=list(connectors))

    def take_over(self, row: Any) -> bool:
        """Become the owner of an expired claim; False when another daemon was quicker."""
        return self._exec("""
            UPDATE ingest.slot_claims SET daemon_id = :me, status = 'claimed', claimed_at = now(),
                   lease_until = now() + make_interval(secs => :lease), takeovers = takeovers + 1
            WHERE connector = :c AND scheduled_for = :s AND daemon_id = :old AND status = :st
              AND lease_until < now()""",
                          c=row.connector, s=row.scheduled_for, old=row.daemon_id, st=row.status).rowcount == 1

    def lock_free(self, connector: str) -> bool:
        """Nobody holds the connector's run lock right now (a live run elsewhere holds it)."""
        with self.engine.connect() as conn:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:c))"),
                               {"ns": _LOCK_NS, "c": connector}).scalar()
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:c))"), {"ns": _LOCK_NS, "c": connector})
            conn.commit()
        return bool(got)

    def slot_outcome(self, connector: str, slot: datetime) -> tuple[int, str] | None:
        """A finished snapshot of that slot (succeeded or rejected), if one exists."""
        row = self._exec("""
            SELECT snapshot_id, status FROM ingest.snapshots
            WHERE connector = :c AND scheduled_for = :s AND status IN ('succeeded', 'rejected')
            ORDER BY snapshot_id DESC LIMIT 1""", c=connector, s=slot).first()
        return (row.snapshot_id, row.status) if row else None

    # -- what the snapshots say -----------------------------------------------------------
    def last_successes(self) -> dict[str, datetime]:
        return {r.connector: r.finished_at for r in self._rows("""
            SELECT DISTINCT ON (connector) connector, finished_at FROM ingest.snapshots
            WHERE status = 'succeeded' ORDER BY connector, snapshot_id DESC""")}

    def last_success(self, connector: str) -> datetime | None:
        row = self._exec("""
            SELECT finished_at FROM ingest.snapshots WHERE connector = :c AND status = 'succeeded'
            ORDER BY snapshot_id DESC LIMIT 1""", c=connector).first()
        return row.finished_at if row else None

    def last_runs(self) -> dict[str, Any]:
        """The newest finished snapshot of each connector."""
        return {r.connector: r for r in self._rows("""
            SELECT DISTINCT ON (connector) connector, snapshot_id, status, started_at, finished_at, stats
            FROM ingest.snapshots WHERE status <> 'running' ORDER BY connector, snapshot_id DESC""")}
