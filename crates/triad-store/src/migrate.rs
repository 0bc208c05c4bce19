//! Applies the `.sql` files of `migrations/` in order, each once, each in a transaction,
//! recording them in `triad_migrations`. An advisory lock keeps two processes starting at
//! once from applying the same file twice.

use crate::{Error, Result};

/// Every migration, in order (embedded: the binary carries its schema).
pub const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_blobs",
        include_str!("../../../migrations/0001_blobs.sql"),
    ),
    (
        "0002_read_model_schemas",
        include_str!("../../../migrations/0002_read_model_schemas.sql"),
    ),
];

const LOCK: &str = "SELECT pg_advisory_lock(7216840)";
const UNLOCK: &str = "SELECT pg_advisory_unlock(7216840)";
const EXISTS: &str = "SELECT to_regclass('triad_migrations') IS NOT NULL";
const TABLE: &str = "CREATE TABLE IF NOT EXISTS triad_migrations (\
                     name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())";
const APPLIED: &str = "SELECT 1 FROM triad_migrations WHERE name = $1";
const RECORD: &str = "INSERT INTO triad_migrations (name) VALUES ($1)";

/// Applies the migrations not applied yet; returns their names.
pub async fn run(client: &deadpool_postgres::Object) -> Result<Vec<&'static str>> {
    client.execute(LOCK, &[]).await?;
    let result = apply(client).await;
    // Unlocking can only fail if the connection is gone, which also releases the lock.
    let _ = client.execute(UNLOCK, &[]).await;
    result
}

async fn apply(client: &deadpool_postgres::Object) -> Result<Vec<&'static str>> {
    // Checked first: IF NOT EXISTS alone logs a notice on every start.
    let exists: bool = client.query_one(EXISTS, &[]).await?.try_get(0)?;
    if !exists {
        client.execute(TABLE, &[]).await?;
    }
    let mut applied = Vec::new();
    for (name, sql) in MIGRATIONS {
        if client.query_opt(APPLIED, &[name]).await?.is_some() {
            continue;
        }
        let step = async {
            client.batch_execute("BEGIN").await?;
            client.batch_execute(sql).await?;
            client.execute(RECORD, &[name]).await?;
            client.batch_execute("COMMIT").await
        };
        if let Err(source) = step.await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(Error::Migration { name, source });
        }
        tracing::info!(migration = name, "migration applied");
        applied.push(*name);
    }
    Ok(applied)
}
