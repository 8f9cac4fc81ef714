-- ingest schema, version 7: a run that died resumes from what it had staged (README "Resume").
--
-- One row per (snapshot, stream): the stream's pages staged so far (page_seq), where each of its
-- listings stands (paginator state as JSON, or parents done for a fan-out) and the counts of what is
-- staged. It commits in the same transaction as the staged rows it covers; staged rows carry their
-- page_seq, so rows above a checkpoint are deleted when a later attempt adopts the staging.

CREATE TABLE ingest.stage_checkpoints (
    snapshot_id bigint      NOT NULL REFERENCES ingest.snapshots (snapshot_id) ON DELETE CASCADE,
    stream      text        NOT NULL,            -- the capability (list_accounts, ...)
    page_seq    integer     NOT NULL,            -- pages of this stream covered (1-based, 0 = none)
    done        boolean     NOT NULL,            -- every page of the stream is staged
    positions   jsonb       NOT NULL,            -- per listing: {"state": ..., "resumable": ...} | fan-out
    counts      jsonb       NOT NULL,            -- per entity: fetched, invalid, samples
    saved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (snapshot_id, stream)
);

-- what a later attempt must match to continue this one's staging: the connector's settings
ALTER TABLE ingest.snapshots ADD COLUMN config_hash text;
