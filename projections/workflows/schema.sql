-- The `workflows` projection's tables. Run with search_path set to the target schema (the
-- live `projection.schema`, or a shadow during `triad replay`), so names stay unqualified.
-- Every column is derived from the event store alone (no now(), no sequences), which is what
-- lets a rebuild from offset 0 hash identically to the live tables.

-- Event times are microseconds since the Unix epoch in the records.
CREATE OR REPLACE FUNCTION micros_ts(micros bigint) RETURNS timestamptz
IMMUTABLE LANGUAGE sql AS $$ SELECT 'epoch'::timestamptz + micros * interval '1 microsecond' $$;

-- Where this read model is in each event-store partition: the next offset to apply. Written
-- in the same transaction as the rows, so a record is applied exactly once.
CREATE TABLE IF NOT EXISTS projection_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Which build of the read model this schema holds; a replay swaps in a new build, and a
-- live worker that sees a different build reloads its offsets.
CREATE TABLE IF NOT EXISTS projection_build (
    id       integer PRIMARY KEY CHECK (id = 1),
    build_id text    NOT NULL
);

CREATE TABLE IF NOT EXISTS workflows (
    workflow_id       text        PRIMARY KEY,
    name              text,
    -- ACCEPTED, RUNNING, COMPLETED, FAILED, CANCELLED or REJECTED
    status            text        NOT NULL,
    -- When the workflow was accepted or rejected (the submit command's time).
    created_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    task_count        integer     NOT NULL DEFAULT 0,
    tasks_completed   integer     NOT NULL DEFAULT 0,
    tasks_failed      integer     NOT NULL DEFAULT 0,
    tasks_skipped     integer     NOT NULL DEFAULT 0,
    total_cost_micros bigint      NOT NULL DEFAULT 0,
    models_used       text[]      NOT NULL DEFAULT '{}',
    -- Set by the chain of custody (sovereignty issue) once a workflow's root exists.
    merkle_root       bytea,
    labels            jsonb       NOT NULL DEFAULT '{}',
    default_zones     text[]      NOT NULL DEFAULT '{}',
    error             text,
    error_field       text,
    failed_task       text,
    last_sequence     bigint      NOT NULL,
    updated_at        timestamptz NOT NULL
);
-- The tenant that owns the workflow (issue 8); null for one submitted through the operator's
-- door. Added after the table first shipped, hence the ALTER for read models built before.
ALTER TABLE workflows ADD COLUMN IF NOT EXISTS tenant text;
CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status, created_at);
CREATE INDEX IF NOT EXISTS workflows_by_tenant ON workflows (tenant, created_at, workflow_id);
-- The API's per-tenant limit on active work counts these.
CREATE INDEX IF NOT EXISTS workflows_active_by_tenant ON workflows (tenant)
    WHERE status IN ('ACCEPTED', 'RUNNING');
CREATE INDEX IF NOT EXISTS workflows_by_created ON workflows (created_at, workflow_id);

CREATE TABLE IF NOT EXISTS tasks (
    workflow_id   text        NOT NULL REFERENCES workflows (workflow_id),
    task_id       text        NOT NULL,
    -- PENDING, SCHEDULED, DISPATCHED, RETRYING, COMPLETED, FAILED or SKIPPED
    status        text        NOT NULL,
    depends_on    text[]      NOT NULL DEFAULT '{}',
    zones         text[]      NOT NULL DEFAULT '{}',
    model_id      text,
    zone          text,
    attempts      integer     NOT NULL DEFAULT 0,
    latency_ms    bigint,
    input_tokens  bigint,
    output_tokens bigint,
    cost_micros   bigint,
    error         text,
    -- The output as it arrived in the event (ciphertext once payloads are sealed), or a
    -- claim-check reference to the blob store.
    output        bytea,
    output_sha256 text,
    output_size   bigint,
    scheduled_at  timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (workflow_id, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_model ON tasks (model_id);

-- Every event of a workflow, by its gap-free per-workflow sequence number.
CREATE TABLE IF NOT EXISTS workflow_events (
    workflow_id  text        NOT NULL,
    sequence     bigint      NOT NULL,
    event_id     text        NOT NULL UNIQUE,
    event_type   text        NOT NULL,
    task_id      text,
    occurred_at  timestamptz NOT NULL,
    partition    integer     NOT NULL,
    kafka_offset bigint      NOT NULL,
    -- The event without its payloads (those stay in tasks.output).
    data         jsonb       NOT NULL,
    PRIMARY KEY (workflow_id, sequence)
);
-- The dashboard subscription finds what changed between two event-store positions.
CREATE INDEX IF NOT EXISTS workflow_events_by_offset ON workflow_events (partition, kafka_offset);

CREATE TABLE IF NOT EXISTS models (
    model_id          text        PRIMARY KEY,
    tasks_completed   bigint      NOT NULL DEFAULT 0,
    tasks_failed      bigint      NOT NULL DEFAULT 0,
    results_discarded bigint      NOT NULL DEFAULT 0,
    total_latency_ms  bigint      NOT NULL DEFAULT 0,
    input_tokens      bigint      NOT NULL DEFAULT 0,
    output_tokens     bigint      NOT NULL DEFAULT 0,
    -- Billed spend; discarded results' spend is counted apart, never billed.
    cost_micros       bigint      NOT NULL DEFAULT 0,
    discarded_micros  bigint      NOT NULL DEFAULT 0,
    last_used_at      timestamptz
);
