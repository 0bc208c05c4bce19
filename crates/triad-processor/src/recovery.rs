//! Bounded recovery (ADR 0005), the pure part: choosing which snapshots to trust, and folding
//! the tail of the event store on top of them. The processor does the I/O around these.
//!
//! A partition's snapshot records are read in log order up to the reader's own epoch marker.
//! They are trusted only if no record was written by a superseded owner (its epoch is below an
//! epoch written before it: a zombie that woke up after the partition moved) and a checkpoint
//! exists. Otherwise the whole event-store partition is folded, which is always correct, and
//! the processor writes fresh snapshots of every workflow (the heal).

use std::collections::{HashMap, HashSet};

use triad_domain::{SnapshotBody, WorkflowEvent, WorkflowSnapshot};
use triad_sovereignty::merkle::Hash;
use triad_workflow::aggregate::WorkflowState;

/// The input that may have been cut short by a crash: the state before it and the ids of
/// the events of it already in the log.
#[derive(Debug, Clone)]
pub struct Repair {
    pub workflow_id: String,
    pub offset: i64,
    pub before: WorkflowState,
    pub present: HashSet<String>,
    /// The registry position a present decision of a submission was stamped with: the
    /// repair decides with the model view at that position, as the first run did.
    pub registry_position: Option<i64>,
}

/// The registry position stamped on a submission's decision, if `event` is one.
pub fn stamped_position(event: &WorkflowEvent) -> Option<i64> {
    use triad_domain::EventBody;
    match &event.body {
        EventBody::WorkflowAccepted(a) => a.registry_position,
        EventBody::BudgetRequested(b) => b.submission.registry_position,
        EventBody::WorkflowRejected(r) => r.registry_position,
        _ => None,
    }
}

/// Where the fold starts.
#[derive(Debug)]
pub enum Start {
    /// From the snapshots: fold the event store from `event_offset`.
    Snapshots {
        workflows: HashMap<String, WorkflowState>,
        event_offset: i64,
        last_input: i64,
    },
    /// From offset 0. `heal` when snapshots exist but cannot be trusted or read: the
    /// processor then rewrites them all, and deletes (tombstones) the `stale` keys that are
    /// not workflows of the partition.
    Log {
        reason: String,
        heal: bool,
        stale: Vec<String>,
    },
}

/// One record of a snapshot partition as read: a tombstone has no value.
#[derive(Debug, Clone)]
pub struct Stored {
    pub offset: i64,
    pub key: String,
    pub value: Option<WorkflowSnapshot>,
}

/// Chooses the start from a partition's snapshot records in log order; records at or after
/// `marker` (the reader's own epoch marker) are ignored.
///
/// Only the latest record of each key counts (what compaction keeps). Such a record is
/// stale when its epoch is below an epoch written before it: it was written by an owner
/// that had already lost the partition, so it may hide a newer state of its key. One stale
/// record means the snapshots are not trusted until a heal supersedes it.
pub fn select(records: &[Stored], marker: i64) -> Start {
    let mut highest_epoch = -1;
    // key -> (offset, value, stale)
    let mut latest: HashMap<&str, (i64, Option<&WorkflowSnapshot>, bool)> = HashMap::new();
    for r in records.iter().filter(|r| r.offset < marker) {
        let Some(value) = &r.value else {
            latest.insert(r.key.as_str(), (r.offset, None, false));
            continue;
        };
        if let SnapshotBody::EpochMarker(_) = value.body {
            highest_epoch = highest_epoch.max(r.offset);
            continue;
        }
        let stale = value.epoch < highest_epoch;
        highest_epoch = highest_epoch.max(value.epoch);
        latest.insert(r.key.as_str(), (r.offset, Some(value), stale));
    }
    let mut stale: Vec<(i64, String, i64)> = latest
        .iter()
        .filter(|(_, (_, _, s))| *s)
        .map(|(k, (o, v, _))| (*o, (*k).to_owned(), v.map_or(-1, |v| v.epoch)))
        .collect();
    stale.sort();
    if let Some((offset, _, epoch)) = stale.first() {
        return Start::Log {
            reason: format!(
                "the snapshot record at offset {offset} comes from a superseded owner \
                 (epoch {epoch}, written after a newer owner's)"
            ),
            heal: true,
            stale: stale.into_iter().map(|(_, k, _)| k).collect(),
        };
    }
    let mut checkpoint = None;
    let mut states = Vec::new();
    for (_, value, _) in latest.values() {
        match value.map(|v| &v.body) {
            Some(SnapshotBody::SnapshotState(s)) => states.push(s),
            Some(SnapshotBody::SnapshotCheckpoint(c)) => checkpoint = Some(*c),
            Some(SnapshotBody::EpochMarker(_)) | None => {}
        }
    }
    let Some(checkpoint) = checkpoint else {
        return Start::Log {
            reason: "no snapshot checkpoint yet".to_owned(),
            heal: !states.is_empty(),
            stale: vec![],
        };
    };
    let mut workflows = HashMap::with_capacity(states.len());
    for s in states {
        match WorkflowState::from_snapshot(&s.state_format, &s.state) {
            Ok(state) => {
                workflows.insert(s.workflow_id.clone(), state);
            }
            Err(error) => {
                return Start::Log {
                    reason: format!("the snapshot of {} is unusable: {error}", s.workflow_id),
                    heal: true,
                    stale: vec![],
                };
            }
        }
    }
    Start::Snapshots {
        workflows,
        event_offset: checkpoint.event_offset,
        last_input: checkpoint.last_input,
    }
}

/// A partition's state after the fold.
#[derive(Debug, Default)]
pub struct Folded {
    pub workflows: HashMap<String, WorkflowState>,
    /// The highest inbox offset with events in the log (or covered by the snapshots), -1
    /// when none.
    pub last_input: i64,
    pub repair: Option<Repair>,
    /// Workflows changed by the tail: their snapshots do not cover it.
    pub touched: HashSet<String>,
    /// Byte-identical copies skipped, and events the snapshots already covered.
    pub duplicates: usize,
}

/// Folds `events` (the tail of event-store partition `partition`, in log order) onto
/// `workflows`. An input's events are recognised by their causation (`inbox`, `partition`).
///
/// An event whose sequence is not above its workflow's is skipped: a byte-identical copy
/// written by a repair racing the dead owner's last write, by a zombie, or an event a
/// snapshot already covers. Such events still count for `last_input`, so an input whose
/// events are all covered is recognised as done; the last input with new events may have been
/// cut short by a crash, and `repair` holds the state before it.
///
/// `leaves[i]` is the leaf hash of `events[i]`'s Kafka value bytes: an applied event extends
/// its workflow's chain of custody with it (tests of the fold alone pass none).
pub fn fold(
    mut workflows: HashMap<String, WorkflowState>,
    last_input: i64,
    events: &[WorkflowEvent],
    leaves: &[Hash],
    inbox: &str,
    partition: i32,
) -> Folded {
    let mut folded = Folded {
        last_input,
        ..Folded::default()
    };
    // Per workflow: the input offset of its latest events and its state before them.
    let mut before: HashMap<String, (i64, WorkflowState)> = HashMap::new();
    let mut last: Option<(String, HashSet<String>, Option<i64>)> = None;
    for (i, event) in events.iter().enumerate() {
        let c = &event.meta.causation;
        let input = (c.topic == inbox && c.partition == partition).then_some(c.offset);
        let wf = &event.meta.workflow_id;
        if let Some(o) = input {
            if o > folded.last_input {
                folded.last_input = o;
                last = Some((wf.clone(), HashSet::new(), None));
            }
            if o == folded.last_input
                && let Some((_, ids, position)) = &mut last
            {
                ids.insert(event.meta.event_id.clone());
                *position = position.or(stamped_position(event));
            }
        }
        let state = workflows.entry(wf.clone()).or_default();
        if event.meta.sequence <= state.sequence {
            folded.duplicates += 1;
            continue;
        }
        if let Some(o) = input
            && before.get(wf).map(|(off, _)| *off) != Some(o)
        {
            before.insert(wf.clone(), (o, state.clone()));
        }
        state.apply(event);
        if let Some(leaf) = leaves.get(i) {
            crate::custody::push(&mut state.custody, *leaf);
        }
        folded.touched.insert(wf.clone());
    }
    if let Some((wf, present, registry_position)) = last
        && let Some((offset, state)) = before.remove(&wf)
        && offset == folded.last_input
    {
        folded.repair = Some(Repair {
            workflow_id: wf,
            offset,
            before: state,
            present,
            registry_position,
        });
    }
    folded.workflows = workflows;
    folded
}

/// Where a heal's checkpoint can stand, as (event offset, last input): after every event of
/// the tail when no input can be partial; otherwise just before the last input's first event,
/// so that after a reload the input is repaired again from the state before it.
/// `offsets[i]` is the event-store offset of `events[i]`.
pub fn heal_point(
    folded: &Folded,
    events: &[WorkflowEvent],
    offsets: &[i64],
    from: i64,
    seed_last_input: i64,
    inbox: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let input_of = |e: &WorkflowEvent| {
        let c = &e.meta.causation;
        (c.topic == inbox && c.partition == partition).then_some(c.offset)
    };
    let Some(repair) = &folded.repair else {
        return Some((offsets.last().map_or(from, |o| o + 1), folded.last_input));
    };
    let first = events.iter().position(|e| {
        input_of(e) == Some(repair.offset) && e.meta.workflow_id == repair.workflow_id
    })?;
    let before = events[..first]
        .iter()
        .filter_map(input_of)
        .fold(seed_last_input, i64::max);
    Some((*offsets.get(first)?, before))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use triad_domain::{
        CommandMetadata, EpochMarker, InboxBody, InboxRecord, SnapshotCheckpoint, SnapshotState,
        TaskOutcome, TaskResultReported, fixtures,
    };
    use triad_workflow::aggregate::{Input, pending_requests, process};

    use super::*;

    const INBOX: &str = "triad.workflow-inbox";

    fn record(workflow: &str, n: i64, body: InboxBody) -> InboxRecord {
        InboxRecord {
            meta: CommandMetadata {
                command_id: format!("{workflow}-{n}"),
                idempotency_key: format!("{workflow}-{n}"),
                workflow_id: workflow.to_owned(),
                issued_at: 1_767_225_600_000_000 + n,
                actor: None,
                tenant: None,
                schema_version: 2,
            },
            body,
        }
    }

    const WORKFLOWS: [&str; 6] = ["wf-a", "wf-b", "wf-c", "wf-d", "wf-e", "wf-f"];

    /// Six research workflows interleaved on one partition, every task answered: the event
    /// store's content.
    fn history() -> Vec<WorkflowEvent> {
        let policy = crate::default_policy();
        let mut states: HashMap<String, WorkflowState> = HashMap::new();
        let mut log = Vec::new();
        let mut offset = 0;
        let mut feed = |states: &mut HashMap<String, WorkflowState>, r: InboxRecord| {
            let state = states.entry(r.meta.workflow_id.clone()).or_default();
            let input = Input {
                topic: INBOX,
                partition: 0,
                offset,
                record: &r,
            };
            log.extend(process(state, &input, &policy));
            offset += 1;
        };
        for wf in WORKFLOWS {
            feed(
                &mut states,
                record(
                    wf,
                    0,
                    InboxBody::SubmitWorkflow(fixtures::research_workflow()),
                ),
            );
        }
        for n in 1..20 {
            for wf in WORKFLOWS {
                let requests = pending_requests(&states[wf], &policy);
                for request in requests {
                    feed(
                        &mut states,
                        record(
                            wf,
                            n,
                            InboxBody::TaskResultReported(TaskResultReported {
                                task_id: request.task_id.clone(),
                                attempt: request.attempt,
                                attempt_id: request.attempt_id.clone(),
                                model_id: "triad-local".into(),
                                executor_zone: request.zone.clone(),
                                outcome: TaskOutcome::Succeeded,
                                output: Some(format!("out of {}", request.task_id).into_bytes()),
                                output_ref: None,
                                error: None,
                                retryable: false,
                                input_tokens: 1,
                                output_tokens: 1,
                                cost_micros: 10,
                                latency_ms: 1,
                                routing: None,
                                execution: None,
                            }),
                        ),
                    );
                }
            }
        }
        log
    }

    fn snapshot(epoch: i64, body: SnapshotBody) -> WorkflowSnapshot {
        WorkflowSnapshot {
            partition: 0,
            epoch,
            written_at: 0,
            body,
            schema_version: 1,
        }
    }

    fn marker() -> SnapshotBody {
        SnapshotBody::EpochMarker(EpochMarker {
            instance: "p-0".into(),
        })
    }

    /// The snapshot records a processor writes after the first `cut` events: every workflow's
    /// state, then a checkpoint.
    fn snapshots_at(log: &[WorkflowEvent], cut: usize, epoch: i64) -> Vec<WorkflowSnapshot> {
        let folded = fold(HashMap::new(), -1, &log[..cut], &[], INBOX, 0);
        let mut out: Vec<WorkflowSnapshot> = folded
            .workflows
            .values()
            .map(|s| {
                snapshot(
                    epoch,
                    SnapshotBody::SnapshotState(SnapshotState {
                        workflow_id: s.workflow_id.clone(),
                        sequence: s.sequence,
                        state_format: triad_workflow::aggregate::STATE_FORMAT.into(),
                        state: s.to_snapshot().unwrap(),
                    }),
                )
            })
            .collect();
        out.push(snapshot(
            epoch,
            SnapshotBody::SnapshotCheckpoint(SnapshotCheckpoint {
                event_offset: i64::try_from(cut).unwrap(),
                last_input: folded.last_input,
            }),
        ));
        out
    }

    fn numbered(records: Vec<WorkflowSnapshot>) -> Vec<Stored> {
        (0..)
            .zip(records)
            .map(|(offset, r)| Stored {
                offset,
                key: r.key(),
                value: Some(r),
            })
            .collect()
    }

    fn restore(records: &[Stored], log: &[WorkflowEvent]) -> Folded {
        match select(records, i64::MAX) {
            Start::Snapshots {
                workflows,
                event_offset,
                last_input,
            } => fold(
                workflows,
                last_input,
                &log[usize::try_from(event_offset).unwrap()..],
                &[],
                INBOX,
                0,
            ),
            Start::Log { reason, .. } => panic!("expected snapshots to be used: {reason}"),
        }
    }

    #[test]
    fn snapshots_plus_tail_equal_the_full_fold_at_every_cut() {
        let log = history();
        assert!(log.len() > 40, "the history is too short: {}", log.len());
        let full = fold(HashMap::new(), -1, &log, &[], INBOX, 0);
        assert_eq!(full.workflows.len(), WORKFLOWS.len());
        // Cuts at input boundaries: a processor snapshots after an input's events.
        for cut in 1..=log.len() {
            if cut < log.len()
                && log[cut].meta.causation.offset == log[cut - 1].meta.causation.offset
            {
                continue;
            }
            let mut records = vec![snapshot(-1, marker())];
            records.extend(snapshots_at(&log, cut, 0));
            let restored = restore(&numbered(records), &log);
            assert_eq!(restored.workflows, full.workflows, "cut {cut}");
            assert_eq!(restored.last_input, full.last_input, "cut {cut}");
            let in_tail: HashSet<String> = log[cut..]
                .iter()
                .map(|e| e.meta.workflow_id.clone())
                .collect();
            assert_eq!(
                restored.touched, in_tail,
                "cut {cut}: only workflows with tail events need new snapshots"
            );
        }
    }

    #[test]
    fn a_snapshot_ahead_of_the_checkpoint_is_used_and_its_events_are_not_applied_twice() {
        let log = history();
        let full = fold(HashMap::new(), -1, &log, &[], INBOX, 0);
        // A checkpoint after 10 events, then a round for the whole log whose checkpoint was
        // never written (the processor died).
        let mut records = vec![snapshot(-1, marker())];
        records.extend(snapshots_at(&log, 10, 0));
        let mut ahead = snapshots_at(&log, log.len(), 0);
        ahead.pop();
        records.extend(ahead);
        let restored = restore(&numbered(records), &log);
        assert_eq!(restored.workflows, full.workflows);
        assert_eq!(restored.last_input, full.last_input);
        assert!(restored.repair.is_none(), "every input was complete");
        assert_eq!(restored.duplicates, log.len() - 10);
    }

    #[test]
    fn a_submission_cut_short_is_repaired_with_the_registry_position_it_recorded() {
        let policy = triad_workflow::aggregate::Policy {
            registry_position: Some(5),
            ..crate::default_policy()
        };
        let r = record(
            "wf-stamped",
            0,
            InboxBody::SubmitWorkflow(fixtures::research_workflow()),
        );
        let input = Input {
            topic: INBOX,
            partition: 0,
            offset: 0,
            record: &r,
        };
        let events = process(&mut WorkflowState::default(), &input, &policy);
        assert!(events.len() > 1, "a decision and its dispatches");
        let partial = &events[..events.len() - 1];
        let folded = fold(HashMap::new(), -1, partial, &[], INBOX, 0);
        let repair = folded.repair.expect("the partial input needs a repair");
        assert_eq!(repair.registry_position, Some(5));
        // An input whose decision carries no position (before v9) is repaired on the view.
        let unstamped = process(
            &mut WorkflowState::default(),
            &input,
            &crate::default_policy(),
        );
        let folded = fold(HashMap::new(), -1, &unstamped[..1], &[], INBOX, 0);
        assert_eq!(folded.repair.map(|r| r.registry_position), Some(None));
    }

    #[test]
    fn the_last_input_cut_short_is_repaired_from_the_state_before_it() {
        let log = history();
        // Drop the last event: the last input is partial.
        let partial = &log[..log.len() - 1];
        let last = partial.last().unwrap().meta.causation.offset;
        let first = partial
            .iter()
            .position(|e| e.meta.causation.offset == last)
            .unwrap();
        let mut records = vec![snapshot(-1, marker())];
        records.extend(snapshots_at(&log, 4, 0));
        let restored = restore(&numbered(records), partial);
        let repair = restored.repair.expect("the partial input needs a repair");
        assert_eq!(repair.offset, last);
        assert_eq!(repair.present.len(), partial.len() - first);
        let before = fold(HashMap::new(), -1, &partial[..first], &[], INBOX, 0);
        assert_eq!(
            repair.before,
            before.workflows[&partial[first].meta.workflow_id]
        );
        assert_eq!(repair.workflow_id, partial[first].meta.workflow_id);
    }

    #[test]
    fn a_heal_checkpoint_stands_before_a_partial_input_and_replays_its_repair() {
        let log = history();
        let partial = &log[..log.len() - 1];
        let offsets: Vec<i64> = (0..).take(partial.len()).collect();
        let folded = fold(HashMap::new(), -1, partial, &[], INBOX, 0);
        let repair = folded.repair.clone().unwrap();
        let (event_offset, last_input) =
            heal_point(&folded, partial, &offsets, 0, -1, INBOX, 0).unwrap();
        let first = usize::try_from(event_offset).unwrap();
        assert_eq!(partial[first].meta.causation.offset, repair.offset);
        assert_eq!(partial[first - 1].meta.causation.offset, last_input);
        // Snapshots at the heal point (the repaired workflow at its state before the input)
        // plus the tail give the same repair again.
        let mut workflows = folded.workflows.clone();
        workflows.insert(repair.workflow_id.clone(), repair.before.clone());
        let again = fold(workflows, last_input, &partial[first..], &[], INBOX, 0);
        let again_repair = again.repair.unwrap();
        assert_eq!(again_repair.offset, repair.offset);
        assert_eq!(again_repair.before, repair.before);
        assert_eq!(again_repair.present, repair.present);
        assert_eq!(again.workflows, folded.workflows);
        // Without a partial input the checkpoint follows the last event.
        let complete = fold(HashMap::new(), -1, &log[..first], &[], INBOX, 0);
        let offsets: Vec<i64> = (0..).take(first).collect();
        let mut complete_no_repair = complete;
        complete_no_repair.repair = None;
        assert_eq!(
            heal_point(
                &complete_no_repair,
                &log[..first],
                &offsets,
                0,
                -1,
                INBOX,
                0
            ),
            Some((event_offset, complete_no_repair.last_input))
        );
    }

    #[test]
    fn a_record_from_a_superseded_owner_is_distrusted_until_a_heal_supersedes_it() {
        let log = history();
        let mut records = vec![snapshot(-1, marker())];
        records.extend(snapshots_at(&log, 30, 0));
        // A new owner takes the partition (its marker's offset is its epoch)...
        let new_epoch = i64::try_from(records.len()).unwrap();
        records.push(snapshot(-1, marker()));
        records.extend(snapshots_at(&log, log.len(), new_epoch));
        // ...then the old one wakes up and writes a stale state of one workflow.
        let zombie = snapshots_at(&log, 10, 0).remove(0);
        let zombie_key = zombie.key();
        records.push(zombie);
        let mut stored = numbered(records);
        match select(&stored, i64::MAX) {
            Start::Log {
                reason,
                heal,
                stale,
            } => {
                assert!(heal);
                assert!(reason.contains("superseded owner"), "{reason}");
                assert_eq!(stale, vec![zombie_key.clone()]);
            }
            Start::Snapshots { .. } => panic!("a zombie's record must not be trusted"),
        }
        // Before the zombie's write the same records are trusted.
        let zombie_at = stored.last().unwrap().offset;
        assert!(matches!(
            select(&stored, zombie_at),
            Start::Snapshots { .. }
        ));
        // A heal by a third owner: its marker, every workflow again, a checkpoint. The
        // zombie's record is still in the log but no longer the latest of its key.
        let heal_epoch = zombie_at + 1;
        let mut heal = vec![snapshot(-1, marker())];
        heal.extend(snapshots_at(&log, log.len(), heal_epoch));
        for (offset, r) in (heal_epoch..).zip(heal) {
            stored.push(Stored {
                offset,
                key: r.key(),
                value: Some(r),
            });
        }
        let full = fold(HashMap::new(), -1, &log, &[], INBOX, 0);
        assert_eq!(restore(&stored, &log).workflows, full.workflows);
        // A stale key that is no workflow at all is superseded by a tombstone.
        let mut garbage = snapshot(0, marker());
        garbage.body = SnapshotBody::SnapshotState(SnapshotState {
            workflow_id: "wf-unknown".into(),
            sequence: 1,
            state_format: triad_workflow::aggregate::STATE_FORMAT.into(),
            state: b"{}".to_vec(),
        });
        let next = stored.last().unwrap().offset + 1;
        stored.push(Stored {
            offset: next,
            key: "wf-unknown".into(),
            value: Some(garbage),
        });
        assert!(matches!(
            select(&stored, i64::MAX),
            Start::Log { stale, .. } if stale == vec!["wf-unknown".to_owned()]
        ));
        stored.push(Stored {
            offset: next + 1,
            key: "wf-unknown".into(),
            value: None,
        });
        assert_eq!(restore(&stored, &log).workflows, full.workflows);
    }

    #[test]
    fn no_checkpoint_or_an_unknown_format_means_a_fold_of_the_log() {
        let log = history();
        let mut records = snapshots_at(&log, 10, 0);
        records.pop();
        assert!(matches!(
            select(&numbered(records), i64::MAX),
            Start::Log { heal: true, .. }
        ));
        assert!(matches!(
            select(&[], i64::MAX),
            Start::Log { heal: false, .. }
        ));
        let mut records = snapshots_at(&log, 10, 0);
        if let SnapshotBody::SnapshotState(s) = &mut records[0].body {
            s.state_format = "triad.workflow-state/json-v0".into();
        }
        match select(&numbered(records), i64::MAX) {
            Start::Log { reason, heal, .. } => {
                assert!(heal);
                assert!(reason.contains("json-v0"), "{reason}");
            }
            Start::Snapshots { .. } => panic!("an unknown format must not be read"),
        }
    }
}
