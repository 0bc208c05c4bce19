//! The sovereignty kernel on the log: one node's [`Kernel`] kept current from two topics,
//! and what the flow does with it.
//!
//! - `triad.key-directory`: every change verified against the operator key and the chain
//!   (`SignedDirectory`); the kernel sees the directory as of the last good change.
//! - `triad.workflow-keys` (compacted): wrapped workflow keys by id; a tombstone is
//!   crypto-shredding, and the node drops the record and its unwrapped copy.
//!
//! The edge seals a submission's prompts ([`NodeKernel::seal_submission`]): one workflow key
//! per distinct zone set, published before the command so that an executor that sees the
//! task has (or soon has) the key. Executors open prompts and inputs and seal outputs under
//! the key their prompt came with ([`NodeKernel::open`], [`NodeKernel::seal`]).

pub mod audit;
pub mod notary;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::message::Message;
use serde_bytes::ByteBuf;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{
    DirectoryBody, KeyDirectoryChange, NodeEnrolled, NodeKeyRetired, NodeKeyRevoked,
    SubmitWorkflow, WorkflowKey, WrappedWorkflowKey,
};
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_sovereignty::{
    Binding, DirectoryChange, Expect, Kernel, Opened, Role, SignedChange, SignedDirectory,
    WorkflowKeyRecord, WrappedKey,
};

/// How long a node waits to read both topics at start before it refuses to serve.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long opening a payload waits for its workflow key record to arrive (the edge
/// publishes it before the command, so this covers only the follower's lag).
const RECORD_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sovereignty(#[from] triad_sovereignty::Error),
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
    #[error("no events of workflow {workflow_id} in {topic} partition {partition}")]
    NoEvents {
        workflow_id: String,
        topic: String,
        partition: i32,
    },
    #[error("{topic}: not read within {waited:?} (is the broker up?)")]
    CatchUp { topic: String, waited: Duration },
    #[error("{topic}@{offset}: {reason}")]
    Record {
        topic: String,
        offset: i64,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A directory record as the chain's signed change.
pub fn to_signed(r: KeyDirectoryChange) -> Result<SignedChange, String> {
    let change = match r.change {
        DirectoryBody::NodeEnrolled(e) => DirectoryChange::Enrolled {
            node_id: e.node_id,
            zone: e.zone,
            public_key: e.public_key,
        },
        DirectoryBody::NodeKeyRetired(k) => DirectoryChange::Retired { key_id: k.key_id },
        DirectoryBody::NodeKeyRevoked(k) => DirectoryChange::Revoked { key_id: k.key_id },
        DirectoryBody::NodeSigningKeyEnrolled(e) => DirectoryChange::SigningKeyEnrolled {
            node_id: e.node_id,
            zone: e.zone,
            public_key: e.public_key,
        },
    };
    Ok(SignedChange {
        sequence: u64::try_from(r.sequence).map_err(|_| "a negative sequence".to_owned())?,
        previous: r.previous,
        change,
        signer: r.signer,
        signature: r.signature,
    })
}

/// A signed change as the directory topic's record.
pub fn to_record(s: SignedChange) -> Result<KeyDirectoryChange, String> {
    let change = match s.change {
        DirectoryChange::Enrolled {
            node_id,
            zone,
            public_key,
        } => DirectoryBody::NodeEnrolled(NodeEnrolled {
            node_id,
            zone,
            public_key,
        }),
        DirectoryChange::Retired { key_id } => {
            DirectoryBody::NodeKeyRetired(NodeKeyRetired { key_id })
        }
        DirectoryChange::Revoked { key_id } => {
            DirectoryBody::NodeKeyRevoked(NodeKeyRevoked { key_id })
        }
        DirectoryChange::SigningKeyEnrolled {
            node_id,
            zone,
            public_key,
        } => DirectoryBody::NodeSigningKeyEnrolled(triad_domain::NodeSigningKeyEnrolled {
            node_id,
            zone,
            public_key,
        }),
    };
    Ok(KeyDirectoryChange {
        sequence: i64::try_from(s.sequence).map_err(|_| "a sequence above i64".to_owned())?,
        previous: s.previous,
        change,
        signer: s.signer,
        signature: s.signature,
        schema_version: 1,
    })
}

fn from_wire_key(k: WorkflowKey) -> Result<WorkflowKeyRecord, String> {
    Ok(WorkflowKeyRecord {
        format: u8::try_from(k.format).map_err(|_| format!("format {}", k.format))?,
        workflow_id: k.workflow_id,
        workflow_key_id: k.workflow_key_id,
        zones: k.zones,
        wrapped: k
            .wrapped
            .into_iter()
            .map(|w| WrappedKey {
                zone: w.zone,
                node_id: w.node_id,
                key_id: w.key_id,
                enc: w.enc.into_vec(),
                wrapped: w.wrapped.into_vec(),
            })
            .collect(),
    })
}

fn to_wire_key(r: &WorkflowKeyRecord, created_by: &str) -> WorkflowKey {
    WorkflowKey {
        format: i32::from(r.format),
        workflow_id: r.workflow_id.clone(),
        workflow_key_id: r.workflow_key_id.clone(),
        zones: r.zones.clone(),
        wrapped: r
            .wrapped
            .iter()
            .map(|w| WrappedWorkflowKey {
                zone: w.zone.clone(),
                node_id: w.node_id.clone(),
                key_id: w.key_id.clone(),
                enc: ByteBuf::from(w.enc.clone()),
                wrapped: ByteBuf::from(w.wrapped.clone()),
            })
            .collect(),
        created_by: created_by.to_owned(),
        created_at: triad_kafka::now_micros(),
        schema_version: 1,
    }
}

/// A node's kernel, following the log.
#[derive(Debug)]
pub struct NodeKernel {
    kernel: Kernel,
    codec: Arc<Codec>,
    producer: Producer,
    topic: String,
    /// Woken whenever a workflow key record arrives.
    arrived: Notify,
}

impl NodeKernel {
    /// Starts following the key directory (verified against `operator`) and the workflow
    /// keys for `kernel`; returns once both are read to their ends as of now.
    pub async fn start(
        kafka: &KafkaConfig,
        codec: Arc<Codec>,
        operator: p256::PublicKey,
        kernel: Kernel,
        stop: CancellationToken,
    ) -> Result<Arc<Self>> {
        let names = Names::new(kafka);
        let node = Arc::new(Self {
            kernel,
            codec: Arc::clone(&codec),
            producer: Producer::new(kafka)?,
            topic: names.workflow_keys.clone(),
            arrived: Notify::new(),
        });
        let (dir_ready, dir_wait) = oneshot::channel();
        let (keys_ready, keys_wait) = oneshot::channel();
        let chain = Arc::new(Mutex::new(SignedDirectory::new(operator)));
        spawn_follower(kafka, &names.key_directory, stop.clone(), dir_ready, {
            let (node, topic) = (Arc::clone(&node), names.key_directory.clone());
            move |m| {
                let (node, chain, topic) = (Arc::clone(&node), Arc::clone(&chain), topic.clone());
                async move { node.directory_change(&chain, &topic, &m).await }
            }
        });
        spawn_follower(kafka, &names.workflow_keys, stop, keys_ready, {
            let node = Arc::clone(&node);
            move |m| {
                let node = Arc::clone(&node);
                async move { node.workflow_key(&m).await }
            }
        });
        for (wait, topic) in [(dir_wait, &names.key_directory), (keys_wait, &node.topic)] {
            if !matches!(tokio::time::timeout(CATCH_UP, wait).await, Ok(Ok(()))) {
                return Err(Error::CatchUp {
                    topic: topic.clone(),
                    waited: CATCH_UP,
                });
            }
        }
        tracing::info!(
            node.id = %node.kernel.node_id(),
            zone = %node.kernel.zone(),
            enrolled_keys = node.kernel.directory().entries().count(),
            "sovereignty kernel ready"
        );
        Ok(node)
    }

    async fn directory_change(
        &self,
        chain: &Mutex<SignedDirectory>,
        topic: &str,
        m: &rdkafka::message::OwnedMessage,
    ) {
        let signed = match self.codec.decode::<KeyDirectoryChange>(m.payload()).await {
            Ok(r) => to_signed(r),
            Err(e) => Err(e.to_string()),
        };
        let applied = signed.and_then(|s| {
            let mut chain = chain.lock().map_err(|_| "poisoned".to_owned())?;
            chain.apply(&s).map_err(|e| e.to_string())?;
            Ok(chain.directory().clone())
        });
        match applied {
            Ok(directory) => self.kernel.set_directory(directory),
            // A refused change leaves the directory as it was: a forged enrolment widens
            // nothing, and every later change of a broken chain is refused too.
            Err(error) => tracing::error!(
                %error,
                messaging.destination.name = topic,
                messaging.kafka.offset = m.offset(),
                "key directory change refused"
            ),
        }
    }

    async fn workflow_key(&self, m: &rdkafka::message::OwnedMessage) {
        let Some(payload) = m.payload() else {
            // A tombstone: crypto-shredding.
            if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                self.kernel.shred(key);
                tracing::info!(workflow_key.id = key, "workflow key shredded");
            }
            return;
        };
        match self.codec.decode::<WorkflowKey>(Some(payload)).await {
            Ok(k) => match from_wire_key(k) {
                Ok(record) => {
                    self.kernel.put_record(record);
                    self.arrived.notify_waiters();
                }
                Err(error) => {
                    tracing::warn!(%error, messaging.kafka.offset = m.offset(), "workflow key record skipped");
                }
            },
            Err(error) => {
                tracing::warn!(%error, messaging.kafka.offset = m.offset(), "undecodable workflow key record skipped");
            }
        }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Seals every prompt of `command` for workflow `workflow_id`: one workflow key per
    /// distinct zone set (task zones, else the workflow's, groups expanded), published to
    /// `triad.workflow-keys` before this returns. Returns how many keys were made.
    pub async fn seal_submission(
        &self,
        workflow_id: &str,
        command: &mut SubmitWorkflow,
        groups: &[(String, Vec<String>)],
    ) -> Result<usize> {
        let mut keys: BTreeMap<Vec<String>, String> = BTreeMap::new();
        for task in &mut command.tasks {
            if triad_domain::is_sealed(&task.prompt) {
                continue;
            }
            let names = if task.zones.is_empty() {
                &command.default_zones
            } else {
                &task.zones
            };
            let zones: Vec<String> = triad_workflow::aggregate::expand_zones(names, groups)
                .into_iter()
                .collect();
            let kid = match keys.get(&zones) {
                Some(k) => k.clone(),
                None => {
                    let record = self.kernel.create(workflow_id, &zones)?;
                    self.producer
                        .send_record(
                            &self.codec,
                            &self.topic,
                            None,
                            &record.workflow_key_id,
                            &to_wire_key(&record, self.kernel.node_id()),
                        )
                        .await?;
                    keys.insert(zones, record.workflow_key_id.clone());
                    record.workflow_key_id
                }
            };
            let sealed = self.kernel.seal(
                &kid,
                Binding {
                    task_id: &task.id,
                    role: Role::Prompt,
                    attempt: 0,
                },
                &task.prompt,
            )?;
            task.prompt = sealed;
        }
        Ok(keys.len())
    }

    /// Opens a payload field (plaintext passes through), waiting a little for a workflow
    /// key record this node has not seen yet.
    pub async fn open<'a>(&self, payload: &'a [u8], expect: Expect<'_>) -> Result<Opened<'a>> {
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            // Registered before the attempt, so a record arriving in between still wakes it.
            let arrived = self.arrived.notified();
            match self.kernel.open(payload, expect) {
                Err(triad_sovereignty::Error::UnknownWorkflowKey { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    let _ = tokio::time::timeout_at(deadline, arrived).await;
                }
                other => return Ok(other?),
            }
        }
    }
}

/// Follows `topic` from its start on a task of its own until `stop`, handing each record
/// to `each`; `ready` fires once the records present at the start are handled.
fn spawn_follower<F, Fut>(
    kafka: &KafkaConfig,
    topic: &str,
    stop: CancellationToken,
    ready: oneshot::Sender<()>,
    each: F,
) where
    F: FnMut(rdkafka::message::OwnedMessage) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (kafka, topic) = (kafka.clone(), topic.to_owned());
    tokio::spawn(async move {
        let followed =
            triad_kafka::tail::follow(&kafka, &topic, Offset::Beginning, stop, Some(ready), each)
                .await;
        if let Err(error) = followed {
            tracing::error!(%error, messaging.destination.name = %topic, "the reader stopped; the kernel keeps its last state");
        }
    });
}

/// Crypto-shreds workflow `workflow_id`: a tombstone for each of its workflow keys on
/// `triad.workflow-keys`. Returns the ids of the keys shredded.
pub async fn shred(kafka: &KafkaConfig, codec: &Codec, workflow_id: &str) -> Result<Vec<String>> {
    let topic = Names::new(kafka).workflow_keys;
    let records = triad_kafka::consume::read_all(kafka, &topic, CATCH_UP).await?;
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    for m in &records {
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        match m.payload() {
            None => {
                live.remove(key);
            }
            Some(p) => {
                let record: WorkflowKey = codec.decode(Some(p)).await?;
                if record.workflow_id == workflow_id {
                    live.insert(key.to_owned(), true);
                }
            }
        }
    }
    let producer = Producer::new(kafka)?;
    for key in live.keys() {
        producer
            .send(&topic, Some(key.as_bytes()), None, &[])
            .await?;
    }
    Ok(live.into_keys().collect())
}
