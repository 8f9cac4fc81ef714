-- ingest schema, version 2: coordination of any number of daemons sharing one database.
--
-- slot_claims: one row per (connector, schedule slot) some daemon took on. The primary key
-- makes the claim exclusive (INSERT ... ON CONFLICT DO NOTHING: one daemon wins). The owner
-- renews lease_until while it runs or waits to retry; a claim whose lease ran out (its daemon
-- died) is taken over by another daemon while the slot is still the connector's current one.
--
--   status  claimed        a daemon owns it and is running (or about to run) the connector
--           waiting_retry  the last attempt failed; the owner retries at not_before
--           released       no owner (its daemon shut down mid-run, or the connector was busy):
--                          any daemon may take it over once lease_until has passed
--           succeeded | failed | rejected   done: the slot's outcome (snapshot_id)
--           abandoned      a newer slot came before anyone could finish this one
--
-- daemons: one row per daemon process, its heartbeat and its plan (next_runs: connector ->
-- ISO timestamp of its next start, jitter and pending retries included) for `ingest status`.

CREATE TABLE ingest.slot_claims (
    connector     text        NOT NULL,
    scheduled_for timestamptz NOT NULL,
    daemon_id     text        NOT NULL,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz NOT NULL,
    status        text        NOT NULL DEFAULT 'claimed'
                  CHECK (status IN ('claimed', 'waiting_retry', 'released', 'succeeded', 'failed',
                                    'rejected', 'abandoned')),
    attempts      integer     NOT NULL DEFAULT 0,
    not_before    timestamptz,
    snapshot_id   bigint,
    takeovers     integer     NOT NULL DEFAULT 0,
    finished_at   timestamptz,
    PRIMARY KEY (connector, scheduled_for)
);
CREATE INDEX slot_claims_open_idx ON ingest.slot_claims (lease_until)
    WHERE status IN ('claimed', 'waiting_retry', 'released');

CREATE TABLE ingest.daemons (
    daemon_id     text        PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    lease_seconds double precision NOT NULL,
    listen        text,
    config_path   text,
    version       text,
    next_runs     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
