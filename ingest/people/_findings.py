"""Findings: what a reviewer should look at, computed from the current state after identity resolution.

The queries read the accounts in scope from the temp table ``_people_acc`` (one scan of the view for all
of them). Each query yields (kind, connector, account_id, identity_id, entitlement_id, detail, key_extra); the stage
keys a finding by kind, connector, account, entitlement and ``key_extra`` so that one that persists keeps
its ``since``.

* ``orphan_account``: a user account (not DEPROVISIONED) no person claims; ``detail.reason`` is
  ``no match`` or ``ambiguous`` (then ``candidates`` lists the people it could belong to). Service
  accounts are never orphans by themselves.
* ``leaver_with_access``: an ACTIVE account of a terminated person.
* ``dormant_account``: an ACTIVE account whose last activity is older than ``dormant_after_days``
  (accounts the source reports no activity for are not judged).
* ``privileged_access``: an account that reaches an entitlement whose label or id matches a
  ``privileged`` pattern, directly or through nesting (shortest path in ``detail.via``).
* ``new_privileged_grant``: privileged access that first appeared in its connector's latest snapshot
  (not on a connector's first snapshot, where everything is new); gone after its next snapshot.
* ``shared_service_account``: a service account linked to a person, or whose username is a service
  account in more than one connector.
"""

from __future__ import annotations

__all__ = ["FINDING_KINDS", "findings_sql", "NEW_PRIVILEGED_SQL"]

FINDING_KINDS = ("orphan_account", "leaver_with_access", "dormant_account", "privileged_access",
                 "new_privileged_grant", "shared_service_account")

# Reads the temp table _people_links (the resolution's links) and :privileged (text[]), :dormant_days.
_ORPHANS = """
SELECT 'orphan_account' AS kind, a.connector, a.account_id, NULL::uuid AS identity_id, NULL::text AS entitlement_id,
       jsonb_strip_nulls(jsonb_build_object(
           'reason', CASE WHEN l.candidates IS NULL THEN 'no match' ELSE 'ambiguous' END,
           'candidates', to_jsonb(l.candidates), 'username', a.username, 'email', a.email,
           'display_name', a.display_name, 'status', a.status)) AS detail,
       '' AS key_extra
FROM _people_acc a
JOIN _people_links l USING (connector, account_id)
WHERE l.identity_id IS NULL AND a.account_type <> 'service' AND a.status <> 'DEPROVISIONED' __SCOPE__
"""

_LEAVERS = """
SELECT 'leaver_with_access', a.connector, a.account_id, i.identity_id, NULL,
       jsonb_strip_nulls(jsonb_build_object('person', i.display_name, 'person_email', i.email,
                                            'username', a.username, 'email', a.email)),
       ''
FROM ingest.identities i
JOIN ingest.identity_accounts ia ON ia.identity_id = i.identity_id
JOIN _people_acc a ON a.connector = ia.connector AND a.account_id = ia.account_id
WHERE i.status = 'terminated' AND a.status = 'ACTIVE' __SCOPE__
"""

_DORMANT = """
SELECT 'dormant_account', a.connector, a.account_id, ia.identity_id, NULL,
       jsonb_strip_nulls(jsonb_build_object('last_activity_at', a.last_activity_at, 'username', a.username,
                                            'email', a.email, 'dormant_after_days', CAST(:dormant_days AS int))),
       ''
FROM _people_acc a
LEFT JOIN ingest.identity_accounts ia ON ia.connector = a.connector AND ia.account_id = a.account_id
WHERE a.status = 'ACTIVE' AND a.last_activity_at < now() - make_interval(days => CAST(:dormant_days AS int))
      __SCOPE__
"""

_PRIVILEGED = """
SELECT 'privileged_access', r.connector, r.account_id, ia.identity_id, r.entitlement_id,
       jsonb_strip_nulls(jsonb_build_object('label', r.label, 'resource_type', nullif(r.resource_type, ''),
                                            'resource_id', nullif(r.resource_id, ''), 'via', to_jsonb(r.via),
                                            'depth', r.depth, 'account_status', a.status, 'username', a.username)),
       r.resource_type || ':' || r.resource_id
FROM (
    -- the (few) ways to reach a privileged entitlement first, then one pass over the grants
    WITH t AS MATERIALIZED (
        SELECT connector, entitlement_id AS start_id, resource_type AS start_type, resource_id AS start_resource,
               entitlement_id AS target, resource_type, resource_id, label, '{}'::text[] AS via, 0 AS depth
        FROM _people_privileged
        UNION ALL
        SELECT p.connector, p.entitlement_id, NULL, NULL, p.reached_entitlement_id, p.resource_type, p.resource_id,
               pe.label, p.via, p.depth
        FROM _people_privileged pe
        JOIN ingest.entitlement_paths p ON p.connector = pe.connector AND p.reached_entitlement_id = pe.entitlement_id
             AND p.resource_type = pe.resource_type AND p.resource_id = pe.resource_id
    )
    SELECT DISTINCT ON (g.connector, g.account_id, t.target, t.resource_type, t.resource_id)
           g.connector, g.account_id, t.target AS entitlement_id, t.resource_type, t.resource_id, t.label, t.via,
           t.depth
    FROM t JOIN ingest.assignments g ON g.connector = t.connector AND g.entitlement_id = t.start_id
    WHERE t.start_type IS NULL OR (g.resource_type = t.start_type AND g.resource_id = t.start_resource)
    ORDER BY g.connector, g.account_id, t.target, t.resource_type, t.resource_id, t.depth, t.via
) r
JOIN _people_acc a ON a.connector = r.connector AND a.account_id = r.account_id __SCOPE__
LEFT JOIN ingest.identity_accounts ia ON ia.connector = r.connector AND ia.account_id = r.account_id
"""

_SHARED = """
SELECT 'shared_service_account', a.connector, a.account_id, ia.identity_id, NULL,
       jsonb_strip_nulls(jsonb_build_object(
           'linked_to_person', ia.identity_id IS NOT NULL, 'matched_by', ia.matched_by,
           'other_connectors', to_jsonb(array_remove(x.connectors, a.connector)), 'username', a.username,
           'email', a.email)),
       ''
FROM _people_acc a
LEFT JOIN ingest.identity_accounts ia ON ia.connector = a.connector AND ia.account_id = a.account_id
LEFT JOIN (SELECT name, array_agg(connector ORDER BY connector) AS connectors FROM _people_service
           GROUP BY name HAVING count(*) > 1) x ON x.name = lower(btrim(a.username))
WHERE a.account_type = 'service' AND (ia.identity_id IS NOT NULL OR x.name IS NOT NULL) __SCOPE__
"""


def findings_sql(connector: str | None = None) -> str:
    """Every finding but ``new_privileged_grant`` (which needs the others' ``since``); of one connector's
    accounts only when ``connector`` is given (a name checked by the config, safe as a literal)."""
    scope = "" if connector is None else "AND a.connector = '" + connector.replace("'", "''") + "'"
    return "\nUNION ALL\n".join((_ORPHANS, _LEAVERS, _DORMANT, _PRIVILEGED, _SHARED)).replace("__SCOPE__", scope)


# Open privileged_access findings that appeared with their connector's latest snapshot, when that
# connector had an earlier successful snapshot.
NEW_PRIVILEGED_SQL = """
SELECT 'new_privileged_grant' AS kind, f.connector, f.account_id, f.identity_id, f.entitlement_id, f.detail,
       coalesce(f.detail->>'resource_type', '') || ':' || coalesce(f.detail->>'resource_id', '') AS key_extra
FROM ingest.findings_history f
JOIN (SELECT connector, max(snapshot_id) AS latest, count(*) AS n FROM ingest.snapshots
      WHERE status = 'succeeded' GROUP BY connector) s ON s.connector = f.connector
WHERE f.kind = 'privileged_access' AND f.resolved IS NULL AND f.since = s.latest AND s.n > 1
"""
