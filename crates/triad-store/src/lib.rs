//! TRIAD's PostgreSQL side: the schema migrations in `migrations/` and the content-addressed
//! blob store behind the claim check (payloads above `blobs.inline_max_bytes` travel through
//! Kafka as a [`BlobRef`], the content lives here).
//!
//! The pool connects lazily: a process that never stores a large payload never needs the
//! database, and the migrations run on first use.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use triad_domain::BlobRef;

pub mod migrate;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres.url {url:?} is not a valid connection string: {source}")]
    Url {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL pool: {0}")]
    Pool(String),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "migration {name} was edited after it was applied (recorded sha256 {recorded}, the \
         file's is {current}): applied migrations are never changed; put the change in a new \
         migration file"
    )]
    MigrationChanged {
        name: &'static str,
        recorded: String,
        current: String,
    },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("blob {sha256} is not in the store")]
    Missing { sha256: String },
    #[error("blob {sha256} is corrupt: its content hashes to {actual}")]
    Corrupt { sha256: String, actual: String },
    #[error("blob reference {0:?} is not a lower-case hex SHA-256")]
    BadReference(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A content-addressed store: `put` is idempotent (same content, same reference), `get`
/// verifies the content against the reference.
#[async_trait]
pub trait BlobStore: Send + Sync + Debug {
    async fn put(&self, content: &[u8]) -> Result<BlobRef>;
    async fn get(&self, reference: &BlobRef) -> Result<Vec<u8>>;
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const PUT: &str = "INSERT INTO triad_blobs (sha256, size, content) VALUES ($1, $2, $3) \
                   ON CONFLICT (sha256) DO NOTHING";
const GET: &str = "SELECT content FROM triad_blobs WHERE sha256 = $1";

/// How long opening a connection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the health check of a pooled connection may take before it is discarded.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting pool on `url` (`postgres://user@host:port/db`); the password, if
/// any, comes from `password` (read from the environment by the caller, never from
/// configuration files).
pub fn pool(url: &str, password: Option<&str>, size: usize) -> Result<deadpool_postgres::Pool> {
    pool_in_schema(url, password, size, None)
}

/// Like [`pool`], with every connection's `search_path` set to `schema, public` (a schema
/// name the configuration validated: lower-case letters, digits and `_`).
pub fn pool_in_schema(
    url: &str,
    password: Option<&str>,
    size: usize,
    schema: Option<&str>,
) -> Result<deadpool_postgres::Pool> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|source| Error::Url {
        url: url.to_owned(),
        source,
    })?;
    if let Some(p) = password {
        config.password(p);
    }
    if let Some(s) = schema {
        config.options(format!("-c search_path={s},public"));
    }
    // Bounded waits everywhere: a connection that hangs (a server killed mid-query, a
    // half-open socket) must turn into an error the caller retries, never a silent stall.
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives_idle(Duration::from_secs(30));
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            // A `SELECT 1`-style check before reuse (~0.1 ms locally): after a server restart
            // a pooled connection can look open and still never answer.
            recycling_method: deadpool_postgres::RecyclingMethod::Verified,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .build()
        .map_err(|e| Error::Pool(e.to_string()))
}

/// The blob store in PostgreSQL table `triad_blobs`.
#[derive(Debug)]
pub struct PgBlobStore {
    pool: deadpool_postgres::Pool,
    migrated: OnceCell<()>,
}

impl PgBlobStore {
    /// A store on `url` (`postgres://user@host:port/db`); the password, if any, comes from
    /// `password` (read from the environment by the caller, never from configuration files).
    pub fn new(url: &str, password: Option<&str>, pool_size: usize) -> Result<Self> {
        let pool = pool(url, password, pool_size)?;
        Ok(Self {
            pool,
            migrated: OnceCell::new(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| Error::Pool(e.to_string()))?;
        self.migrated
            .get_or_try_init(|| async { migrate::run(&client).await.map(drop) })
            .await?;
        Ok(client)
    }
}

#[async_trait]
impl BlobStore for PgBlobStore {
    async fn put(&self, content: &[u8]) -> Result<BlobRef> {
        let sha256 = sha256_hex(content);
        let size = i64::try_from(content.len()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        client.execute(PUT, &[&sha256, &size, &content]).await?;
        tracing::debug!(blob.sha256 = %sha256, blob.size = size, "blob stored");
        Ok(BlobRef {
            uri: format!("postgres:triad_blobs/{sha256}"),
            sha256,
            size,
        })
    }

    async fn get(&self, reference: &BlobRef) -> Result<Vec<u8>> {
        let valid = reference.sha256.len() == 64
            && reference
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(Error::BadReference(reference.sha256.clone()));
        }
        let client = self.client().await?;
        let row = client
            .query_opt(GET, &[&reference.sha256])
            .await?
            .ok_or_else(|| Error::Missing {
                sha256: reference.sha256.clone(),
            })?;
        let content: Vec<u8> = row.try_get(0)?;
        let actual = sha256_hex(&content);
        if actual != reference.sha256 {
            return Err(Error::Corrupt {
                sha256: reference.sha256.clone(),
                actual,
            });
        }
        Ok(content)
    }
}
