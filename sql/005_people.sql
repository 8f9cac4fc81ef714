-- People and effective access: derived from the snapshots by the people stage (ingest/people/)
-- after every successful commit. Connectors and the writer never touch these tables.
--
--   identities          one row per person, resolved across connectors (identity: in schedules.yaml)
--   identity_accounts   account <-> person links, with the key that linked them
--   entitlement_paths   per connector, every entitlement a group reaches through nesting (shortest path)
--   effective_access    (view) direct grants plus everything they reach through nesting
--   findings_history    every finding with the snapshot it appeared in (since) and, once gone, resolved
--   findings            (view) the open findings
--
-- identities_at(ts) / identity_accounts_at(ts) depend on the identity: configuration, so the people
-- stage (re)creates them from it; effective_access_at(ts) and entitlement_paths_at(snapshot) are here.

CREATE TABLE ingest.identities (
    identity_id      uuid PRIMARY KEY,
    display_name     text,
    email            text,
    employee_id      text,
    status           text NOT NULL CHECK (status IN ('active', 'terminated')),
    source_connector text
);
CREATE INDEX identities_email_idx ON ingest.identities (lower(email));

CREATE TABLE ingest.identity_accounts (
    identity_id uuid NOT NULL,
    connector   text NOT NULL,
    account_id  text NOT NULL,
    matched_by  text NOT NULL CHECK (matched_by IN ('email', 'employee_id', 'username', 'rule', 'manual')),
    PRIMARY KEY (connector, account_id)
);
CREATE INDEX identity_accounts_identity_idx ON ingest.identity_accounts (identity_id);

-- Transitive closure of ingest.nested_entitlements, per connector: the group granted directly
-- (entitlement_id) reaches reached_entitlement_id through via (from the direct grant up to, not
-- including, the reached one), depth = cardinality(via) >= 1. Only the shortest path is kept (ties:
-- the smallest via), so a grant reached two ways appears once. Cycles are cut by the path check.
CREATE TABLE ingest.entitlement_paths (
    connector              text    NOT NULL,
    entitlement_id         text    NOT NULL,
    reached_entitlement_id text    NOT NULL,
    resource_type          text    NOT NULL DEFAULT '',
    resource_id            text    NOT NULL DEFAULT '',
    via                    text[]  NOT NULL,
    depth                  integer NOT NULL,
    PRIMARY KEY (connector, entitlement_id, reached_entitlement_id, resource_type, resource_id)
);

DO $do$
DECLARE
    -- one body, two inputs: the current views (refresh) or one snapshot's state (history)
    body text := $b$
        WITH RECURSIVE edges AS (
            SELECT connector, entitlement_id AS parent, member_entitlement_id AS child FROM %1$s
        ), walk (connector, start_id, reached, via) AS (
            SELECT connector, child, parent, ARRAY[child] FROM edges WHERE child <> parent
            UNION ALL
            SELECT w.connector, w.start_id, e.parent, w.via || w.reached
            FROM walk w JOIN edges e ON e.connector = w.connector AND e.child = w.reached
            WHERE e.parent <> ALL (w.via) AND e.parent <> w.reached
        )
        SELECT DISTINCT ON (w.connector, w.start_id, w.reached, coalesce(e.resource_type, ''), coalesce(e.resource_id, ''))
               w.connector, w.start_id, w.reached, coalesce(e.resource_type, ''), coalesce(e.resource_id, ''),
               w.via, cardinality(w.via)
        FROM walk w
        LEFT JOIN %2$s e ON e.connector = w.connector AND e.entitlement_id = w.reached
        ORDER BY w.connector, w.start_id, w.reached, coalesce(e.resource_type, ''), coalesce(e.resource_id, ''),
                 cardinality(w.via), w.via
    $b$;
BEGIN
    EXECUTE format($f$CREATE FUNCTION ingest.current_entitlement_paths(p_connector text)
        RETURNS SETOF ingest.entitlement_paths LANGUAGE sql STABLE AS $q$%s$q$$f$,
        format(body, '(SELECT * FROM ingest.nested_entitlements WHERE connector = p_connector) n',
                     '(SELECT * FROM ingest.entitlements WHERE connector = p_connector)'));
    EXECUTE format($f$CREATE FUNCTION ingest.entitlement_paths_at(p_snapshot_id bigint)
        RETURNS SETOF ingest.entitlement_paths LANGUAGE sql STABLE AS $q$%s$q$$f$,
        format(body, 'ingest.nested_entitlements_at(p_snapshot_id)', 'ingest.entitlements_at(p_snapshot_id)'));
END $do$;

-- Effective access: every direct grant (depth 0, via empty) and every entitlement it reaches through
-- nested groups; an entitlement reached several ways appears once, by its shortest path.
CREATE VIEW ingest.effective_access AS
SELECT DISTINCT ON (connector, account_id, entitlement_id, resource_type, resource_id)
       connector, account_id, entitlement_id, resource_type, resource_id, via, depth
FROM (
    SELECT g.connector, g.account_id, g.entitlement_id, g.resource_type, g.resource_id,
           '{}'::text[] AS via, 0 AS depth
    FROM ingest.assignments g
    UNION ALL
    SELECT g.connector, g.account_id, p.reached_entitlement_id, p.resource_type, p.resource_id, p.via, p.depth
    FROM ingest.assignments g
    JOIN ingest.entitlement_paths p ON p.connector = g.connector AND p.entitlement_id = g.entitlement_id
) x
ORDER BY connector, account_id, entitlement_id, resource_type, resource_id, depth, via;

-- As it was at a point in time: per connector, its last successful snapshot finished by then.
CREATE FUNCTION ingest.snapshots_as_of(p_at timestamptz)
RETURNS TABLE (connector text, snapshot_id bigint) LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (s.connector) s.connector, s.snapshot_id
    FROM ingest.snapshots s
    WHERE s.status = 'succeeded' AND s.finished_at <= p_at
    ORDER BY s.connector, s.snapshot_id DESC
$$;

CREATE FUNCTION ingest.effective_access_at(p_at timestamptz)
RETURNS SETOF ingest.effective_access LANGUAGE sql STABLE AS $$
    WITH s AS MATERIALIZED (SELECT * FROM ingest.snapshots_as_of(p_at)),
    g AS MATERIALIZED (SELECT a.* FROM s, LATERAL ingest.assignments_at(s.snapshot_id) a),
    p AS MATERIALIZED (SELECT x.* FROM s, LATERAL ingest.entitlement_paths_at(s.snapshot_id) x)
    SELECT DISTINCT ON (connector, account_id, entitlement_id, resource_type, resource_id)
           connector, account_id, entitlement_id, resource_type, resource_id, via, depth
    FROM (
        SELECT g.connector, g.account_id, g.entitlement_id, g.resource_type, g.resource_id,
               '{}'::text[] AS via, 0 AS depth
        FROM g
        UNION ALL
        SELECT g.connector, g.account_id, p.reached_entitlement_id, p.resource_type, p.resource_id, p.via, p.depth
        FROM g JOIN p ON p.connector = g.connector AND p.entitlement_id = g.entitlement_id
    ) x
    ORDER BY connector, account_id, entitlement_id, resource_type, resource_id, depth, via
$$;

-- Findings: one row per finding and life; `since` is the snapshot after which it first appeared,
-- `resolved` the one after which it was gone (NULL while open).
CREATE TABLE ingest.findings_history (
    finding_key    uuid        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('orphan_account', 'leaver_with_access', 'dormant_account',
                                                        'privileged_access', 'new_privileged_grant',
                                                        'shared_service_account')),
    connector      text        NOT NULL,
    account_id     text        NOT NULL,
    identity_id    uuid,
    entitlement_id text,
    detail         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    since          bigint      NOT NULL,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    resolved       bigint,
    resolved_at    timestamptz
);
CREATE UNIQUE INDEX findings_open_idx ON ingest.findings_history (finding_key) WHERE resolved IS NULL;
CREATE INDEX findings_identity_idx ON ingest.findings_history (identity_id) WHERE resolved IS NULL;

CREATE VIEW ingest.findings AS
SELECT kind, connector, account_id, identity_id, entitlement_id, detail, since
FROM ingest.findings_history WHERE resolved IS NULL;

-- What the people stage last did: the identity configuration it compiled and when.
CREATE TABLE ingest.people_state (
    id           integer PRIMARY KEY CHECK (id = 1),
    config       jsonb       NOT NULL,
    config_hash  text        NOT NULL,
    snapshot_id  bigint,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
