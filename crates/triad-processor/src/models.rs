//! The processor's view of the model registry (ADR 0020): remote models registered on
//! `triad.models` join the configured ones when a submission is validated and priced.
//!
//! Replay: the registry is a second input of a submission's decision, so the decision
//! records the registry position it was taken at (`registry_position` on
//! `WorkflowAccepted` / `BudgetRequested.submission` / `WorkflowRejected`). A repair after a
//! crash decides again with the view at that position, so it writes what the first run
//! would have. The view keeps the last records of each model for that (the topic is
//! compacted, so a repair long after many re-registrations of one model may see a later
//! one; repairs run at the restart right after the crash).
//!
//! Read-your-writes: a registration acknowledged before a submission is taken into account
//! even when this follower has not read it yet — a submission that would be rejected is
//! decided again once the view has caught up with the registry's end (bounded wait).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::ModelRegistration;
use triad_market::registry::{RegistryView, Rules, offers_at};
use triad_workflow::aggregate::Policy;

/// How long a submission that would be rejected waits for the view to reach the registry's
/// end before it is decided on what the view has.
const CATCH_UP: Duration = Duration::from_secs(5);

pub(crate) struct Registry {
    view: RwLock<RegistryView>,
    position: watch::Sender<i64>,
    hosts: BTreeMap<String, Vec<String>>,
    topic: String,
    watermarks: Option<Arc<BaseConsumer>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("position", &*self.position.borrow())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(
        kafka: &KafkaConfig,
        topic: &str,
        hosts: BTreeMap<String, Vec<String>>,
    ) -> Self {
        let watermarks = triad_kafka::client::follower_config(kafka)
            .create::<BaseConsumer>()
            .map_err(|error| {
                tracing::warn!(%error, "no watermark client: submissions are decided on the view as read");
            })
            .ok()
            .map(Arc::new);
        Self {
            view: RwLock::new(RegistryView::default()),
            position: watch::channel(0).0,
            hosts,
            topic: topic.to_owned(),
            watermarks,
        }
    }

    fn apply(&self, offset: i64, key: &str, registration: Option<&ModelRegistration>) {
        if let Ok(mut view) = self.view.write() {
            view.apply(offset, key, registration);
        }
        self.position.send_replace(offset + 1);
    }

    /// The registry position the view has reached.
    pub(crate) fn position(&self) -> i64 {
        *self.position.borrow()
    }

    /// `base` with the models configured or registered before `position`.
    pub(crate) fn policy_at(&self, base: &Policy, position: i64) -> Policy {
        let configured_offers = base.models.clone().unwrap_or_default();
        let configured: BTreeSet<String> = configured_offers.iter().map(|m| m.id.clone()).collect();
        let rules = Rules {
            zones: &base.zones,
            hosts: &self.hosts,
            configured: &configured,
        };
        let offers = match self.view.read() {
            Ok(view) => {
                let (offers, refused) = offers_at(&configured_offers, &view, Some(position), rules);
                for (model, errors) in refused {
                    tracing::debug!(%model, %errors, "registered model left out: outside this processor's policy");
                }
                offers
            }
            Err(_) => configured_offers,
        };
        Policy {
            models: Some(offers),
            registry_position: Some(position),
            ..base.clone()
        }
    }

    /// Waits until the view has read the registry up to its end as of now; true when that
    /// moved the view's position.
    pub(crate) async fn catch_up(&self) -> bool {
        let Some(consumer) = self.watermarks.clone() else {
            return false;
        };
        let topic = self.topic.clone();
        let high = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, 0, Duration::from_secs(5))
        })
        .await;
        let high = match high {
            Ok(Ok((_, high))) => high,
            Ok(Err(error)) => {
                tracing::warn!(%error, messaging.destination.name = %self.topic, "registry end unknown");
                return false;
            }
            Err(_) => return false,
        };
        let before = self.position();
        if high <= before {
            return false;
        }
        let mut position = self.position.subscribe();
        let reached = tokio::time::timeout(CATCH_UP, position.wait_for(|p| *p >= high))
            .await
            .is_ok_and(|r| r.is_ok());
        if !reached {
            tracing::warn!(
                position = self.position(),
                high,
                "the registry view did not catch up in time"
            );
        }
        self.position() > before
    }
}

/// Follows `triad.models` from offset 0 into `registry` until `stop`; `caught_up` fires once
/// the records present at the start are read.
pub(crate) async fn follow(
    kafka: KafkaConfig,
    codec: Arc<Codec>,
    registry: Arc<Registry>,
    stop: CancellationToken,
    caught_up: oneshot::Sender<()>,
) {
    let topic = registry.topic.clone();
    let followed = triad_kafka::tail::follow(
        &kafka,
        &topic,
        rdkafka::Offset::Beginning,
        stop,
        Some(caught_up),
        |m| {
            let registry = registry.clone();
            let codec = codec.clone();
            async move {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let registration = match m.payload() {
                    None => None,
                    Some(bytes) => match codec.decode::<ModelRegistration>(Some(bytes)).await {
                        Ok(r) => Some(r),
                        Err(error) => {
                            tracing::warn!(%error, messaging.kafka.offset = m.offset(), "undecodable registration skipped");
                            registry.position.send_replace(m.offset() + 1);
                            return;
                        }
                    },
                };
                registry.apply(m.offset(), &key, registration.as_ref());
            }
        },
    )
    .await;
    if let Err(error) = followed {
        // Submissions are then decided on the registrations read so far.
        tracing::error!(%error, messaging.destination.name = %topic, "the model registry reader stopped");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use triad_domain::{CommandMetadata, EventBody, InboxBody, InboxRecord};
    use triad_market::registry::{RemoteSpec, registration};
    use triad_workflow::aggregate::{Input, WorkflowState, process};
    use triad_workflow::{Task, Workflow};

    use super::*;

    fn submission() -> InboxRecord {
        let workflow = Workflow::new("hinted").zones(["US-EAST"]).task(
            Task::new("t", "Summarise")
                .model("vllm-east")
                .max_tokens(20),
        );
        InboxRecord {
            meta: CommandMetadata {
                command_id: "c1".into(),
                idempotency_key: "k1".into(),
                workflow_id: "wf".into(),
                issued_at: 1_000_000,
                actor: None,
                tenant: None,
                schema_version: triad_domain::INBOX_SCHEMA_VERSION,
            },
            body: InboxBody::SubmitWorkflow(workflow.to_command()),
        }
    }

    fn decide(registry: &Registry, position: i64) -> Vec<triad_domain::WorkflowEvent> {
        let record = submission();
        let input = Input {
            topic: "inbox",
            partition: 0,
            offset: 7,
            record: &record,
        };
        let policy = registry.policy_at(&crate::default_policy(), position);
        process(&mut WorkflowState::default(), &input, &policy)
    }

    #[test]
    fn a_submission_is_decided_with_the_registry_as_of_the_position_it_records() {
        let registry = Registry::new(&KafkaConfig::default(), "triad.models", BTreeMap::new());
        let spec: RemoteSpec = serde_json::from_value(serde_json::json!({
            "kind": "openai", "base_url": "http://vllm.east:8000", "zones": ["US-EAST"]
        }))
        .unwrap();
        let registered = registration("vllm-east", 1, spec.into_remote("vllm-east", "op"), 0);
        registry.apply(0, "vllm-east", Some(&registered));
        registry.apply(1, "vllm-east", None);
        assert_eq!(registry.position(), 2);

        // Registered at position 1: accepted, and the decision says where it was taken.
        let first = decide(&registry, 1);
        let EventBody::WorkflowAccepted(accepted) = &first[0].body else {
            panic!("{:?}", first[0].body)
        };
        assert_eq!(accepted.registry_position, Some(1));
        // Deregistered at position 2: the same input is rejected, naming the hint.
        let later = decide(&registry, 2);
        let EventBody::WorkflowRejected(rejected) = &later[0].body else {
            panic!("{:?}", later[0].body)
        };
        assert_eq!(rejected.field.as_deref(), Some("tasks[0].model"));
        assert_eq!(rejected.registry_position, Some(2));
        // A repair at the recorded position writes exactly what the first run wrote.
        assert_eq!(decide(&registry, 1), first);
    }
}
