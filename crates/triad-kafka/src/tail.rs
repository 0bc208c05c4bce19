//! Following a one-partition broadcast topic (control messages, the model registry) from its
//! start: every reader sees every record, there is no consumer group and nothing is
//! committed, so a process that starts late still learns everything the topic holds.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use triad_config::KafkaConfig;

use crate::Result;

/// Hands every record of partition 0 of `topic` from `from` (usually `Offset::Beginning`),
/// oldest first, to `each` until `stop`.
/// `caught_up` fires once every record the topic held at the start has been handled (at
/// once when it held none), so a caller can wait for the state the topic describes before
/// it serves.
pub async fn follow<F, Fut>(
    kafka: &KafkaConfig,
    topic: &str,
    from: Offset,
    stop: CancellationToken,
    caught_up: Option<oneshot::Sender<()>>,
    mut each: F,
) -> Result<()>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = ()>,
{
    let consumer: StreamConsumer = crate::client::follower_config(kafka).create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut caught_up = caught_up;
    let first = match from {
        Offset::Offset(o) => o.max(low),
        _ => low,
    };
    if high <= first {
        signal(&mut caught_up);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, from)?;
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = stream.next() => m,
        };
        match next {
            None => return Ok(()),
            Some(Err(error)) => {
                tracing::warn!(%error, messaging.destination.name = topic, "reading failed");
            }
            Some(Ok(m)) => {
                let offset = m.offset();
                each(m.detach()).await;
                if offset + 1 >= high {
                    signal(&mut caught_up);
                }
            }
        }
    }
}

fn signal(caught_up: &mut Option<oneshot::Sender<()>>) {
    if let Some(tx) = caught_up.take() {
        // The waiter may have given up; following goes on regardless.
        let _ = tx.send(());
    }
}
