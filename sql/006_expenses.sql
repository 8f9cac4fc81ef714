-- ingest schema, version 6: expenses (Lumos list_expenses: reimbursements and card transactions),
-- versioned like the other entities: history, current view, point in time, changes.

CREATE TABLE ingest.expenses_history (
    connector   text        NOT NULL,
    expense_id  text        NOT NULL,
    account_id  text,                    -- the submitter's account in the same connector, when known
    amount      numeric,                 -- exact, in `currency`
    currency    text,                    -- ISO 4217
    merchant    text,
    occurred_at timestamptz,             -- when the employee paid the seller
    category    text,                    -- reimbursement, card_transaction, ...
    extra       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    key_hash    uuid        NOT NULL,
    row_hash    uuid        NOT NULL,
    valid_from  bigint      NOT NULL,
    valid_to    bigint,
    CONSTRAINT expenses_history_valid_range CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE UNIQUE INDEX expenses_current_idx ON ingest.expenses_history (key_hash) WHERE valid_to IS NULL;
CREATE INDEX expenses_from_idx ON ingest.expenses_history USING brin (valid_from) WITH (pages_per_range = 16);
CREATE INDEX expenses_to_idx ON ingest.expenses_history (valid_to) WHERE valid_to IS NOT NULL;
CREATE INDEX expenses_closed_key_idx ON ingest.expenses_history (key_hash) WHERE valid_to IS NOT NULL;

CREATE VIEW ingest.expenses AS
SELECT connector, expense_id, account_id, amount, currency, merchant, occurred_at, category, extra
FROM ingest.expenses_history WHERE valid_to IS NULL;

-- Exactly the rows a snapshot saw; a snapshot that did not succeed has no state of its own: an error.
CREATE FUNCTION ingest.expenses_at(p_snapshot_id bigint) RETURNS SETOF ingest.expenses
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
    RETURN QUERY
    SELECT h.connector, h.expense_id, h.account_id, h.amount, h.currency, h.merchant, h.occurred_at, h.category,
           h.extra
    FROM ingest.expenses_history h
    WHERE h.connector = v_connector
      AND h.valid_from <= p_snapshot_id AND (h.valid_to IS NULL OR h.valid_to > p_snapshot_id);
END $$;

-- The changes view again, built exactly as in 001 with one more entity (`expense`).
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
        ARRAY['nested_entitlements', 'nested_entitlement', $n$h.member_entitlement_id || ' -> ' || h.entitlement_id$n$],
        ARRAY['expenses', 'expense', 'h.expense_id']
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
                 AND NOT EXISTS (SELECT 1 FROM ingest.%1$s_history n
                                 WHERE n.key_hash = h.key_hash AND n.valid_to IS NULL
                                   AND n.valid_from = h.valid_to)
                 AND NOT EXISTS (SELECT 1 FROM ingest.%1$s_history n
                                 WHERE n.key_hash = h.key_hash AND n.valid_to IS NOT NULL
                                   AND n.valid_from = h.valid_to)$q$,
            spec[1], spec[2], spec[3], strip);
    END LOOP;
    EXECUTE 'CREATE OR REPLACE VIEW ingest.changes AS ' || array_to_string(parts, E'\nUNION ALL\n');
END $$;
