//! Consumers against the real broker and registry: an undecodable edge record goes to the
//! dead-letter topic and the partition moves on; an undecodable event-store record halts the
//! partition and is never skipped; offsets are stored only after the work, so a restarted
//! consumer neither loses nor repeats a record; redrive restores the original bytes.
//! Needs the stack (`scripts/dev.sh up`). Each test uses its own topics and group.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio_util::sync::CancellationToken;
use triad_codec::{Codec, CodecOptions};
use triad_config::KafkaConfig;
use triad_domain::{InboxRecord, fixtures};
use triad_kafka::consume::{Group, OnUndecodable, Outcome, read_at, run_group};
use triad_kafka::dlq::{DeadLetterWriter, list, redrive};
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Retention, TopicSpec, ensure};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn codec() -> Arc<Codec> {
    Arc::new(
        Codec::new(&CodecOptions {
            registry_url: "http://127.0.0.1:8081".into(),
            max_allocation_bytes: 16 << 20,
        })
        .unwrap(),
    )
}

async fn topic(kafka: &KafkaConfig, name: &str) {
    let spec = TopicSpec {
        name: name.into(),
        partitions: 1,
        retention: Retention::Bounded { ms: 3_600_000 },
        purpose: "test",
    };
    ensure(kafka, &[spec], false).await.unwrap();
}

/// Runs a group consumer until `stop_after` records were handled (or 60 s), returning the
/// offsets the handler saw and the runner's result.
async fn consume(
    kafka: &KafkaConfig,
    group: &str,
    source: &str,
    policy: OnUndecodable,
    dlq: Option<&DeadLetterWriter>,
    codec: Arc<Codec>,
    stop_after: usize,
) -> (Vec<i64>, triad_kafka::Result<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let handler = {
        let seen = seen.clone();
        let cancel = cancel.clone();
        move |m: OwnedMessage| {
            let seen = seen.clone();
            let cancel = cancel.clone();
            let codec = codec.clone();
            async move {
                let outcome = match codec.decode::<InboxRecord>(m.payload()).await {
                    Ok(_) => Outcome::Done,
                    Err(e) if e.is_undecodable() => Outcome::Undecodable {
                        kind: "decode",
                        reason: e.to_string(),
                    },
                    Err(e) => return Err(e),
                };
                let mut seen = seen.lock().unwrap();
                seen.push(m.offset());
                if seen.len() >= stop_after {
                    cancel.cancel();
                }
                Ok(outcome)
            }
        }
    };
    let topics = [source];
    let run = run_group(
        Group {
            kafka,
            name: group,
            topics: &topics,
            on_undecodable: policy,
            dlq,
            flush_on_revoke: None,
            instance_id: None,
            rebalances: None,
        },
        cancel.clone(),
        handler,
    );
    let result = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("consumer did not finish in 60 s");
    let seen = seen.lock().unwrap().clone();
    (seen, result)
}

#[tokio::test]
async fn undecodable_edge_records_are_dead_lettered_and_redriven_byte_for_byte() {
    let kafka = KafkaConfig::default();
    let codec = codec();
    let (source, dlq_topic, group) = (unique("it.edge"), unique("it.dlq"), unique("it-group"));
    topic(&kafka, &source).await;
    topic(&kafka, &dlq_topic).await;
    let producer = Producer::new(&kafka).unwrap();
    let good = codec
        .encode(&source, &fixtures::inbox_records()[0])
        .await
        .unwrap();
    let trace: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    producer
        .send(
            &source,
            Some(b"wf-1"),
            Some(b"{not avro}"),
            &[("traceparent", Some(trace))],
        )
        .await
        .unwrap();
    producer
        .send(&source, Some(b"wf-1"), Some(&good), &[])
        .await
        .unwrap();
    producer
        .send(&source, Some(b"wf-2"), Some(&[0, 0]), &[])
        .await
        .unwrap();

    let writer = DeadLetterWriter::new(producer.clone(), codec.clone(), &dlq_topic);
    let (seen, result) = consume(
        &kafka,
        &group,
        &source,
        OnUndecodable::DeadLetter,
        Some(&writer),
        codec.clone(),
        3,
    )
    .await;
    result.unwrap();
    assert_eq!(seen, vec![0, 1, 2], "every record handled once, in order");

    let letters = list(&kafka, &codec, &dlq_topic).await.unwrap();
    let sources: Vec<i64> = letters.iter().map(|l| l.letter.source_offset).collect();
    assert_eq!(sources, vec![0, 2]);
    let first = &letters[0].letter;
    assert_eq!(first.source_topic, source);
    assert_eq!(first.consumer_group, group);
    assert_eq!(first.value.as_deref(), Some(&b"{not avro}"[..]));
    assert!(first.error.contains("magic byte 0x7b"), "{}", first.error);
    assert_eq!(first.headers[0].value.as_deref(), Some(trace));
    assert!(
        letters[1].letter.error.contains("shorter than the 5-byte"),
        "{}",
        letters[1].letter.error
    );

    // Restart: the group resumes after what it committed; a new record is the only one seen.
    producer
        .send(&source, Some(b"wf-3"), Some(&good), &[])
        .await
        .unwrap();
    let (seen, result) = consume(
        &kafka,
        &group,
        &source,
        OnUndecodable::DeadLetter,
        Some(&writer),
        codec.clone(),
        1,
    )
    .await;
    result.unwrap();
    assert_eq!(seen, vec![3]);

    // Redrive puts the original record back unchanged.
    let delivered = redrive(&producer, first).await.unwrap();
    let again = read_at(
        &kafka,
        &source,
        delivered.partition,
        delivered.offset,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(again.payload(), Some(&b"{not avro}"[..]));
    assert_eq!(again.key(), Some(&b"wf-1"[..]));
    let header = again
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "traceparent")
        .unwrap();
    assert_eq!(header.value, Some(trace));
}

#[tokio::test]
async fn an_undecodable_event_store_record_halts_the_partition_and_is_never_skipped() {
    let kafka = KafkaConfig::default();
    let codec = codec();
    let (source, group) = (unique("it.events"), unique("it-group"));
    topic(&kafka, &source).await;
    let producer = Producer::new(&kafka).unwrap();
    let good = codec
        .encode(&source, &fixtures::inbox_records()[1])
        .await
        .unwrap();
    producer
        .send(&source, Some(b"wf"), Some(&good), &[])
        .await
        .unwrap();
    producer
        .send(&source, Some(b"wf"), Some(b"garbage"), &[])
        .await
        .unwrap();
    producer
        .send(&source, Some(b"wf"), Some(&good), &[])
        .await
        .unwrap();

    let (seen, result) = consume(
        &kafka,
        &group,
        &source,
        OnUndecodable::Halt,
        None,
        codec.clone(),
        10,
    )
    .await;
    assert_eq!(seen, vec![0, 1]);
    let err = result.unwrap_err();
    assert!(
        matches!(err, triad_kafka::Error::Halted { offset: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be skipped"));

    // After a restart the same record stops it again: offset 1 was never committed.
    let (seen, result) = consume(
        &kafka,
        &group,
        &source,
        OnUndecodable::Halt,
        None,
        codec,
        10,
    )
    .await;
    assert_eq!(seen, vec![1]);
    assert!(matches!(
        result,
        Err(triad_kafka::Error::Halted { offset: 1, .. })
    ));
}
