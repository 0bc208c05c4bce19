//! Applies the `.sql` files of `migrations/` in order, each once, each in a transaction,
//! recording them with their SHA-256 in `triad_migrations`. An advisory lock keeps two
//! processes starting at once from applying the same file twice; a checksum that no longer
//! matches its file stops the run (ADR 0010).

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
                     name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), \
                     sha256 text)";
/// Tables from before checksums lack the column.
const HAS_CHECKSUMS: &str = "SELECT EXISTS (SELECT 1 FROM pg_attribute \
    WHERE attrelid = 'triad_migrations'::regclass AND attname = 'sha256' AND NOT attisdropped)";
const ADD_CHECKSUMS: &str = "ALTER TABLE triad_migrations ADD COLUMN sha256 text";
const RECORDED: &str = "SELECT name, sha256 FROM triad_migrations";
const RECORD: &str = "INSERT INTO triad_migrations (name, sha256) VALUES ($1, $2)";
const BACKFILL: &str = "UPDATE triad_migrations SET sha256 = $2 WHERE name = $1";

/// Applies the migrations not applied yet; returns their names.
pub async fn run(client: &tokio_postgres::Client) -> Result<Vec<&'static str>> {
    run_with(client, MIGRATIONS).await
}

/// [`run`] for another list of migrations (tests use it on a scratch schema).
///
/// Each applied migration is recorded with the SHA-256 of its text. A migration whose
/// recorded checksum differs from its text now was edited after it ran, and nothing is
/// applied ([`Error::MigrationChanged`]): migrations are append-only, a change is a new
/// file. Rows recorded before checksums existed take the current text's checksum.
pub async fn run_with(
    client: &tokio_postgres::Client,
    migrations: &[(&'static str, &'static str)],
) -> Result<Vec<&'static str>> {
    client.execute(LOCK, &[]).await?;
    let result = apply(client, migrations).await;
    // Unlocking can only fail if the connection is gone, which also releases the lock.
    let _ = client.execute(UNLOCK, &[]).await;
    result
}

async fn apply(
    client: &tokio_postgres::Client,
    migrations: &[(&'static str, &'static str)],
) -> Result<Vec<&'static str>> {
    // Checked first: IF NOT EXISTS alone logs a notice on every start.
    let exists: bool = client.query_one(EXISTS, &[]).await?.try_get(0)?;
    if !exists {
        client.execute(TABLE, &[]).await?;
    } else if !client
        .query_one(HAS_CHECKSUMS, &[])
        .await?
        .try_get::<_, bool>(0)?
    {
        client.execute(ADD_CHECKSUMS, &[]).await?;
    }
    let mut recorded = std::collections::HashMap::new();
    for row in client.query(RECORDED, &[]).await? {
        let name: String = row.try_get(0)?;
        let sha256: Option<String> = row.try_get(1)?;
        recorded.insert(name, sha256);
    }
    // Every check before any change: an edited migration stops the run before a later one
    // is applied on top of it.
    for (name, sql) in migrations {
        let current = crate::sha256_hex(sql.as_bytes());
        match recorded.get(*name) {
            Some(Some(sha)) if *sha != current => {
                return Err(Error::MigrationChanged {
                    name,
                    recorded: sha.clone(),
                    current,
                });
            }
            Some(None) => {
                client.execute(BACKFILL, &[name, &current]).await?;
            }
            _ => {}
        }
    }
    for name in recorded.keys() {
        if !migrations.iter().any(|(n, _)| n == name) {
            // A newer binary applied it; this one runs on a schema ahead of it.
            tracing::warn!(migration = %name, "the database has a migration this binary does not know");
        }
    }
    let mut applied = Vec::new();
    for (name, sql) in migrations {
        if recorded.contains_key(*name) {
            continue;
        }
        let sha256 = crate::sha256_hex(sql.as_bytes());
        let step = async {
            client.batch_execute("BEGIN").await?;
            client.batch_execute(sql).await?;
            client.execute(RECORD, &[name, &sha256]).await?;
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
