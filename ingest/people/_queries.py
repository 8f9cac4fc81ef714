"""Read side of the people stage: one person (``ingest who``) and the access review (``ingest report``)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from ingest.errors import IngestError
from ingest.people._findings import FINDING_KINDS

__all__ = ["PersonNotFound", "find_person", "person_detail", "report_data", "finding_rows"]


class PersonNotFound(IngestError):
    """No person (or several) answer to what ``ingest who`` was given."""


def _rows(conn: sa.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def find_person(conn: sa.Connection, query: str) -> dict[str, Any]:
    """The person whose identity id or e-mail is ``query``, else the one owning an account with that
    e-mail or username. Raises :class:`PersonNotFound` when none or several match."""
    q = query.strip()
    try:
        rows = _rows(conn, "SELECT * FROM ingest.identities WHERE identity_id = :i", i=uuid.UUID(q))
    except ValueError:
        rows = []
    if not rows:
        rows = _rows(conn, "SELECT * FROM ingest.identities WHERE lower(btrim(email)) = lower(:q) "
                           "ORDER BY identity_id", q=q)
    if not rows:
        rows = _rows(conn, """SELECT DISTINCT i.* FROM ingest.identities i
            JOIN ingest.identity_accounts ia USING (identity_id)
            JOIN ingest.accounts a ON a.connector = ia.connector AND a.account_id = ia.account_id
            WHERE lower(btrim(a.email)) = lower(:q) OR lower(btrim(a.username)) = lower(:q)
            ORDER BY i.identity_id""", q=q)
    if not rows:
        raise PersonNotFound(f"no person matches {query!r} (give an identity id, an e-mail address or a username; "
                             "see ingest.identities)")
    if len(rows) > 1:
        names = ", ".join(f"{r['identity_id']} ({r['email'] or r['display_name']})" for r in rows[:10])
        raise PersonNotFound(f"{query!r} matches {len(rows)} people: {names}; give the identity id")
    return rows[0]


def person_detail(conn: sa.Connection, identity_id: uuid.UUID) -> dict[str, Any]:
    """The person, every account of theirs with status and last activity, every effective grant with
    its path (ids and labels), and their open findings."""
    person = _rows(conn, "SELECT * FROM ingest.identities WHERE identity_id = :i", i=identity_id)[0]
    accounts = _rows(conn, """
        SELECT ia.connector, ia.account_id, a.username, a.email, a.display_name, a.status, a.account_type,
               a.last_activity_at, ia.matched_by
        FROM ingest.identity_accounts ia
        JOIN ingest.accounts a ON a.connector = ia.connector AND a.account_id = ia.account_id
        WHERE ia.identity_id = :i ORDER BY ia.connector, ia.account_id""", i=identity_id)
    access = _rows(conn, """
        SELECT x.connector, x.account_id, x.entitlement_id, e.label AS entitlement_label, e.entitlement_type,
               x.resource_type, x.resource_id, r.label AS resource_label, x.via,
               ARRAY(SELECT coalesce(v.label, u.id) FROM unnest(x.via) WITH ORDINALITY u(id, n)
                     LEFT JOIN LATERAL (SELECT label FROM ingest.entitlements v
                                        WHERE v.connector = x.connector AND v.entitlement_id = u.id LIMIT 1) v ON true
                     ORDER BY u.n) AS via_labels,
               x.depth
        FROM ingest.identity_accounts ia
        JOIN ingest.effective_access x ON x.connector = ia.connector AND x.account_id = ia.account_id
        LEFT JOIN ingest.entitlements e ON e.connector = x.connector AND e.entitlement_id = x.entitlement_id
             AND e.resource_type = x.resource_type AND e.resource_id = x.resource_id
        LEFT JOIN ingest.resources r ON r.connector = x.connector AND r.resource_type = x.resource_type
             AND r.resource_id = x.resource_id
        WHERE ia.identity_id = :i
        ORDER BY x.connector, x.account_id, x.depth, e.label, x.entitlement_id""", i=identity_id)
    findings = _rows(conn, """
        SELECT kind, connector, account_id, entitlement_id, detail, since FROM ingest.findings
        WHERE identity_id = :i ORDER BY kind, connector, account_id, entitlement_id""", i=identity_id)
    return {"person": person, "accounts": accounts, "access": access, "findings": findings}


def finding_rows(conn: sa.Connection, kind: str) -> list[dict[str, Any]]:
    """Open findings of one kind with the account and person beside them (one CSV per kind)."""
    return _rows(conn, """
        SELECT f.kind, f.connector, f.account_id, a.username, a.email AS account_email, a.status AS account_status,
               f.identity_id, i.display_name AS person, i.email AS person_email, f.entitlement_id,
               f.detail->>'label' AS entitlement_label, f.since, s.finished_at AS since_at, f.detail
        FROM ingest.findings f
        LEFT JOIN ingest.accounts a ON a.connector = f.connector AND a.account_id = f.account_id
        LEFT JOIN ingest.identities i ON i.identity_id = f.identity_id
        LEFT JOIN ingest.snapshots s ON s.snapshot_id = f.since
        WHERE f.kind = :k ORDER BY f.connector, a.username, f.account_id, f.entitlement_id""", k=kind)


def _count(conn: sa.Connection, sql: str, **params: Any) -> int:
    return int(conn.execute(sa.text(sql), params).scalar() or 0)


def report_data(conn: sa.Connection, days: int = 90, top: int = 20, limit: int = 500) -> dict[str, Any]:
    """Everything the access review shows, read in one transaction."""
    by_kind_connector = _rows(conn, "SELECT kind, connector, count(*) AS n FROM ingest.findings GROUP BY 1, 2")
    connectors = _rows(conn, """
        SELECT s.connector, s.connector_type, s.snapshot_id, s.finished_at,
               (SELECT count(*) FROM ingest.accounts a WHERE a.connector = s.connector) AS accounts,
               (SELECT count(*) FROM ingest.accounts a WHERE a.connector = s.connector AND a.status = 'ACTIVE')
                   AS active_accounts,
               (SELECT count(*) FROM ingest.accounts a WHERE a.connector = s.connector AND a.account_type = 'service')
                   AS service_accounts,
               (SELECT count(*) FROM ingest.identity_accounts ia WHERE ia.connector = s.connector) AS linked_accounts,
               (SELECT count(*) FROM ingest.entitlements e WHERE e.connector = s.connector) AS entitlements,
               (SELECT count(*) FROM ingest.assignments g WHERE g.connector = s.connector) AS grants,
               (SELECT count(*) FROM ingest.entitlement_paths p WHERE p.connector = s.connector) AS nested_paths
        FROM (SELECT DISTINCT ON (connector) * FROM ingest.snapshots WHERE status = 'succeeded'
              ORDER BY connector, snapshot_id DESC) s
        ORDER BY s.connector""")
    matrix = {c["connector"]: {k: 0 for k in FINDING_KINDS} for c in connectors}
    for r in by_kind_connector:
        matrix.setdefault(r["connector"], {k: 0 for k in FINDING_KINDS})[r["kind"]] = r["n"]
    totals = {k: sum(m[k] for m in matrix.values()) for k in FINDING_KINDS}
    top_privileged = _rows(conn, """
        SELECT i.identity_id, i.display_name, i.email, i.status, count(*) AS privileged,
               count(DISTINCT f.connector) AS connectors,
               array_agg(DISTINCT coalesce(f.detail->>'label', f.entitlement_id)) AS entitlements
        FROM ingest.findings f JOIN ingest.identities i USING (identity_id)
        WHERE f.kind = 'privileged_access'
        GROUP BY i.identity_id, i.display_name, i.email, i.status
        ORDER BY count(*) DESC, i.display_name, i.identity_id LIMIT :top""", top=top)
    trends = _rows(conn, """
        WITH s AS (
            SELECT connector, finished_at,
                   coalesce((stats->'account'->>'added')::bigint, 0) + coalesce((stats->'account'->>'modified')::bigint, 0)
                   + coalesce((stats->'account'->>'unchanged')::bigint, 0) AS accounts,
                   coalesce((stats->'assignment'->>'added')::bigint, 0)
                   + coalesce((stats->'assignment'->>'modified')::bigint, 0)
                   + coalesce((stats->'assignment'->>'unchanged')::bigint, 0) AS grants
            FROM ingest.snapshots WHERE status = 'succeeded'
        ), days AS (
            SELECT d::date AS day, d + interval '1 day' AS day_end
            FROM generate_series(greatest(date_trunc('day', (SELECT min(finished_at) FROM s)),
                                          date_trunc('day', now()) - make_interval(days => :days - 1)),
                                 date_trunc('day', now()), interval '1 day') d
        )
        SELECT d.day,
               (SELECT coalesce(sum(accounts), 0) FROM (SELECT DISTINCT ON (connector) accounts FROM s
                    WHERE s.finished_at < d.day_end ORDER BY connector, finished_at DESC) x) AS accounts,
               (SELECT coalesce(sum(grants), 0) FROM (SELECT DISTINCT ON (connector) grants FROM s
                    WHERE s.finished_at < d.day_end ORDER BY connector, finished_at DESC) x) AS grants,
               (SELECT count(*) FROM ingest.findings_history f WHERE f.opened_at < d.day_end
                    AND (f.resolved_at IS NULL OR f.resolved_at >= d.day_end)) AS findings
        FROM days d ORDER BY d.day""", days=days)
    people = _rows(conn, "SELECT status, count(*) AS n FROM ingest.identities GROUP BY status")
    return {
        "people": {r["status"]: r["n"] for r in people},
        "accounts": _count(conn, "SELECT count(*) FROM ingest.accounts"),
        "grants": _count(conn, "SELECT count(*) FROM ingest.assignments"),
        "findings_total": sum(totals.values()),
        "findings_by_kind": totals,
        "matrix": matrix,
        "connectors": connectors,
        "top_privileged": top_privileged,
        "leavers": finding_rows(conn, "leaver_with_access")[:limit],
        "dormant": finding_rows(conn, "dormant_account")[:limit],
        "trends": trends,
        "limit": limit,
    }
