"""The SQL behind the CLI's read commands (status, snapshots, a connector's existence) and ``ingest sql``.

The CLI formats; the queries live here with bound parameters (STYLE: SQL has one home).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = ["has_snapshots", "last_snapshots", "last_successes", "run_sql", "snapshots_of"]


def _rows(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def last_snapshots(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """Per connector, its newest snapshot whatever its status."""
    return {r["connector"]: r for r in _rows(engine, """
        SELECT DISTINCT ON (connector) connector, snapshot_id, status, started_at, finished_at, stats, error
        FROM ingest.snapshots ORDER BY connector, snapshot_id DESC""")}


def last_successes(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """Per connector, its newest succeeded snapshot."""
    return {r["connector"]: r for r in _rows(engine, """
        SELECT DISTINCT ON (connector) connector, snapshot_id, finished_at, stats
        FROM ingest.snapshots WHERE status = 'succeeded' ORDER BY connector, snapshot_id DESC""")}


def snapshots_of(engine: sa.Engine, connector: str, limit: int) -> list[dict[str, Any]]:
    """A connector's snapshots, newest first."""
    return _rows(engine, """SELECT snapshot_id, connector, connector_type, trigger, scheduled_for, status,
                                   started_at, finished_at, stats, error
                            FROM ingest.snapshots WHERE connector = :c ORDER BY snapshot_id DESC LIMIT :l""",
                 c=connector, l=limit)


def has_snapshots(engine: sa.Engine, connector: str) -> bool:
    """Whether the database knows ``connector`` (a connector removed from the config keeps its history)."""
    return bool(_rows(engine, "SELECT 1 AS x FROM ingest.snapshots WHERE connector = :c LIMIT 1", c=connector))


def run_sql(engine: sa.Engine, query: str, *, write: bool = False) -> tuple[list[str], list[tuple]]:
    """Run one user query; returns (columns, rows).

    Without ``write`` the query runs as a single statement (the extended protocol refuses
    ``…; COMMIT; DROP …``) inside a ``READ ONLY`` transaction that is rolled back: PostgreSQL
    itself refuses INSERT, UPDATE, DELETE, DDL. With ``write`` it runs as given and commits.
    """
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection  # psycopg 3
        with conn.cursor() as cur:
            if write:
                cur.execute(query)
            else:
                with conn.pipeline():  # pipeline mode: the extended protocol, one statement per query
                    cur.execute("SET TRANSACTION READ ONLY")
                    cur.execute(query)
            cols = [d.name for d in cur.description] if cur.description else []
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
        if write:
            conn.commit()
        else:
            conn.rollback()
        return cols, rows
    except BaseException:
        raw.driver_connection.rollback()
        raise
    finally:
        raw.close()
