-- ingest schema, version 4: the credential store.
--
-- One row per connector: the tokens ingest obtained itself (OAuth access and refresh tokens,
-- GitHub installation tokens, AWS temporary keys). payload is AES-256-GCM ciphertext
-- (a version byte, a 12-byte nonce, then ciphertext + tag) of a JSON document; the
-- additional authenticated data binds it to its connector and kind, so a row copied to another
-- connector does not decrypt. The key never reaches the database (INGEST_SECRET_KEY, or
-- secret.key beside the embedded database). kind and expires_at are in clear for `ingest auth
-- --status` and monitoring; they are not secrets.

CREATE TABLE ingest.credentials (
    connector  text        PRIMARY KEY,
    kind       text        NOT NULL,
    payload    bytea       NOT NULL,
    expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE ingest.credentials IS
    'Tokens ingest obtained itself, AES-GCM encrypted; useless without INGEST_SECRET_KEY / secret.key.';
