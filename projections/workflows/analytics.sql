-- Analytics views over the `workflows` projection's tables (created with them, in the same
-- schema, so a replay rebuilds them too).

-- Latency percentiles and reliability per model, from completed and failed tasks.
CREATE OR REPLACE VIEW model_stats AS
SELECT
    m.model_id,
    m.tasks_completed,
    m.tasks_failed,
    m.results_discarded,
    m.cost_micros,
    m.discarded_micros,
    m.input_tokens,
    m.output_tokens,
    CASE WHEN m.tasks_completed + m.tasks_failed = 0 THEN NULL
         ELSE m.tasks_completed::double precision / (m.tasks_completed + m.tasks_failed)
    END AS success_rate,
    l.p50_ms, l.p95_ms, l.p99_ms,
    m.last_used_at
FROM models m
LEFT JOIN (
    SELECT model_id,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms
    FROM tasks WHERE status = 'COMPLETED' AND latency_ms IS NOT NULL
    GROUP BY model_id
) l USING (model_id);

-- Per UTC day: workflows by outcome and what they cost.
CREATE OR REPLACE VIEW daily_usage AS
SELECT
    date_trunc('day', created_at AT TIME ZONE 'UTC') AS day,
    count(*) AS workflows,
    count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
    count(*) FILTER (WHERE status = 'FAILED') AS failed,
    count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
    count(*) FILTER (WHERE status = 'REJECTED') AS rejected,
    sum(total_cost_micros) AS cost_micros,
    avg(extract(epoch FROM finished_at - created_at) * 1000)
        FILTER (WHERE status = 'COMPLETED') AS avg_duration_ms
FROM workflows
GROUP BY 1;

-- Cost per model per UTC day (billed spend of completed tasks).
CREATE OR REPLACE VIEW model_daily_cost AS
SELECT
    date_trunc('day', finished_at AT TIME ZONE 'UTC') AS day,
    model_id,
    count(*) AS tasks,
    sum(cost_micros) AS cost_micros,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens
FROM tasks
WHERE status = 'COMPLETED'
GROUP BY 1, 2;

-- Outcomes by model and zone: where tasks ran and how they ended.
CREATE OR REPLACE VIEW model_zone_outcomes AS
SELECT
    model_id,
    zone,
    count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
    count(*) FILTER (WHERE status = 'FAILED') AS failed,
    CASE WHEN count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED')) = 0 THEN NULL
         ELSE (count(*) FILTER (WHERE status = 'COMPLETED'))::double precision
              / count(*) FILTER (WHERE status IN ('COMPLETED', 'FAILED'))
    END AS success_rate
FROM tasks
WHERE model_id IS NOT NULL
GROUP BY 1, 2;

-- Tasks per zone, by status.
CREATE OR REPLACE VIEW zone_tasks AS
SELECT zone, status, count(*) AS tasks
FROM tasks
WHERE zone IS NOT NULL
GROUP BY 1, 2;

-- The most expensive workflows first.
CREATE OR REPLACE VIEW top_workflows_by_cost AS
SELECT workflow_id, name, status, total_cost_micros, task_count, created_at, finished_at
FROM workflows
ORDER BY total_cost_micros DESC, workflow_id;
