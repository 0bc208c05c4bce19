-- The `workflows` projection: what it runs for each event of `triad.workflow-events`.
-- Sections start with `-- name: <statement>`; `triad-projection` loads them by name and
-- fails at start-up if one is missing. Unqualified names resolve through search_path (the
-- live schema or a replay's shadow). Times are bound as microseconds (micros_ts).
--
-- Every event first goes through `insert_event` (the timeline) and `touch_workflow`; an event
-- whose sequence is not above its workflow's `last_sequence` is a duplicate (a repair or a
-- zombie wrote it again) and is skipped entirely, the same rule the processor folds by.

-- name: search_path
-- For this transaction only; `public` holds the triad_* helper functions.
SELECT set_config('search_path', quote_ident($1) || ', public', true);

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

-- name: insert_event
INSERT INTO workflow_events
    (workflow_id, sequence, event_id, event_type, task_id, occurred_at, partition,
     kafka_offset, data)
VALUES ($1, $2, $3, $4, $5, micros_ts($6), $7, $8, $9::text::jsonb);

-- name: insert_events
-- A batch's timeline rows at once (the columns of insert_event, as arrays).
INSERT INTO workflow_events
    (workflow_id, sequence, event_id, event_type, task_id, occurred_at, partition,
     kafka_offset, data)
SELECT w, s, e, t, k, micros_ts(o), p, ko, d::jsonb
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[],
            $7::integer[], $8::bigint[], $9::text[]) AS u (w, s, e, t, k, o, p, ko, d);

-- name: touch_workflow
UPDATE workflows SET last_sequence = $2, updated_at = micros_ts($3) WHERE workflow_id = $1;

-- name: workflow_accepted
INSERT INTO workflows
    (workflow_id, name, status, created_at, task_count, labels, default_zones,
     last_sequence, updated_at)
VALUES ($1, $2, 'ACCEPTED', micros_ts($3), $4, $5::text::jsonb, $6, $7, micros_ts($3));

-- name: task_declared
INSERT INTO tasks (workflow_id, task_id, status, depends_on, zones)
VALUES ($1, $2, 'PENDING', $3, $4);

-- name: workflow_rejected
INSERT INTO workflows
    (workflow_id, status, created_at, finished_at, error, error_field, last_sequence,
     updated_at)
VALUES ($1, 'REJECTED', micros_ts($2), micros_ts($2), $3, $4, $5, micros_ts($2));

-- name: task_scheduled
UPDATE tasks SET status = 'SCHEDULED', attempts = $3,
    scheduled_at = coalesce(scheduled_at, micros_ts($4))
WHERE workflow_id = $1 AND task_id = $2;

-- name: task_dispatched
UPDATE tasks SET status = 'DISPATCHED', attempts = $3, model_id = $4, zone = $5
WHERE workflow_id = $1 AND task_id = $2;

-- name: workflow_running
UPDATE workflows SET status = 'RUNNING' WHERE workflow_id = $1 AND status = 'ACCEPTED';

-- name: task_completed
UPDATE tasks SET status = 'COMPLETED', attempts = $3, model_id = $4, zone = $5,
    latency_ms = $6, input_tokens = $7, output_tokens = $8, cost_micros = $9, output = $10,
    output_sha256 = $11, output_size = $12, finished_at = micros_ts($13), error = NULL
WHERE workflow_id = $1 AND task_id = $2;

-- name: model_completed
INSERT INTO models
    (model_id, tasks_completed, total_latency_ms, input_tokens, output_tokens, cost_micros,
     last_used_at)
VALUES ($1, 1, $2, $3, $4, $5, micros_ts($6))
ON CONFLICT (model_id) DO UPDATE SET
    tasks_completed = models.tasks_completed + 1,
    total_latency_ms = models.total_latency_ms + EXCLUDED.total_latency_ms,
    input_tokens = models.input_tokens + EXCLUDED.input_tokens,
    output_tokens = models.output_tokens + EXCLUDED.output_tokens,
    cost_micros = models.cost_micros + EXCLUDED.cost_micros,
    last_used_at = greatest(models.last_used_at, EXCLUDED.last_used_at);

-- name: task_failed
UPDATE tasks SET status = 'FAILED', attempts = $3, error = $4, finished_at = micros_ts($5)
WHERE workflow_id = $1 AND task_id = $2;

-- name: model_failed
-- The failed attempt's model is the one it was dispatched to.
INSERT INTO models (model_id, tasks_failed, last_used_at)
SELECT model_id, 1, micros_ts($3) FROM tasks
WHERE workflow_id = $1 AND task_id = $2 AND model_id IS NOT NULL
ON CONFLICT (model_id) DO UPDATE SET
    tasks_failed = models.tasks_failed + 1,
    last_used_at = greatest(models.last_used_at, EXCLUDED.last_used_at);

-- name: task_skipped
UPDATE tasks SET status = 'SKIPPED', error = $3, finished_at = micros_ts($4)
WHERE workflow_id = $1 AND task_id = $2;

-- name: count_tasks
-- After any task's status changed (once per workflow per batch, after its other writes):
-- the workflow's counters, recounted, so always right whatever the order of retries.
UPDATE workflows SET
    tasks_completed = (SELECT count(*) FROM tasks t
                       WHERE t.workflow_id = $1 AND t.status = 'COMPLETED'),
    tasks_failed = (SELECT count(*) FROM tasks t
                    WHERE t.workflow_id = $1 AND t.status = 'FAILED'),
    tasks_skipped = (SELECT count(*) FROM tasks t
                     WHERE t.workflow_id = $1 AND t.status = 'SKIPPED'),
    -- The running cost until WorkflowCompleted sets the billed total; a batch may run this
    -- after or before that event, and the result must not depend on where batches end.
    total_cost_micros = CASE WHEN status = 'COMPLETED' THEN total_cost_micros
        ELSE (SELECT coalesce(sum(cost_micros), 0) FROM tasks t
              WHERE t.workflow_id = $1 AND t.status = 'COMPLETED') END
WHERE workflow_id = $1;

-- name: workflow_completed
UPDATE workflows SET status = 'COMPLETED', finished_at = micros_ts($2),
    total_cost_micros = $3, models_used = $4
WHERE workflow_id = $1;

-- name: workflow_failed
UPDATE workflows SET status = 'FAILED', finished_at = micros_ts($2), error = $3,
    failed_task = $4
WHERE workflow_id = $1;

-- name: workflow_cancelled
UPDATE workflows SET status = 'CANCELLED', finished_at = micros_ts($2), error = $3
WHERE workflow_id = $1;

-- name: result_discarded
INSERT INTO models (model_id, results_discarded, discarded_micros, last_used_at)
VALUES ($1, 1, $2, micros_ts($3))
ON CONFLICT (model_id) DO UPDATE SET
    results_discarded = models.results_discarded + 1,
    discarded_micros = models.discarded_micros + EXCLUDED.discarded_micros,
    last_used_at = greatest(models.last_used_at, EXCLUDED.last_used_at);
