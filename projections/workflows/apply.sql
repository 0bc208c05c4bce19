-- The `workflows` projection: what it runs for each event of `triad.workflow-events`.
-- Sections start with `-- name: <statement>`; `triad-projection` loads them by name and
-- fails at start-up if one is missing. Unqualified names resolve through search_path (the
-- live schema or a replay's shadow). Times are bound as timestamptz.
--
-- A batch is folded in memory first (`triad-projection`'s plan.rs): an event whose sequence
-- is not above its workflow's `last_sequence` is a duplicate (a repair or a zombie wrote it
-- again) and is skipped entirely, the same rule the processor folds by; the others become
-- rows of the COPYs and set-based statements below, run in this order, each at most once
-- per batch. The statements take their rows as parallel arrays (`unnest`); a per-row text[]
-- (models used) travels as an array literal (`{"a","b"}`) because PostgreSQL arrays of
-- arrays must be rectangular. The result is the same wherever batches start and end, which
-- is what lets a rebuild hash identically to the live tables.

-- name: search_path
-- For this transaction only; `public` holds the triad_* helper functions.
SELECT set_config('search_path', quote_ident($1) || ', public', true);

-- name: async_commit
-- A batch commits without waiting for its WAL to reach the disk (docs/adr/0011): its offsets
-- commit in the same transaction, so a crash that loses the last commits loses rows and
-- offsets together, and the worker applies those records again from the log.
SELECT set_config('synchronous_commit', 'off', true);

-- name: lock_shared
-- Held by the live worker for each batch; a replay's swap takes it exclusively.
SELECT pg_advisory_xact_lock_shared(hashtext($1));

-- name: lock_exclusive
SELECT pg_advisory_xact_lock(hashtext($1));

-- name: build
SELECT build_id FROM projection_build;

-- name: set_build
INSERT INTO projection_build (id, build_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING;

-- name: offsets
SELECT partition, next_offset FROM projection_offsets WHERE topic = $1 FOR UPDATE;

-- name: store_offset
INSERT INTO projection_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset;

-- name: notify
-- One per batch; listeners re-read what changed (payload: the schema).
SELECT pg_notify('triad_read_model', $1);

-- name: workflow_sequences
-- The last applied sequence of every workflow a batch touches, in one round trip.
SELECT workflow_id, last_sequence FROM workflows WHERE workflow_id = ANY($1);

-- name: copy_workflows
-- The rows a batch creates are written whole with binary COPY (the batch's later changes to
-- them were folded in memory by the rules of update_tasks, update_workflows and
-- count_tasks): workflows first seen in the batch (accepted or rejected)...
COPY workflows
    (workflow_id, name, status, created_at, finished_at, task_count, tasks_completed,
     tasks_failed, tasks_skipped, total_cost_micros, models_used, labels, default_zones,
     error, error_field, failed_task, last_sequence, updated_at, tenant)
FROM STDIN (FORMAT binary);

-- name: copy_tasks
-- ...the tasks their WorkflowAccepted events declared...
COPY tasks
    (workflow_id, task_id, status, depends_on, zones, model_id, zone, attempts, latency_ms,
     input_tokens, output_tokens, cost_micros, error, output, output_sha256, output_size,
     scheduled_at, finished_at)
FROM STDIN (FORMAT binary);

-- name: copy_events
-- ...and the timeline: one row per event.
COPY workflow_events
    (workflow_id, sequence, event_id, event_type, task_id, occurred_at, partition,
     kafka_offset, data)
FROM STDIN (FORMAT binary);

-- name: model_failures
-- A failed attempt of a task from an earlier batch counts against the model it was
-- dispatched to: the batch's own dispatch when it has one ($3), else the task row's model as
-- it was before the batch (this runs before update_tasks). Tasks that do not exist count
-- nothing. (Failures of the batch's new tasks are summed in memory into upsert_models.)
INSERT INTO models (model_id, tasks_failed, last_used_at)
SELECT m, count(*), max(o)
FROM (SELECT coalesce(u.h, t.model_id) AS m, u.o
      FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS u (w, k, h, o)
      JOIN tasks t ON t.workflow_id = u.w AND t.task_id = u.k) AS f
WHERE m IS NOT NULL
GROUP BY m
ON CONFLICT (model_id) DO UPDATE SET
    tasks_failed = models.tasks_failed + EXCLUDED.tasks_failed,
    last_used_at = greatest(models.last_used_at, EXCLUDED.last_used_at);

-- name: update_tasks
-- Each change in the batch to a task from an earlier batch, folded: status is the last one; a NULL leaves a column
-- as it was, except where a flag says the batch set it (a completion sets every result
-- column, NULL included; an error can be set or cleared); scheduled_at keeps the first.
UPDATE tasks t SET
    status = u.s,
    attempts = coalesce(u.a, t.attempts),
    model_id = coalesce(u.m, t.model_id),
    zone = coalesce(u.z, t.zone),
    latency_ms = CASE WHEN u.done THEN u.lat ELSE t.latency_ms END,
    input_tokens = CASE WHEN u.done THEN u.it ELSE t.input_tokens END,
    output_tokens = CASE WHEN u.done THEN u.ot ELSE t.output_tokens END,
    cost_micros = CASE WHEN u.done THEN u.c ELSE t.cost_micros END,
    output = CASE WHEN u.done THEN u.o ELSE t.output END,
    output_sha256 = CASE WHEN u.done THEN u.sha ELSE t.output_sha256 END,
    output_size = CASE WHEN u.done THEN u.sz ELSE t.output_size END,
    error = CASE WHEN u.es THEN u.e ELSE t.error END,
    scheduled_at = coalesce(t.scheduled_at, u.sa),
    finished_at = coalesce(u.fa, t.finished_at)
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::text[],
            $7::boolean[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
            $12::bytea[], $13::text[], $14::bigint[], $15::boolean[], $16::text[],
            $17::timestamptz[], $18::timestamptz[])
     AS u (w, k, s, a, m, z, done, lat, it, ot, c, o, sha, sz, es, e, sa, fa)
WHERE t.workflow_id = u.w AND t.task_id = u.k;

-- name: upsert_models
-- Completions, failures of new tasks and discarded results, summed per model in the batch.
INSERT INTO models
    (model_id, tasks_completed, tasks_failed, total_latency_ms, input_tokens, output_tokens,
     cost_micros, results_discarded, discarded_micros, last_used_at)
SELECT m, n, nf, lat, it, ot, c, dn, dc, lu
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::timestamptz[])
     AS u (m, n, nf, lat, it, ot, c, dn, dc, lu)
ON CONFLICT (model_id) DO UPDATE SET
    tasks_completed = models.tasks_completed + EXCLUDED.tasks_completed,
    tasks_failed = models.tasks_failed + EXCLUDED.tasks_failed,
    total_latency_ms = models.total_latency_ms + EXCLUDED.total_latency_ms,
    input_tokens = models.input_tokens + EXCLUDED.input_tokens,
    output_tokens = models.output_tokens + EXCLUDED.output_tokens,
    cost_micros = models.cost_micros + EXCLUDED.cost_micros,
    results_discarded = models.results_discarded + EXCLUDED.results_discarded,
    discarded_micros = models.discarded_micros + EXCLUDED.discarded_micros,
    last_used_at = greatest(models.last_used_at, EXCLUDED.last_used_at);

-- name: update_workflows
-- Each change in the batch to a workflow from an earlier batch, folded. Status: NULL leaves it, RUNNING applies
-- only to an ACCEPTED workflow (a dispatch), anything else (a terminal event) is set.
UPDATE workflows wf SET
    status = CASE
        WHEN u.s IS NULL THEN wf.status
        WHEN u.s = 'RUNNING' THEN CASE WHEN wf.status = 'ACCEPTED' THEN 'RUNNING'
                                       ELSE wf.status END
        ELSE u.s END,
    finished_at = coalesce(u.f, wf.finished_at),
    error = CASE WHEN u.es THEN u.e ELSE wf.error END,
    failed_task = CASE WHEN u.fs THEN u.ft ELSE wf.failed_task END,
    total_cost_micros = coalesce(u.c, wf.total_cost_micros),
    models_used = coalesce(u.mu::text[], wf.models_used),
    last_sequence = coalesce(u.ls, wf.last_sequence),
    updated_at = coalesce(u.ua, wf.updated_at)
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::boolean[], $5::text[],
            $6::boolean[], $7::text[], $8::bigint[], $9::text[], $10::bigint[],
            $11::timestamptz[])
     AS u (w, s, f, es, e, fs, ft, c, mu, ls, ua)
WHERE wf.workflow_id = u.w;

-- name: count_tasks
-- After the task and workflow updates: the counters of every workflow from an earlier batch
-- whose tasks changed,
-- recounted, so always right whatever the order of retries. The cost is the running sum
-- until WorkflowCompleted sets the billed total, which it then keeps.
UPDATE workflows wf SET
    tasks_completed = c.done,
    tasks_failed = c.failed,
    tasks_skipped = c.skipped,
    total_cost_micros = CASE WHEN wf.status = 'COMPLETED' THEN wf.total_cost_micros
                             ELSE c.cost END
FROM (SELECT u.w,
             count(t.task_id) FILTER (WHERE t.status = 'COMPLETED') AS done,
             count(t.task_id) FILTER (WHERE t.status = 'FAILED') AS failed,
             count(t.task_id) FILTER (WHERE t.status = 'SKIPPED') AS skipped,
             coalesce(sum(t.cost_micros) FILTER (WHERE t.status = 'COMPLETED'), 0) AS cost
      FROM unnest($1::text[]) AS u (w)
      LEFT JOIN tasks t ON t.workflow_id = u.w
      GROUP BY u.w) AS c
WHERE wf.workflow_id = c.w;
