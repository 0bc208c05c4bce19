//! The blob store on the stack's PostgreSQL (`scripts/dev.sh up`): content-addressed,
//! idempotent, verified on read, with clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use triad_config::PostgresConfig;
use triad_domain::BlobRef;
use triad_store::{BlobStore, Error, PgBlobStore, sha256_hex};

fn store() -> PgBlobStore {
    PgBlobStore::new(&PostgresConfig::default().url, None, 2).unwrap()
}

/// 300 KiB that no other test run writes.
fn unique_content() -> Vec<u8> {
    let id = uuid::Uuid::new_v4().to_string();
    id.bytes().cycle().take(300 * 1024).collect()
}

#[tokio::test]
async fn content_round_trips_by_its_hash_and_put_is_idempotent() {
    let store = store();
    let content = unique_content();
    let reference = store.put(&content).await.unwrap();
    assert_eq!(reference.sha256, sha256_hex(&content));
    assert_eq!(reference.size, 300 * 1024);
    assert_eq!(
        reference.uri,
        format!("postgres:triad_blobs/{}", reference.sha256)
    );
    assert_eq!(store.put(&content).await.unwrap(), reference);
    // A second store (another process) reads what the first wrote.
    assert_eq!(self::store().get(&reference).await.unwrap(), content);
}

#[tokio::test]
async fn missing_corrupt_and_malformed_references_are_errors() {
    let store = store();
    let absent = BlobRef {
        sha256: sha256_hex(&unique_content()),
        size: 1,
        uri: String::new(),
    };
    assert!(matches!(
        store.get(&absent).await,
        Err(Error::Missing { sha256 }) if sha256 == absent.sha256
    ));
    let malformed = BlobRef {
        sha256: "../etc/passwd".into(),
        ..absent.clone()
    };
    assert!(matches!(
        store.get(&malformed).await,
        Err(Error::BadReference(_))
    ));
    // Tamper with a stored blob: reading it must fail, naming both hashes.
    let content = unique_content();
    let reference = store.put(&content).await.unwrap();
    let (client, connection) =
        tokio_postgres::connect(&PostgresConfig::default().url, tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE triad_blobs SET content = $2 WHERE sha256 = $1",
            &[&reference.sha256, &b"tampered".as_slice()],
        )
        .await
        .unwrap();
    match store.get(&reference).await {
        Err(Error::Corrupt { sha256, actual }) => {
            assert_eq!(sha256, reference.sha256);
            assert_eq!(actual, sha256_hex(b"tampered"));
        }
        other => panic!("expected a corrupt-blob error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_url_names_the_key() {
    let error = PgBlobStore::new("postgresql://triad@127.0.0.1:notaport/triad", None, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("postgres.url"), "{error}");
}
