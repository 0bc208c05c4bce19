//! The credits ledger processor (`triad ledger`, docs/credits.md): consumes
//! `triad.credits-inbox` and is the only writer of `triad.credits` partition p for inbox
//! partition p. Both topics are keyed by account, so one account has one writer.
//!
//! Each command is decided by [`triad_market::ledger::Account::decide`] against the account
//! folded from the log; its events are written (`acks=all`) before its offset is stored and
//! before its answer goes to the workflow inbox. Crash safety without transactions, as for
//! the workflow processor (ADR 0002): when a partition is first seen, its accounts are folded
//! from the ledger partition — checking every event's sequence, chain link and totals — and
//! the inputs up to the last one recorded there (causation) are skipped. A settlement is the
//! only command with two events; one cut short after its first is completed on load, with
//! the id it would have had. Commands are idempotent (one reservation per workflow, one issue
//! per command id), and the workflow processor re-sends a command until its answer arrives,
//! so an answer lost in a crash is answered again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{
    CommandMetadata, CreditsCommand, CreditsEvent, CreditsEventBody, InboxBody, InboxRecord,
    LedgerCausation,
};
use triad_kafka::consume::{Group, Outcome};
use triad_kafka::dlq::DeadLetterWriter;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_market::ledger::Account;

use crate::{Error, Result};

/// The ledger processor's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    /// Distinguishes ledger processors sharing the group (static membership id).
    pub instance: u32,
}

#[derive(Debug, Default)]
struct PartitionState {
    generation: u64,
    accounts: HashMap<String, Account>,
    /// The offset of the last input whose events are on the ledger.
    last_input: i64,
}

struct Ledger {
    kafka: KafkaConfig,
    names: Names,
    codec: Arc<Codec>,
    producer: Producer,
    partitions: Mutex<HashMap<i32, PartitionState>>,
    rebalances: Arc<AtomicU64>,
}

/// Hex SHA-256 of a record's Avro datum: its value without the 5-byte wire prefix (magic
/// byte and schema id), so the chain does not depend on registry ids.
pub fn datum_sha256(value: &[u8]) -> String {
    let datum = value
        .get(triad_codec::wire::PREFIX_LEN..)
        .unwrap_or_default();
    triad_sovereignty::hex(&triad_sovereignty::custody::sha256(datum))
}

impl Ledger {
    async fn load(&self, p: i32) -> Result<PartitionState> {
        let records = triad_kafka::consume::read_partition_from(
            &self.kafka,
            &self.names.credits,
            p,
            0,
            Duration::from_secs(120),
        )
        .await?;
        let mut ps = PartitionState {
            last_input: -1,
            ..PartitionState::default()
        };
        for m in &records {
            let event: CreditsEvent =
                self.codec
                    .decode(m.payload())
                    .await
                    .map_err(|source| Error::EventStore {
                        topic: self.names.credits.clone(),
                        partition: p,
                        offset: m.offset(),
                        source,
                    })?;
            let account = ps.accounts.entry(event.account.clone()).or_default();
            account
                .apply(&event, datum_sha256(m.payload().unwrap_or_default()))
                .map_err(|reason| Error::Ledger {
                    partition: p,
                    offset: m.offset(),
                    reason,
                })?;
            if event.causation.topic == self.names.credits_inbox && event.causation.partition == p {
                ps.last_input = ps.last_input.max(event.causation.offset);
            }
        }
        // Settlements cut short between their two events get their release now.
        let mut completed = 0;
        let mut ids: Vec<String> = ps.accounts.keys().cloned().collect();
        ids.sort();
        for id in ids {
            let Some(account) = ps.accounts.get_mut(&id) else {
                continue;
            };
            for (release, causation) in account.pending_releases() {
                let event = account
                    .next_event(
                        &id,
                        CreditsEventBody::ReservationReleased(release),
                        &causation,
                        1,
                        triad_kafka::now_micros(),
                    )
                    .map_err(|reason| Error::Ledger {
                        partition: p,
                        offset: causation.offset,
                        reason,
                    })?;
                let bytes = self.codec.encode(&self.names.credits, &event).await?;
                self.producer
                    .send_to(
                        &self.names.credits,
                        Some(p),
                        Some(id.as_bytes()),
                        Some(&bytes),
                        &[],
                    )
                    .await?;
                account
                    .apply(&event, datum_sha256(&bytes))
                    .map_err(|reason| Error::Ledger {
                        partition: p,
                        offset: causation.offset,
                        reason,
                    })?;
                completed += 1;
            }
        }
        tracing::info!(
            messaging.destination.name = %self.names.credits,
            messaging.destination.partition.id = p,
            events = records.len(),
            accounts = ps.accounts.len(),
            last_input = ps.last_input,
            settlements_completed = completed,
            "ledger partition restored"
        );
        Ok(ps)
    }

    async fn handle(&self, m: OwnedMessage) -> Result<Outcome> {
        let (p, o) = (m.partition(), m.offset());
        let mut partitions = self.partitions.lock().await;
        let generation = self.rebalances.load(Ordering::SeqCst);
        if partitions
            .get(&p)
            .is_some_and(|ps| ps.generation != generation)
        {
            partitions.remove(&p);
        }
        let ps = match partitions.entry(p) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut loaded = self.load(p).await?;
                loaded.generation = generation;
                e.insert(loaded)
            }
        };
        if o <= ps.last_input {
            return Ok(Outcome::Done); // its events are on the ledger already
        }
        let command: CreditsCommand = match self.codec.decode(m.payload()).await {
            Ok(c) => c,
            Err(e) if e.is_undecodable() => {
                return Ok(Outcome::Undecodable {
                    kind: "decode",
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if !triad_workflow::valid_account(&command.account) {
            return Ok(Outcome::Undecodable {
                kind: "invalid",
                reason: format!("account: {:?} is not a valid account id", command.account),
            });
        }
        let account = ps.accounts.entry(command.account.clone()).or_default();
        let decision = match account.decide(&command.account, &command.command_id, &command.body) {
            Ok(d) => d,
            Err(invalid) => {
                return Ok(Outcome::Undecodable {
                    kind: "invalid",
                    reason: format!("{}: {invalid}", command.body.type_name()),
                });
            }
        };
        let causation = LedgerCausation {
            command_id: command.command_id.clone(),
            topic: self.names.credits_inbox.clone(),
            partition: p,
            offset: o,
        };
        let mut acks = Vec::with_capacity(decision.events.len());
        let written = decision.events.len();
        for (i, body) in decision.events.into_iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let event = account
                .next_event(&command.account, body, &causation, index, command.issued_at)
                .map_err(|reason| Error::Ledger {
                    partition: p,
                    offset: o,
                    reason,
                })?;
            let bytes = self.codec.encode(&self.names.credits, &event).await?;
            account
                .apply(&event, datum_sha256(&bytes))
                .map_err(|reason| Error::Ledger {
                    partition: p,
                    offset: o,
                    reason,
                })?;
            tracing::debug!(
                credits.account = %command.account,
                event_type = event.body.type_name(),
                messaging.kafka.offset = o,
                "ledger event"
            );
            acks.push(
                self.producer
                    .enqueue(
                        &self.names.credits,
                        Some(p),
                        command.account.as_bytes(),
                        &bytes,
                    )
                    .await?,
            );
        }
        if written > 0 {
            ps.last_input = o;
        }
        let reply = match decision.reply {
            Some(reply) => {
                let record = InboxRecord {
                    meta: CommandMetadata {
                        command_id: uuid::Uuid::new_v5(
                            &uuid::Uuid::NAMESPACE_URL,
                            format!("triad-ledger-reply:{}/{p}@{o}", self.names.credits_inbox)
                                .as_bytes(),
                        )
                        .to_string(),
                        idempotency_key: format!("ledger:{}", command.command_id),
                        workflow_id: reply.workflow_id.clone(),
                        issued_at: command.issued_at,
                        actor: Some("ledger".to_owned()),
                        tenant: None,
                        schema_version: triad_domain::INBOX_SCHEMA_VERSION,
                    },
                    body: InboxBody::LedgerReply(reply.body),
                };
                let bytes = self.codec.encode(&reply.topic, &record).await?;
                Some((reply.topic, reply.workflow_id, bytes))
            }
            None => None,
        };
        drop(partitions);
        let producer = self.producer.clone();
        Ok(Outcome::Deferred(
            async move {
                for ack in acks {
                    ack.await.map_err(|e| e.to_string())?;
                }
                // The answer only once the ledger holds the decision.
                if let Some((topic, key, bytes)) = reply {
                    producer
                        .send_to(&topic, None, Some(key.as_bytes()), Some(&bytes), &[])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            .boxed(),
        ))
    }
}

/// Runs the ledger processor until `cancel`.
pub async fn run(options: &Options, codec: Arc<Codec>, cancel: CancellationToken) -> Result<()> {
    let names = Names::new(&options.kafka);
    let producer = Producer::new(&options.kafka)?;
    let group = format!("{}-ledger", options.kafka.group_prefix);
    let ledger = Arc::new(Ledger {
        kafka: options.kafka.clone(),
        names: names.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        partitions: Mutex::new(HashMap::new()),
        rebalances: Arc::default(),
    });
    let dlq = DeadLetterWriter::new(producer.clone(), codec, &names.dlq);
    let topics = [names.credits_inbox.as_str()];
    tracing::info!(messaging.consumer.group.name = %group, messaging.destination.name = %names.credits_inbox, "credits ledger starting");
    let handler = {
        let ledger = ledger.clone();
        move |m: OwnedMessage| {
            let ledger = ledger.clone();
            async move { ledger.handle(m).await }
        }
    };
    let group_options = Group::worker(
        &options.kafka,
        &group,
        &topics,
        &dlq,
        &producer,
        options.instance,
    )
    .counting_rebalances(ledger.rebalances.clone());
    let result = triad_kafka::consume::run_group(group_options, cancel, handler).await;
    result?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

pub use triad_market::ledger::LedgerView;

/// Reads `triad.credits` — one partition (`Some(p)`) or all — from offset 0 and folds it,
/// checking every event.
pub async fn read_ledger(
    kafka: &KafkaConfig,
    codec: &Codec,
    only: Option<i32>,
) -> Result<LedgerView> {
    let topic = Names::new(kafka).credits;
    let records =
        triad_kafka::consume::read_partitions(kafka, &topic, only, Duration::from_secs(120))
            .await?;
    let mut view = LedgerView::default();
    for m in &records {
        let at = format!("{}@{}", m.partition(), m.offset());
        let event: CreditsEvent = match codec.decode(m.payload()).await {
            Ok(e) => e,
            Err(error) if error.is_undecodable() => {
                view.undecodable(&at, &error.to_string());
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        view.record(
            &at,
            &key,
            event,
            datum_sha256(m.payload().unwrap_or_default()),
        );
    }
    Ok(view)
}
