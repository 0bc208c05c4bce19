-- The claim check's content-addressed blob store: a payload above blobs.inline_max_bytes is
-- stored once under its SHA-256 and travels through Kafka as a BlobRef.
CREATE TABLE IF NOT EXISTS triad_blobs (
    sha256     text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size       bigint NOT NULL CHECK (size >= 0),
    content    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
