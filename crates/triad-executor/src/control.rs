//! Cancellations from the broadcast topic `triad.control`: every executor reads all of it
//! (no consumer group) from the start of its retention, so a request for a workflow
//! cancelled before this executor started is still skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{ControlAction, ControlRecord};

/// Cancelled workflows and the tokens of their calls in flight.
#[derive(Debug, Default)]
pub struct Cancellations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    cancelled: HashSet<String>,
    running: HashMap<String, Vec<CancellationToken>>,
}

impl Cancellations {
    pub fn is_cancelled(&self, workflow: &str) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.cancelled.contains(workflow))
    }

    /// A token cancelled when `workflow` is (already cancelled if it was).
    pub fn token(&self, workflow: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut i) = self.inner.lock() {
            if i.cancelled.contains(workflow) {
                token.cancel();
            } else {
                let list = i.running.entry(workflow.to_owned()).or_default();
                list.retain(|t| !t.is_cancelled());
                list.push(token.clone());
            }
        }
        token
    }

    pub fn release(&self, workflow: &str) {
        if let Ok(mut i) = self.inner.lock()
            && let Some(list) = i.running.get_mut(workflow)
        {
            list.retain(|t| !t.is_cancelled());
            if list.is_empty() {
                i.running.remove(workflow);
            }
        }
    }

    pub fn cancel(&self, workflow: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.cancelled.insert(workflow.to_owned());
            for t in i.running.remove(workflow).unwrap_or_default() {
                t.cancel();
            }
        }
    }
}

pub async fn follow(
    kafka: KafkaConfig,
    topic: String,
    codec: Arc<Codec>,
    cancellations: Arc<Cancellations>,
    stop: CancellationToken,
) -> crate::Result<()> {
    triad_kafka::tail::follow(&kafka, &topic, rdkafka::Offset::Beginning, stop, None, |m| {
        let codec = &codec;
        let cancellations = &cancellations;
        async move {
            match codec.decode::<ControlRecord>(m.payload()).await {
                Ok(record) => match record.action {
                    ControlAction::Cancel => {
                        tracing::info!(workflow.id = %record.workflow_id, "workflow cancelled; aborting its calls");
                        cancellations.cancel(&record.workflow_id);
                    }
                },
                Err(error) => tracing::warn!(%error, "undecodable control record skipped"),
            }
        }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_aborts_running_calls_and_marks_later_ones() {
        let c = Cancellations::default();
        let running = c.token("wf");
        let other = c.token("wf-2");
        c.cancel("wf");
        assert!(running.is_cancelled());
        assert!(!other.is_cancelled());
        assert!(c.is_cancelled("wf"));
        assert!(c.token("wf").is_cancelled());
    }
}
