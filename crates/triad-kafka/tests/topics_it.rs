//! `topics ensure` against the real broker: creates what is missing, is idempotent, and
//! refuses to change the partition count of a live topic. Needs the stack.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use triad_config::KafkaConfig;
use triad_kafka::topics::{Retention, Step, TopicSpec, ensure, existing_partitions};

#[tokio::test]
async fn ensure_creates_then_keeps_then_refuses_a_partition_change() {
    let kafka = KafkaConfig::default();
    let name = format!("it.topics-{}", uuid::Uuid::new_v4().simple());
    let spec = |partitions| TopicSpec {
        name: name.clone(),
        partitions,
        retention: Retention::Forever,
        purpose: "test",
    };

    let dry = ensure(&kafka, &[spec(3)], true).await.unwrap();
    assert!(matches!(&dry[..], [Step::Create(_)]));
    assert!(
        !existing_partitions(&kafka).unwrap().contains_key(&name),
        "a dry run changes nothing"
    );

    let steps = ensure(&kafka, &[spec(3)], false).await.unwrap();
    assert!(matches!(&steps[..], [Step::Create(_)]));
    assert_eq!(existing_partitions(&kafka).unwrap().get(&name), Some(&3));

    let again = ensure(&kafka, &[spec(3)], false).await.unwrap();
    assert_eq!(
        again,
        vec![Step::Exists {
            name: name.clone(),
            partitions: 3
        }]
    );

    let err = ensure(&kafka, &[spec(4)], false).await.unwrap_err();
    assert!(
        matches!(
            err,
            triad_kafka::Error::PartitionMismatch {
                expected: 4,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(existing_partitions(&kafka).unwrap().get(&name), Some(&3));
}
