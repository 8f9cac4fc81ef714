-- ingest schema, version 1: snapshots, versioned history, current views,
-- point-in-time functions and the changes view.
--
-- Every *_history table holds one row per version of an object:
--   key_hash  md5 of (connector, key columns)   -- one current row per key_hash
--   row_hash  md5 of the non-key columns       -- equal hash = unchanged
--   valid_from / valid_to                      -- snapshot ids; valid_to NULL = current

CREATE SCHEMA IF NOT EXISTS ingest;
CREATE SCHEMA IF NOT EXISTS ingest_stage;

CREATE TABLE ingest.snapshots (
    snapshot_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector      text        NOT NULL,
    connector_type text        NOT NULL,
    trigger        text        NOT NULL CHECK (trigger IN ('schedule', 'manual')),
    scheduled_for  timestamptz,
    status         text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'rejected')),
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    stats          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error          text,
    host           text,
    pid            integer
);
CREATE INDEX snapshots_connector_idx ON ingest.snapshots (connector, snapshot_id DESC);
CREATE INDEX snapshots_running_idx ON ingest.snapshots (connector) WHERE status = 'running';

CREATE TABLE ingest.accounts_history (
    connector         text   NOT NULL,
    account_id        text   NOT NULL,
    email             text,
    username          text,
    display_name      text,
    given_name        text,
    family_name       text,
    status            text   NOT NULL,
    account_type      text   NOT NULL,
    custom_attributes jsonb  NOT NULL DEFAULT '{}'::jsonb,
    extra             jsonb  NOT NULL DEFAULT '{}'::jsonb,
    last_activity_at  timestamptz,
    key_hash          uuid   NOT NULL,
    row_hash          uuid   NOT NULL,
    valid_from        bigint NOT NULL,
    valid_to          bigint
);

CREATE TABLE ingest.resources_history (
    connector            text   NOT NULL,
    resource_type        text   NOT NULL,
    resource_id          text   NOT NULL,
    label                text,
    description          text,
    parent_resource_type text,
    parent_resource_id   text,
    extra                jsonb  NOT NULL DEFAULT '{}'::jsonb,
    key_hash             uuid   NOT NULL,
    row_hash             uuid   NOT NULL,
    valid_from           bigint NOT NULL,
    valid_to             bigint
);

CREATE TABLE ingest.entitlements_history (
    connector        text    NOT NULL,
    entitlement_type text    NOT NULL,
    resource_type    text    NOT NULL DEFAULT '',
    resource_id      text    NOT NULL DEFAULT '',
    entitlement_id   text    NOT NULL,
    label            text,
    description      text,
    is_assignable    boolean NOT NULL DEFAULT true,
    extra            jsonb   NOT NULL DEFAULT '{}'::jsonb,
    key_hash         uuid    NOT NULL,
    row_hash         uuid    NOT NULL,
    valid_from       bigint  NOT NULL,
    valid_to         bigint
);

CREATE TABLE ingest.assignments_history (
    connector      text   NOT NULL,
    account_id     text   NOT NULL,
    entitlement_id text   NOT NULL,
    resource_type  text   NOT NULL DEFAULT '',
    resource_id    text   NOT NULL DEFAULT '',
    key_hash       uuid   NOT NULL,
    row_hash       uuid   NOT NULL,
    valid_from     bigint NOT NULL,
    valid_to       bigint
);

CREATE TABLE ingest.nested_entitlements_history (
    connector             text   NOT NULL,
    entitlement_id        text   NOT NULL,
    member_entitlement_id text   NOT NULL,
    key_hash              uuid   NOT NULL,
    row_hash              uuid   NOT NULL,
    valid_from            bigint NOT NULL,
    valid_to              bigint
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'resources', 'entitlements', 'assignments', 'nested_entitlements'] LOOP
        -- one current version per key; the merge joins on it
        EXECUTE format('CREATE UNIQUE INDEX %1$s_current_idx ON ingest.%1$s_history (key_hash) WHERE valid_to IS NULL', t);
        -- rows are appended in snapshot order, so a BRIN index finds a snapshot's new versions
        -- at almost no cost per inserted row (a btree here doubles the cost of a first load)
        EXECUTE format('CREATE INDEX %1$s_from_idx ON ingest.%1$s_history USING brin (valid_from) WITH (pages_per_range = 16)', t);
        EXECUTE format('CREATE INDEX %1$s_to_idx ON ingest.%1$s_history (valid_to) WHERE valid_to IS NOT NULL', t);
        -- closed versions by key: grows with change only; lets `changes` pair a version with
        -- the one it replaced by lookups instead of rescans
        EXECUTE format('CREATE INDEX %1$s_closed_key_idx ON ingest.%1$s_history (key_hash) WHERE valid_to IS NOT NULL', t);
    END LOOP;
END $$;

-- Current state -----------------------------------------------------------

CREATE VIEW ingest.accounts AS
SELECT connector, account_id, email, username, display_name, given_name, family_name, status,
       account_type, custom_attributes, extra, last_activity_at
FROM ingest.accounts_history WHERE valid_to IS NULL;

CREATE VIEW ingest.resources AS
SELECT connector, resource_type, resource_id, label, description, parent_resource_type,
       parent_resource_id, extra
FROM ingest.resources_history WHERE valid_to IS NULL;

CREATE VIEW ingest.entitlements AS
SELECT connector, entitlement_type, resource_type, resource_id, entitlement_id, label, description,
       is_assignable, extra
FROM ingest.entitlements_history WHERE valid_to IS NULL;

CREATE VIEW ingest.assignments AS
SELECT connector, account_id, entitlement_id, resource_type, resource_id
FROM ingest.assignments_history WHERE valid_to IS NULL;

CREATE VIEW ingest.nested_entitlements AS
SELECT connector, entitlement_id, member_entitlement_id
FROM ingest.nested_entitlements_history WHERE valid_to IS NULL;

CREATE VIEW ingest.access AS
SELECT g.connector,
       g.account_id, a.email, a.username, a.display_name, a.status AS account_status, a.account_type,
       g.entitlement_id, e.entitlement_type, e.label AS entitlement_label, e.is_assignable,
       g.resource_type, g.resource_id, r.label AS resource_label
FROM ingest.assignments g
LEFT JOIN ingest.accounts a ON a.connector = g.connector AND a.account_id = g.account_id
LEFT JOIN ingest.entitlements e ON e.connector = g.connector AND e.entitlement_id = g.entitlement_id
      AND e.resource_type = g.resource_type AND e.resource_id = g.resource_id
LEFT JOIN ingest.resources r ON r.connector = g.connector AND r.resource_type = g.resource_type
      AND r.resource_id = g.resource_id;

-- Point in time: exactly the rows a snapshot saw -----------------------------

CREATE FUNCTION ingest.accounts_at(p_snapshot_id bigint) RETURNS SETOF ingest.accounts
LANGUAGE sql STABLE AS $$
    SELECT connector, account_id, email, username, display_name, given_name, family_name, status,
           account_type, custom_attributes, extra, last_activity_at
    FROM ingest.accounts_history h
    WHERE h.connector = (SELECT connector FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id)
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id)
$$;

CREATE FUNCTION ingest.resources_at(p_snapshot_id bigint) RETURNS SETOF ingest.resources
LANGUAGE sql STABLE AS $$
    SELECT connector, resource_type, resource_id, label, description, parent_resource_type,
           parent_resource_id, extra
    FROM ingest.resources_history h
    WHERE h.connector = (SELECT connector FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id)
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id)
$$;

CREATE FUNCTION ingest.entitlements_at(p_snapshot_id bigint) RETURNS SETOF ingest.entitlements
LANGUAGE sql STABLE AS $$
    SELECT connector, entitlement_type, resource_type, resource_id, entitlement_id, label, description,
           is_assignable, extra
    FROM ingest.entitlements_history h
    WHERE h.connector = (SELECT connector FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id)
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id)
$$;

CREATE FUNCTION ingest.assignments_at(p_snapshot_id bigint) RETURNS SETOF ingest.assignments
LANGUAGE sql STABLE AS $$
    SELECT connector, account_id, entitlement_id, resource_type, resource_id
    FROM ingest.assignments_history h
    WHERE h.connector = (SELECT connector FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id)
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id)
$$;

CREATE FUNCTION ingest.nested_entitlements_at(p_snapshot_id bigint) RETURNS SETOF ingest.nested_entitlements
LANGUAGE sql STABLE AS $$
    SELECT connector, entitlement_id, member_entitlement_id
    FROM ingest.nested_entitlements_history h
    WHERE h.connector = (SELECT connector FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id)
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id)
$$;

-- Changes: derived from the history, so they cost no storage and cannot drift ----

-- One branch per entity and kind of change, so a filter on snapshot_id reaches the
-- valid_from / valid_to indexes of each history table.
DO $$
DECLARE
    parts text[] := ARRAY[]::text[];
    spec text[];
    ent_key text := $k$CASE WHEN h.resource_id = '' THEN h.entitlement_id ELSE h.resource_type || ':' || h.resource_id || ':' || h.entitlement_id END$k$;
    strip text := $s$ - ARRAY['key_hash', 'row_hash', 'valid_from', 'valid_to']$s$;
BEGIN
    FOREACH spec SLICE 1 IN ARRAY ARRAY[
        ARRAY['accounts', 'account', 'h.account_id'],
        ARRAY['resources', 'resource', $r$h.resource_type || ':' || h.resource_id$r$],
        ARRAY['entitlements', 'entitlement', ent_key],
        ARRAY['assignments', 'assignment', 'h.account_id || '' -> '' || ' || ent_key],
        ARRAY['nested_entitlements', 'nested_entitlement', $n$h.member_entitlement_id || ' -> ' || h.entitlement_id$n$]
    ] LOOP
        parts := parts || format(
            $q$SELECT h.valid_from AS snapshot_id, h.connector, %2$L::text AS entity,
                      CASE WHEN o.key_hash IS NULL THEN 'added' ELSE 'modified' END AS change,
                      %3$s AS key, to_jsonb(o) %4$s AS before, to_jsonb(h) %4$s AS after
               FROM ingest.%1$s_history h
               LEFT JOIN ingest.%1$s_history o ON o.key_hash = h.key_hash AND o.valid_to IS NOT NULL
                                               AND o.valid_to = h.valid_from$q$,
            spec[1], spec[2], spec[3], strip);
        parts := parts || format(
            $q$SELECT h.valid_to, h.connector, %2$L::text, 'removed', %3$s, to_jsonb(h) %4$s, NULL::jsonb
               FROM ingest.%1$s_history h
               WHERE h.valid_to IS NOT NULL
                 -- no version opened by the same snapshot: neither a current one (unique
                 -- index) nor one closed since (closed-key index), so both probes are lookups
                 AND NOT EXISTS (SELECT 1 FROM ingest.%1$s_history n
                                 WHERE n.key_hash = h.key_hash AND n.valid_to IS NULL
                                   AND n.valid_from = h.valid_to)
                 AND NOT EXISTS (SELECT 1 FROM ingest.%1$s_history n
                                 WHERE n.key_hash = h.key_hash AND n.valid_to IS NOT NULL
                                   AND n.valid_from = h.valid_to)$q$,
            spec[1], spec[2], spec[3], strip);
    END LOOP;
    EXECUTE 'CREATE VIEW ingest.changes AS ' || array_to_string(parts, E'\nUNION ALL\n');
END $$;

CREATE TABLE ingest.schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
