//! The migration runner on the stack's PostgreSQL, in a scratch schema of its own (the
//! connection's search_path is that schema alone, so `triad_migrations` is a fresh table).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use triad_config::PostgresConfig;
use triad_store::Error;
use triad_store::migrate::run_with;

async fn scratch() -> (tokio_postgres::Client, String) {
    let schema = format!("it_migrate_{}", uuid::Uuid::new_v4().simple());
    let mut config: tokio_postgres::Config = PostgresConfig::default().url.parse().unwrap();
    let (admin, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    config.options(format!("-c search_path={schema}"));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    (client, schema)
}

async fn drop_schema(client: &tokio_postgres::Client, schema: &str) {
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

const FIRST: (&str, &str) = ("0001_t", "CREATE TABLE t (id int PRIMARY KEY);");
const SECOND: (&str, &str) = ("0002_u", "CREATE TABLE u (id int PRIMARY KEY);");

#[tokio::test]
async fn migrations_apply_once_in_order_with_their_checksums() {
    let (client, schema) = scratch().await;
    assert_eq!(run_with(&client, &[FIRST]).await.unwrap(), ["0001_t"]);
    assert_eq!(
        run_with(&client, &[FIRST, SECOND]).await.unwrap(),
        ["0002_u"]
    );
    assert!(
        run_with(&client, &[FIRST, SECOND])
            .await
            .unwrap()
            .is_empty()
    );
    let rows = client
        .query(
            "SELECT name, sha256 FROM triad_migrations ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        recorded,
        [
            (
                "0001_t".to_owned(),
                triad_store::sha256_hex(FIRST.1.as_bytes())
            ),
            (
                "0002_u".to_owned(),
                triad_store::sha256_hex(SECOND.1.as_bytes())
            ),
        ]
    );
    drop_schema(&client, &schema).await;
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_stops_the_run_naming_it() {
    let (client, schema) = scratch().await;
    run_with(&client, &[FIRST]).await.unwrap();
    let edited = ("0001_t", "CREATE TABLE t (id bigint PRIMARY KEY);");
    let err = run_with(&client, &[edited, SECOND]).await.unwrap_err();
    assert!(
        matches!(&err, Error::MigrationChanged { name: "0001_t", .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("0001_t") && message.contains("new migration"),
        "{message}"
    );
    // Nothing after it was applied.
    let u: Option<String> = client
        .query_one("SELECT to_regclass('u')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(u, None);
    drop_schema(&client, &schema).await;
}

#[tokio::test]
async fn a_table_from_before_checksums_is_upgraded_and_backfilled() {
    let (client, schema) = scratch().await;
    // What the runner created before checksums, with one migration recorded.
    client
        .batch_execute(
            "CREATE TABLE triad_migrations (name text PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
             CREATE TABLE t (id int PRIMARY KEY); \
             INSERT INTO triad_migrations (name) VALUES ('0001_t');",
        )
        .await
        .unwrap();
    assert_eq!(
        run_with(&client, &[FIRST, SECOND]).await.unwrap(),
        ["0002_u"]
    );
    let sha: String = client
        .query_one(
            "SELECT sha256 FROM triad_migrations WHERE name = '0001_t'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sha, triad_store::sha256_hex(FIRST.1.as_bytes()));
    drop_schema(&client, &schema).await;
}
