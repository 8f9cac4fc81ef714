"""The people stage: after a successful snapshot, bring identities, identity links, entitlement paths
and findings up to date from the current state, in one transaction (readers see the previous
state until it commits), serialized across processes by an advisory lock.

Tables are updated by difference (rows that did not change are not written), so the cost after a
small churn is the resolution query, not a rewrite of a million rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import structlog

from ingest.config import IdentityConfig
from ingest.people._findings import NEW_PRIVILEGED_SQL, findings_sql
from ingest.people._resolve import compile_resolution, history_functions

__all__ = ["refresh", "ensure_functions", "mark_stale"]

log = structlog.get_logger("ingest.people")
_LOCK = "ingest:people"


_LINK_COLUMNS = "connector, account_id, identity_id, matched_by, candidates"
_PEOPLE_COLUMNS = "identity_id, display_name, email, employee_id, status, source_connector"


def _config_json(cfg: IdentityConfig | None) -> dict[str, Any]:
    return {"configured": cfg is not None, **(cfg or IdentityConfig()).model_dump(mode="json")}


def ensure_functions(conn: sa.Connection, cfg: IdentityConfig | None) -> bool:
    """(Re)create ``identities_at`` / ``identity_accounts_at`` when the identity configuration changed
    since they were made; True when it did."""
    doc = _config_json(cfg)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    row = conn.execute(sa.text("SELECT config_hash FROM ingest.people_state WHERE id = 1")).first()
    exists = conn.execute(sa.text("SELECT to_regprocedure('ingest.identities_at(timestamptz)') IS NOT NULL")).scalar()
    if row is not None and row[0] == digest and exists:
        return False
    for stmt in history_functions(cfg):
        conn.exec_driver_sql(stmt)
    conn.execute(sa.text("""
        INSERT INTO ingest.people_state (id, config, config_hash) VALUES (1, CAST(:c AS jsonb), :h)
        ON CONFLICT (id) DO UPDATE SET config = EXCLUDED.config, config_hash = EXCLUDED.config_hash"""),
        {"c": json.dumps(doc), "h": digest})
    return True


def _exec(conn: sa.Connection, sql: str, **params: Any) -> int:
    return conn.execute(sa.text(sql), params).rowcount


def refresh(engine: sa.Engine, cfg: IdentityConfig | None, snapshot_id: int,
            connector: str | None = None, on_backend: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Bring the people tables up to date after ``snapshot_id`` (of ``connector``) committed.

    A snapshot of an app (a connector that is not an identity source) changes neither the people nor
    any other connector's links: only that connector's entitlement paths, links and findings are
    recomputed (``scope`` = the connector). A source's snapshot, the first refresh, a changed identity
    configuration, e-mail-only resolution (no sources) or a refresh after a failed one recompute
    everything (``scope`` = all). Returns counts and seconds per step (also logged as
    ``people_refreshed``).
    """
    cfg_or_default = cfg or IdentityConfig()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, started: list[float] = [t0]) -> None:  # noqa: B006 - a running clock
        now = time.perf_counter()
        timings[name] = round(now - started[0], 3)
        started[0] = now

    counts: dict[str, Any] = {}
    with engine.begin() as conn:
        if on_backend is not None:  # lets a caller cancel the refresh (pg_cancel_backend) on shutdown
            on_backend(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": _LOCK})
        conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
        previous = conn.execute(sa.text("SELECT snapshot_id FROM ingest.people_state WHERE id = 1")).scalar()
        changed_config = ensure_functions(conn, cfg)
        scoped = (connector is not None and previous is not None and not changed_config
                  and bool(cfg_or_default.sources) and connector not in cfg_or_default.sources)
        scope = connector if scoped else None
        counts["scope"] = scope or "all"

        # 1. entitlement paths (nesting)
        names = [connector] if scoped else [r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT connector FROM ingest.snapshots WHERE status = 'succeeded'"))]
        if not scoped:  # connectors that no longer have data keep no paths
            _exec(conn, "DELETE FROM ingest.entitlement_paths WHERE connector <> ALL (CAST(:n AS text[]))", n=names)
        for name in names:
            _exec(conn, "CREATE TEMP TABLE _people_paths ON COMMIT DROP AS "
                        "SELECT * FROM ingest.current_entitlement_paths(:c)", c=name)
            removed = _exec(conn, """DELETE FROM ingest.entitlement_paths p WHERE p.connector = :c AND NOT EXISTS (
                SELECT 1 FROM _people_paths n WHERE (n.entitlement_id, n.reached_entitlement_id, n.resource_type,
                    n.resource_id, n.via) = (p.entitlement_id, p.reached_entitlement_id, p.resource_type,
                    p.resource_id, p.via))""", c=name)
            # what is left equals the new rows where keys meet: the primary key skips those (an anti-join
            # against the table being filled would be planned as if it were empty)
            added = _exec(conn, "INSERT INTO ingest.entitlement_paths SELECT * FROM _people_paths "
                                "ON CONFLICT DO NOTHING")
            conn.execute(sa.text("DROP TABLE _people_paths"))
            counts.setdefault("paths", {})[name] = {"added": added, "removed": removed}
        lap("paths_s")

        # 2. identity resolution (compiled SQL holds literals that must not be read as bind parameters)
        res = compile_resolution(cfg, connector=scope)
        if scope is None:
            # links and people in one statement: the accounts are read, keyed and sorted into anchors once
            # (as two statements each did it again: 2.1 + 1.4 s at 300,000 accounts, e-mail only)
            conn.exec_driver_sql("CREATE TEMP TABLE _people_both ON COMMIT DROP AS " + res.query(
                f"SELECT true AS is_link, {_LINK_COLUMNS}, NULL::text AS display_name, NULL::text AS email, "
                "NULL::text AS employee_id, NULL::text AS status, NULL::text AS source_connector FROM links "
                "UNION ALL SELECT false, NULL::text, NULL::text, identity_id, NULL::text, NULL::uuid[], "
                "display_name, email, employee_id, status, source_connector FROM people"))
            conn.exec_driver_sql(f"CREATE TEMP TABLE _people_links ON COMMIT DROP AS SELECT {_LINK_COLUMNS} "
                                 "FROM _people_both WHERE is_link")
            conn.exec_driver_sql(f"CREATE TEMP TABLE _people_new ON COMMIT DROP AS SELECT {_PEOPLE_COLUMNS} "
                                 "FROM _people_both WHERE NOT is_link")
            conn.exec_driver_sql("DROP TABLE _people_both")
        else:
            conn.exec_driver_sql("CREATE TEMP TABLE _people_links ON COMMIT DROP AS " + res.query(
                f"SELECT {_LINK_COLUMNS} FROM links WHERE connector = " + _literal(scope)))
        conn.execute(sa.text("ANALYZE _people_links"))
        lap("resolve_s")
        # rows already there: new ones are then added by an anti-join (one pass over each side) rather than
        # by the unique-index probe per row ON CONFLICT alone costs (300,000 accounts, none new: identities
        # 0.47-0.75 -> 0.09-0.14 s, links 0.67-0.73 -> 0.18-0.19 s); into empty tables (a first refresh)
        # the plain insert is the faster (an anti-join there cost 1.3 s more)
        had_people, had_links = conn.execute(sa.text(
            "SELECT EXISTS (SELECT 1 FROM ingest.identities), EXISTS (SELECT 1 FROM ingest.identity_accounts)")).one()
        if scope is None:
            conn.execute(sa.text("ANALYZE _people_new"))
            counts["identities"] = {
                "removed": _exec(conn, """DELETE FROM ingest.identities i WHERE NOT EXISTS (
                    SELECT 1 FROM _people_new n WHERE n.identity_id = i.identity_id)"""),
                "modified": _exec(conn, """UPDATE ingest.identities i SET display_name = n.display_name,
                        email = n.email, employee_id = n.employee_id, status = n.status,
                        source_connector = n.source_connector
                    FROM _people_new n WHERE n.identity_id = i.identity_id
                      AND (i.display_name, i.email, i.employee_id, i.status, i.source_connector) IS DISTINCT FROM
                          (n.display_name, n.email, n.employee_id, n.status, n.source_connector)"""),
                "added": _exec(conn, "INSERT INTO ingest.identities SELECT * FROM _people_new n"
                               + (" WHERE NOT EXISTS (SELECT 1 FROM ingest.identities i WHERE i.identity_id = "
                                  "n.identity_id)" if had_people else "") + " ON CONFLICT DO NOTHING"),
            }
        in_scope = "" if scope is None else " AND t.connector = :c"
        counts["identity_accounts"] = {
            "removed": _exec(conn, f"""DELETE FROM ingest.identity_accounts t WHERE NOT EXISTS (
                SELECT 1 FROM _people_links n WHERE n.connector = t.connector AND n.account_id = t.account_id
                  AND n.identity_id = t.identity_id AND n.matched_by = t.matched_by){in_scope}""", c=scope),
            "added": _exec(conn, """INSERT INTO ingest.identity_accounts (identity_id, connector, account_id, matched_by)
                SELECT identity_id, connector, account_id, matched_by FROM _people_links n
                WHERE identity_id IS NOT NULL""" + ("""  AND NOT EXISTS (SELECT 1 FROM ingest.identity_accounts t
                    WHERE t.connector = n.connector AND t.account_id = n.account_id AND t.identity_id = n.identity_id
                      AND t.matched_by = n.matched_by)""" if had_links else "") + " ON CONFLICT DO NOTHING"),
        }
        counts["ambiguous"] = conn.execute(sa.text(
            "SELECT count(*) FROM _people_links WHERE candidates IS NOT NULL")).scalar()
        lap("identities_s")

        # 3. findings
        conn.execute(sa.text(f"""CREATE TEMP TABLE _people_privileged ON COMMIT DROP AS
            SELECT connector, entitlement_id, resource_type, resource_id, label FROM ingest.entitlements
            WHERE (label ~ ANY (CAST(:p AS text[])) OR entitlement_id ~ ANY (CAST(:p AS text[])))
            {"" if scope is None else "AND connector = :c"}"""), {"p": list(cfg_or_default.privileged), "c": scope})
        conn.execute(sa.text(f"""CREATE TEMP TABLE _people_acc ON COMMIT DROP AS
            SELECT connector, account_id, email, username, display_name, status, account_type, last_activity_at
            FROM ingest.accounts {"" if scope is None else "WHERE connector = :c"}"""), {"c": scope})
        conn.execute(sa.text("ANALYZE _people_acc"))
        conn.execute(sa.text("""CREATE TEMP TABLE _people_service ON COMMIT DROP AS
            SELECT DISTINCT connector, lower(btrim(username)) AS name FROM ingest.accounts
            WHERE account_type = 'service' AND nullif(btrim(username), '') IS NOT NULL"""))
        conn.execute(sa.text("ANALYZE _people_privileged"))
        conn.execute(sa.text("ANALYZE _people_service"))
        if scope is None:  # plans of the findings depend on how many people and links there now are
            conn.execute(sa.text("ANALYZE ingest.identities"))
            conn.execute(sa.text("ANALYZE ingest.identity_accounts"))
        conn.execute(sa.text(f"""CREATE TEMP TABLE _people_findings ON COMMIT DROP AS
            SELECT md5(kind || '|' || connector || '|' || account_id || '|' || coalesce(entitlement_id, '') || '|'
                       || key_extra)::uuid AS finding_key, *
            FROM ({findings_sql(scope)}) f"""), {"dormant_days": cfg_or_default.dormant_after_days})
        conn.execute(sa.text("ANALYZE _people_findings"))
        where = "kind <> 'new_privileged_grant'" + ("" if scope is None else " AND connector = " + _literal(scope))
        counts["findings"] = _apply_findings(conn, snapshot_id, where)
        conn.execute(sa.text("DROP TABLE _people_findings"))
        conn.execute(sa.text(f"""CREATE TEMP TABLE _people_findings ON COMMIT DROP AS
            SELECT md5(kind || '|' || connector || '|' || account_id || '|' || coalesce(entitlement_id, '') || '|'
                       || key_extra)::uuid AS finding_key, *
            FROM ({NEW_PRIVILEGED_SQL}) f"""))
        new_priv = _apply_findings(conn, snapshot_id, "kind = 'new_privileged_grant'")
        counts["findings"] = {k: counts["findings"][k] + new_priv[k] for k in counts["findings"]}
        lap("findings_s")
        conn.execute(sa.text("UPDATE ingest.people_state SET snapshot_id = :s, refreshed_at = now() WHERE id = 1"),
                     {"s": snapshot_id})
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    log.info("people_refreshed", snapshot_id=snapshot_id, **counts, **timings)
    return {**counts, **timings}


def mark_stale(engine: sa.Engine) -> None:
    """After a failed refresh: the next one recomputes everything (a scoped one would miss what failed)."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ingest.people_state SET snapshot_id = NULL WHERE id = 1"))


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _apply_findings(conn: sa.Connection, snapshot_id: int, scope: str) -> dict[str, int]:
    """Resolve open findings (within ``scope``) no longer found, update the detail of those still there,
    open the new ones with ``since`` = ``snapshot_id``."""
    resolved = _exec(conn, f"""UPDATE ingest.findings_history h SET resolved = :s, resolved_at = now()
        WHERE h.resolved IS NULL AND {scope} AND NOT EXISTS (
            SELECT 1 FROM _people_findings n WHERE n.finding_key = h.finding_key)""", s=snapshot_id)
    _exec(conn, """UPDATE ingest.findings_history h SET detail = n.detail, identity_id = n.identity_id
        FROM _people_findings n WHERE h.resolved IS NULL AND h.finding_key = n.finding_key
          AND (h.detail, h.identity_id) IS DISTINCT FROM (n.detail, n.identity_id)""")
    opened = _exec(conn, """INSERT INTO ingest.findings_history
            (finding_key, kind, connector, account_id, identity_id, entitlement_id, detail, since)
        SELECT DISTINCT ON (finding_key) finding_key, kind, connector, account_id, identity_id, entitlement_id,
               detail, :s
        FROM _people_findings n ORDER BY finding_key
        ON CONFLICT (finding_key) WHERE resolved IS NULL DO NOTHING""",
                   s=snapshot_id)
    return {"opened": opened, "resolved": resolved}
