-- ingest schema, version 3: history you can trust.
--
-- * Last activity is not a change of the account: it lives in ingest.last_activity,
--   one row per account, updated in place (not versioned). ingest.accounts keeps its
--   columns; its last_activity_at now comes from that table. New account versions store
--   last_activity_at NULL in accounts_history (older versions keep what they had).
-- * A version never ends before it starts: CHECK (valid_to IS NULL OR valid_to > valid_from).
-- * *_at(id) answers only for a snapshot that succeeded; any other id is an error naming
--   the snapshot and its status, never the previous state.

CREATE TABLE ingest.last_activity (
    connector        text        NOT NULL,
    account_id       text        NOT NULL,
    last_activity_at timestamptz NOT NULL,
    event_type       text,
    snapshot_id      bigint      NOT NULL,  -- the snapshot that last moved it
    PRIMARY KEY (connector, account_id)
);

-- what the current versions knew so far
INSERT INTO ingest.last_activity (connector, account_id, last_activity_at, snapshot_id)
SELECT connector, account_id, last_activity_at, valid_from
FROM ingest.accounts_history
WHERE valid_to IS NULL AND last_activity_at IS NOT NULL;

CREATE OR REPLACE VIEW ingest.accounts AS
SELECT h.connector, h.account_id, h.email, h.username, h.display_name, h.given_name, h.family_name, h.status,
       h.account_type, h.custom_attributes, h.extra, l.last_activity_at
FROM ingest.accounts_history h
LEFT JOIN ingest.last_activity l ON l.connector = h.connector AND l.account_id = h.account_id
WHERE h.valid_to IS NULL;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'resources', 'entitlements', 'assignments', 'nested_entitlements'] LOOP
        EXECUTE format('ALTER TABLE ingest.%1$s_history ADD CONSTRAINT %1$s_history_valid_range '
                       'CHECK (valid_to IS NULL OR valid_to > valid_from)', t);
    END LOOP;
END $$;

-- Point in time, checked ---------------------------------------------------------

-- The connector of a succeeded snapshot; an error for an unknown id or any other status.
CREATE FUNCTION ingest.succeeded_snapshot_connector(p_snapshot_id bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_connector text;
    v_status    text;
BEGIN
    SELECT connector, status INTO v_connector, v_status FROM ingest.snapshots WHERE snapshot_id = p_snapshot_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'snapshot % does not exist', p_snapshot_id
            USING ERRCODE = 'no_data_found', HINT = 'SELECT snapshot_id, connector, status FROM ingest.snapshots';
    END IF;
    IF v_status <> 'succeeded' THEN
        RAISE EXCEPTION 'snapshot % of connector % is %, not succeeded: it has no state of its own',
                        p_snapshot_id, v_connector, v_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'pick a succeeded snapshot: SELECT snapshot_id FROM ingest.snapshots WHERE status = ''succeeded''';
    END IF;
    RETURN v_connector;
END $$;

-- last_activity_at in accounts_at(id) is the latest known activity (ingest.last_activity),
-- as in ingest.accounts: activity is not versioned, so a past snapshot shows the newest value.
CREATE OR REPLACE FUNCTION ingest.accounts_at(p_snapshot_id bigint) RETURNS SETOF ingest.accounts
LANGUAGE plpgsql STABLE AS $$
DECLARE c text := ingest.succeeded_snapshot_connector(p_snapshot_id);
BEGIN
    RETURN QUERY
    SELECT h.connector, h.account_id, h.email, h.username, h.display_name, h.given_name, h.family_name, h.status,
           h.account_type, h.custom_attributes, h.extra, l.last_activity_at
    FROM ingest.accounts_history h
    LEFT JOIN ingest.last_activity l ON l.connector = h.connector AND l.account_id = h.account_id
    WHERE h.connector = c
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;

CREATE OR REPLACE FUNCTION ingest.resources_at(p_snapshot_id bigint) RETURNS SETOF ingest.resources
LANGUAGE plpgsql STABLE AS $$
DECLARE c text := ingest.succeeded_snapshot_connector(p_snapshot_id);
BEGIN
    RETURN QUERY
    SELECT h.connector, h.resource_type, h.resource_id, h.label, h.description, h.parent_resource_type,
           h.parent_resource_id, h.extra
    FROM ingest.resources_history h
    WHERE h.connector = c
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;

CREATE OR REPLACE FUNCTION ingest.entitlements_at(p_snapshot_id bigint) RETURNS SETOF ingest.entitlements
LANGUAGE plpgsql STABLE AS $$
DECLARE c text := ingest.succeeded_snapshot_connector(p_snapshot_id);
BEGIN
    RETURN QUERY
    SELECT h.connector, h.entitlement_type, h.resource_type, h.resource_id, h.entitlement_id, h.label,
           h.description, h.is_assignable, h.extra
    FROM ingest.entitlements_history h
    WHERE h.connector = c
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;

CREATE OR REPLACE FUNCTION ingest.assignments_at(p_snapshot_id bigint) RETURNS SETOF ingest.assignments
LANGUAGE plpgsql STABLE AS $$
DECLARE c text := ingest.succeeded_snapshot_connector(p_snapshot_id);
BEGIN
    RETURN QUERY
    SELECT h.connector, h.account_id, h.entitlement_id, h.resource_type, h.resource_id
    FROM ingest.assignments_history h
    WHERE h.connector = c
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;

CREATE OR REPLACE FUNCTION ingest.nested_entitlements_at(p_snapshot_id bigint)
RETURNS SETOF ingest.nested_entitlements
LANGUAGE plpgsql STABLE AS $$
DECLARE c text := ingest.succeeded_snapshot_connector(p_snapshot_id);
BEGIN
    RETURN QUERY
    SELECT h.connector, h.entitlement_id, h.member_entitlement_id
    FROM ingest.nested_entitlements_history h
    WHERE h.connector = c
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;
