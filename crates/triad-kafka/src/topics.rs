//! The topic catalogue and `triad topics ensure`.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use triad_config::KafkaConfig;

use crate::{Error, Result};

pub const WORKFLOW_INBOX: &str = "triad.workflow-inbox";
pub const WORKFLOW_EVENTS: &str = "triad.workflow-events";
pub const CONTROL: &str = "triad.control";
pub const DLQ: &str = "triad.dlq";
pub const TASKS_PREFIX: &str = "triad.tasks.";
pub const EXECUTOR_STATUS: &str = "triad.executor-status";
pub const SNAPSHOTS: &str = "triad.workflow-snapshots";
pub const MODELS: &str = "triad.models";
pub const MODEL_HEALTH: &str = "triad.model-health";
pub const API_KEYS: &str = "triad.api-keys";
pub const KEY_DIRECTORY: &str = "triad.key-directory";
pub const WORKFLOW_KEYS: &str = "triad.workflow-keys";
pub const VIOLATIONS: &str = "triad.violations";
pub const CHECKPOINTS: &str = "triad.custody-checkpoints";
pub const POLICIES: &str = "triad.policies";
pub const CREDITS_INBOX: &str = "triad.credits-inbox";
pub const CREDITS: &str = "triad.credits";
pub const CREDITS_CHECKPOINTS: &str = "triad.credits-checkpoints";

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The spine's topic names with `kafka.topic_prefix` applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub inbox: String,
    pub events: String,
    pub control: String,
    pub dlq: String,
    pub executor_status: String,
    pub snapshots: String,
    pub models: String,
    pub model_health: String,
    pub api_keys: String,
    pub key_directory: String,
    pub workflow_keys: String,
    pub violations: String,
    pub checkpoints: String,
    pub policies: String,
    pub credits_inbox: String,
    pub credits: String,
    pub credits_checkpoints: String,
    prefix: String,
}

impl Names {
    pub fn new(kafka: &KafkaConfig) -> Self {
        let p = &kafka.topic_prefix;
        Self {
            inbox: format!("{p}{WORKFLOW_INBOX}"),
            events: format!("{p}{WORKFLOW_EVENTS}"),
            control: format!("{p}{CONTROL}"),
            dlq: format!("{p}{DLQ}"),
            executor_status: format!("{p}{EXECUTOR_STATUS}"),
            snapshots: format!("{p}{SNAPSHOTS}"),
            models: format!("{p}{MODELS}"),
            model_health: format!("{p}{MODEL_HEALTH}"),
            api_keys: format!("{p}{API_KEYS}"),
            key_directory: format!("{p}{KEY_DIRECTORY}"),
            workflow_keys: format!("{p}{WORKFLOW_KEYS}"),
            violations: format!("{p}{VIOLATIONS}"),
            checkpoints: format!("{p}{CHECKPOINTS}"),
            policies: format!("{p}{POLICIES}"),
            credits_inbox: format!("{p}{CREDITS_INBOX}"),
            credits: format!("{p}{CREDITS}"),
            credits_checkpoints: format!("{p}{CREDITS_CHECKPOINTS}"),
            prefix: p.clone(),
        }
    }

    /// The work queue of `zone`.
    pub fn tasks(&self, zone: &str) -> String {
        format!("{}{TASKS_PREFIX}{zone}", self.prefix)
    }
}

/// How long a topic keeps records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The event store: the log is the truth, nothing expires.
    Forever,
    Bounded {
        ms: i64,
    },
    /// Keep the latest record per key.
    Compacted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub retention: Retention,
    pub purpose: &'static str,
}

impl TopicSpec {
    fn configs(&self) -> Vec<(&'static str, String)> {
        match self.retention {
            // `retention.ms = Long.MAX_VALUE` rather than -1: both mean "never expire" to
            // Kafka, but Tansu 0.6 on sqlite moves the log start past every record written
            // before a restart when it is -1 (ADR 0007 §4).
            Retention::Forever => {
                vec![
                    ("cleanup.policy", "delete".into()),
                    ("retention.ms", i64::MAX.to_string()),
                    ("retention.bytes", "-1".into()),
                ]
            }
            Retention::Bounded { ms } => {
                vec![
                    ("cleanup.policy", "delete".into()),
                    ("retention.ms", ms.to_string()),
                ]
            }
            Retention::Compacted => vec![("cleanup.policy", "compact".into())],
        }
    }
}

/// Every topic of the spine. Per-workflow topics share one partition count so a workflow's
/// inbox partition and event partition have the same number.
pub fn catalogue(kafka: &KafkaConfig, registry_topic: &str, zones: &[String]) -> Vec<TopicSpec> {
    let p = kafka.partitions;
    let names = Names::new(kafka);
    let tasks: Vec<TopicSpec> = zones
        .iter()
        .map(|z| TopicSpec {
            name: names.tasks(z),
            partitions: p,
            retention: Retention::Bounded { ms: 7 * DAY_MS },
            purpose: "task requests for the executors of one zone, key = workflow id",
        })
        .collect();
    let mut specs = vec![
        TopicSpec {
            name: names.inbox,
            partitions: p,
            retention: Retention::Bounded { ms: 7 * DAY_MS },
            purpose: "commands and task results, key = workflow id",
        },
        TopicSpec {
            name: names.events,
            partitions: p,
            retention: Retention::Forever,
            purpose: "the event store, key = workflow id",
        },
        TopicSpec {
            name: names.snapshots,
            partitions: p,
            retention: Retention::Compacted,
            purpose: "workflow-processor snapshots for bounded recovery (a cache of the event store)",
        },
        TopicSpec {
            name: names.control,
            partitions: 1,
            retention: Retention::Bounded { ms: DAY_MS },
            purpose: "broadcast control messages (cancellations)",
        },
        TopicSpec {
            name: names.dlq,
            partitions: 1,
            retention: Retention::Bounded { ms: 30 * DAY_MS },
            purpose: "undecodable records of edge topics",
        },
        TopicSpec {
            name: registry_topic.into(),
            partitions: 1,
            retention: Retention::Compacted,
            purpose: "schema registry state",
        },
        TopicSpec {
            name: names.models,
            partitions: 1,
            retention: Retention::Compacted,
            purpose: "the model registry: each model's full current registration (a component version or a remote model), key = model id; a tombstone deregisters",
        },
        TopicSpec {
            name: names.model_health,
            partitions: 1,
            retention: Retention::Bounded { ms: DAY_MS },
            purpose: "heartbeats of self-registered remote models, key = model id",
        },
        TopicSpec {
            name: names.api_keys,
            partitions: 1,
            retention: Retention::Forever,
            purpose: "API keys created and revoked (hashes only), key = key id",
        },
        TopicSpec {
            name: names.key_directory,
            partitions: 1,
            retention: Retention::Forever,
            purpose: "the key directory: operator-signed, chained enrolments and revocations of node keys",
        },
        TopicSpec {
            name: names.workflow_keys,
            partitions: 1,
            retention: Retention::Compacted,
            purpose: "wrapped workflow keys, key = workflow key id; a tombstone crypto-shreds a workflow's payloads",
        },
        TopicSpec {
            name: names.violations,
            partitions: 1,
            retention: Retention::Forever,
            purpose: "refused attempts to open a payload outside its zones, key = workflow id",
        },
        TopicSpec {
            name: names.checkpoints,
            partitions: kafka.partitions,
            retention: Retention::Forever,
            purpose: "the notary's signed, chained checkpoints; partition p covers event-store partition p",
        },
        TopicSpec {
            name: names.policies,
            partitions: 1,
            retention: Retention::Forever,
            purpose: "every version of the sovereignty policy a processor enforced, signed, key = version",
        },
        TopicSpec {
            name: names.credits_inbox,
            partitions: p,
            retention: Retention::Bounded { ms: 7 * DAY_MS },
            purpose: "commands for the credits ledger (issue, reserve, settle), key = account",
        },
        TopicSpec {
            name: names.credits,
            partitions: p,
            retention: Retention::Forever,
            purpose: "the TRIAD credits ledger, chained per account, key = account; partition p is written by the owner of credits-inbox partition p",
        },
        TopicSpec {
            name: names.credits_checkpoints,
            partitions: p,
            retention: Retention::Forever,
            purpose: "the notary's signed, chained checkpoints over the credits ledger; partition p covers triad.credits partition p",
        },
        TopicSpec {
            name: names.executor_status,
            partitions: 1,
            retention: Retention::Bounded { ms: DAY_MS },
            purpose: "executor heartbeats and circuit-breaker transitions",
        },
    ];
    specs.extend(tasks);
    specs
}

/// What `ensure` did or would do for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create(TopicSpec),
    Exists { name: String, partitions: i32 },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Create(t) => {
                let retention = match t.retention {
                    Retention::Forever => "retention forever".to_owned(),
                    Retention::Bounded { ms } => format!("retention {}h", ms / 3_600_000),
                    Retention::Compacted => "compacted".to_owned(),
                };
                write!(
                    f,
                    "create {} ({} partitions, {retention}) — {}",
                    t.name, t.partitions, t.purpose
                )
            }
            Step::Exists { name, partitions } => {
                write!(f, "ok     {name} ({partitions} partitions)")
            }
        }
    }
}

/// The partition count of every existing topic.
pub fn existing_partitions(kafka: &KafkaConfig) -> Result<HashMap<String, i32>> {
    let consumer: BaseConsumer = crate::client::reader_config(kafka).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            (
                t.name().to_owned(),
                i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
            )
        })
        .collect())
}

/// Plans the steps for `specs`, refusing to touch a topic whose partition count differs.
pub fn plan(specs: &[TopicSpec], existing: &HashMap<String, i32>) -> Result<Vec<Step>> {
    specs
        .iter()
        .map(|spec| match existing.get(&spec.name) {
            None => Ok(Step::Create(spec.clone())),
            Some(&actual) if actual == spec.partitions => Ok(Step::Exists {
                name: spec.name.clone(),
                partitions: actual,
            }),
            Some(&actual) => Err(Error::PartitionMismatch {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            }),
        })
        .collect()
}

/// Creates the missing topics of `specs`. Idempotent: a topic created concurrently by
/// someone else counts as existing.
pub async fn ensure(kafka: &KafkaConfig, specs: &[TopicSpec], dry_run: bool) -> Result<Vec<Step>> {
    let steps = plan(specs, &existing_partitions(kafka)?)?;
    if dry_run {
        return Ok(steps);
    }
    let to_create: Vec<&TopicSpec> = steps
        .iter()
        .filter_map(|s| {
            if let Step::Create(t) = s {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    if to_create.is_empty() {
        return Ok(steps);
    }
    let admin: AdminClient<DefaultClientContext> = crate::client::reader_config(kafka).create()?;
    let configs: Vec<Vec<(&str, String)>> = to_create.iter().map(|t| t.configs()).collect();
    let new_topics: Vec<NewTopic<'_>> = to_create
        .iter()
        .zip(&configs)
        .map(|(t, cfg)| {
            cfg.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(kafka.replication_factor),
                ),
                |nt, (k, v)| nt.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(new_topics.iter(), &options).await? {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_refuses_to_change_partition_counts() {
        let specs = catalogue(&KafkaConfig::default(), "_schemas", &["US-EAST".to_owned()]);
        let existing = HashMap::from([(WORKFLOW_EVENTS.to_owned(), 3)]);
        let err = plan(&specs, &existing).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PartitionMismatch {
                    expected: 6,
                    actual: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn plan_creates_missing_and_keeps_existing() {
        let specs = catalogue(&KafkaConfig::default(), "_schemas", &["US-EAST".to_owned()]);
        let existing = HashMap::from([(WORKFLOW_EVENTS.to_owned(), 6)]);
        let steps = plan(&specs, &existing).unwrap();
        assert_eq!(steps.len(), specs.len());
        assert!(steps.contains(&Step::Exists {
            name: WORKFLOW_EVENTS.into(),
            partitions: 6
        }));
        assert_eq!(
            steps
                .iter()
                .filter(|s| matches!(s, Step::Create(_)))
                .count(),
            specs.len() - 1
        );
    }

    #[test]
    fn event_store_never_expires_and_registry_is_compacted() {
        let specs = catalogue(&KafkaConfig::default(), "_schemas", &["US-EAST".to_owned()]);
        let by_name = |n: &str| specs.iter().find(|s| s.name == n).unwrap().clone();
        assert_eq!(by_name(WORKFLOW_EVENTS).retention, Retention::Forever);
        assert!(
            by_name(WORKFLOW_EVENTS)
                .configs()
                .contains(&("retention.ms", i64::MAX.to_string()))
        );
        assert_eq!(by_name("_schemas").retention, Retention::Compacted);
        assert_eq!(
            by_name(WORKFLOW_INBOX).partitions,
            by_name(WORKFLOW_EVENTS).partitions
        );
    }
}
