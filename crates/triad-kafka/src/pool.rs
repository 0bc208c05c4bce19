//! A group consumer that works on up to `max_in_flight` records at once (the executors:
//! model calls take seconds, one at a time would waste the zone). Offsets are stored in
//! order: per partition the stored offset never passes a record whose work is unfinished,
//! however the completions interleave. When the pool is full the assigned partitions are
//! paused (backpressure); they resume as work completes. The consumer keeps polling while
//! paused, so rebalances and heartbeats are served.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consume::{Group, GroupContext, Outcome};
use crate::{Error, Result};

/// Offsets in flight for one partition, and the highest one seen.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    pending: BTreeSet<i64>,
    highest: Option<i64>,
    stored: Option<i64>,
    /// The first offset this consumer started: nothing below it is ours to store.
    lowest: Option<i64>,
}

impl OffsetTracker {
    pub fn started(&mut self, offset: i64) {
        self.lowest = Some(self.lowest.map_or(offset, |l| l.min(offset)));
        self.pending.insert(offset);
        self.highest = Some(self.highest.map_or(offset, |h| h.max(offset)));
    }

    /// Marks `offset` done; returns the offset to store when it advanced: the highest
    /// offset below which (and including which) every started record is done.
    pub fn finished(&mut self, offset: i64) -> Option<i64> {
        self.pending.remove(&offset);
        let committable = match self.pending.first() {
            Some(first) => first - 1,
            None => self.highest?,
        };
        if self.stored.is_some_and(|s| s >= committable)
            || self.lowest.is_none_or(|l| committable < l)
        {
            return None;
        }
        self.stored = Some(committable);
        Some(committable)
    }
}

type Key = (String, i32);

/// Runs `handler` over `options.topics` with at most `max_in_flight` records in progress.
/// A handler error is retried with backoff on the same record (inside its task); an
/// undecodable record goes to the dead-letter topic. On `cancel` the pool stops taking
/// records, drains the work in flight, stores its offsets and commits.
pub async fn run_pool<F, Fut, E>(
    options: Group<'_>,
    max_in_flight: usize,
    cancel: CancellationToken,
    handler: F,
) -> Result<()>
where
    F: Fn(OwnedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Outcome, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let Group {
        kafka,
        name: group,
        topics,
        on_undecodable: _,
        dlq,
        flush_on_revoke,
        instance_id,
        rebalances: _,
    } = options;
    let mut config = crate::client::consumer_config(kafka, group);
    if let Some(id) = &instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<GroupContext> =
        config.create_with_context(GroupContext::new(group, flush_on_revoke))?;
    consumer.subscribe(topics)?;
    let handler = Arc::new(handler);
    let mut tasks: JoinSet<(OwnedMessage, Outcome)> = JoinSet::new();
    let mut trackers: HashMap<Key, OffsetTracker> = HashMap::new();
    let mut paused = false;
    let stop = cancel.clone();
    let mut stream = consumer.stream();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((message, outcome)) = joined else { continue };
                complete(&consumer, &mut trackers, dlq, group, message, outcome).await?;
                if paused && tasks.len() < max_in_flight {
                    let assignment = consumer.assignment()?;
                    consumer.resume(&assignment)?;
                    paused = false;
                }
            }
            next = stream.next() => {
                let Some(next) = next else { break };
                let message = match next {
                    Ok(m) => m.detach(),
                    Err(error) => {
                        tracing::warn!(%error, "kafka consumer error");
                        continue;
                    }
                };
                trackers
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_default()
                    .started(message.offset());
                let handler = handler.clone();
                let token = cancel.clone();
                tasks.spawn(async move {
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        match handler(message.clone()).await {
                            Ok(outcome) => return (message, outcome),
                            Err(error) => {
                                tracing::warn!(
                                    %error,
                                    messaging.destination.name = message.topic(),
                                    messaging.destination.partition.id = message.partition(),
                                    messaging.kafka.offset = message.offset(),
                                    "handler failed; retrying the same record"
                                );
                                if token.is_cancelled() && backoff > Duration::from_secs(5) {
                                    // Shutting down: leave the record for the next owner.
                                    return (message, Outcome::Abandoned);
                                }
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(10));
                            }
                        }
                    }
                });
                if !paused && tasks.len() >= max_in_flight {
                    let assignment = consumer.assignment()?;
                    consumer.pause(&assignment)?;
                    paused = true;
                    tracing::debug!(in_flight = tasks.len(), "pool full; partitions paused");
                }
            }
        }
    }
    // Drain: the work in flight finishes (handlers see `cancel` and cut long waits short).
    while let Some(joined) = tasks.join_next().await {
        if let Ok((message, outcome)) = joined {
            complete(&consumer, &mut trackers, dlq, group, message, outcome).await?;
        }
    }
    crate::consume::commit_now(&consumer)
}

async fn complete(
    consumer: &StreamConsumer<GroupContext>,
    trackers: &mut HashMap<Key, OffsetTracker>,
    dlq: Option<&crate::dlq::DeadLetterWriter>,
    group: &str,
    message: OwnedMessage,
    outcome: Outcome,
) -> Result<()> {
    match outcome {
        Outcome::Done => {}
        // The pool's handlers finish their writes before returning.
        Outcome::Deferred(done) => {
            if let Err(reason) = done.await {
                return Err(Error::Delivery {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    reason,
                });
            }
        }
        // Not done: the offset must not pass it. The tracker keeps it pending.
        Outcome::Abandoned => return Ok(()),
        Outcome::Undecodable { kind, reason } => match dlq {
            Some(dlq) => {
                dlq.write(&message, group, kind, &reason).await?;
            }
            None => {
                return Err(Error::Halted {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    reason,
                });
            }
        },
    }
    let key = (message.topic().to_owned(), message.partition());
    if let Some(offset) = trackers
        .get_mut(&key)
        .and_then(|t| t.finished(message.offset()))
        && let Err(error) = consumer.store_offset(&key.0, key.1, offset)
    {
        // The partition was revoked meanwhile: its next owner re-delivers the record, and
        // the attempt id makes the repeat harmless.
        tracing::debug!(%error, messaging.destination.partition.id = key.1, "offset not stored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_never_pass_unfinished_work() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(o);
        }
        assert_eq!(t.finished(12), None, "10 and 11 are still running");
        assert_eq!(t.finished(10), Some(10));
        assert_eq!(t.finished(14), None);
        assert_eq!(t.finished(11), Some(12));
        assert_eq!(t.finished(13), Some(14));
        t.started(15);
        assert_eq!(t.finished(15), Some(15));
    }
}
