//! The chain of custody over GraphQL: a workflow's leaves and Merkle root recomputed from the
//! event store in Kafka (never from the read models), the audit of its execution records
//! when this API holds a key directory, and inclusion proofs (`docs/audit.md`).

use async_graphql::SimpleObject;
use triad_kernel::audit::{Chain, check};
use triad_sovereignty::{hex, merkle};

use crate::long::Long;
use crate::{AppState, Error};

/// One event of a workflow as the event store holds it.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "AuditLeaf")]
pub struct LeafView {
    /// Its position among the workflow's events in log order (from 0).
    pub index: i32,
    pub offset: Long,
    pub sequence: Long,
    pub event_id: String,
    pub event_type: String,
    /// Hex `SHA-256(0x00 || the record's exact value bytes)`.
    pub leaf_hash: String,
}

/// A workflow's chain of custody.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "AuditTrail")]
pub struct TrailView {
    pub workflow_id: String,
    pub topic: String,
    pub partition: i32,
    /// Hex RFC 9162 Merkle root over the leaves.
    pub root: String,
    pub leaves: Vec<LeafView>,
    /// Whether every check of `triad audit verify` passed; null when this API runs without
    /// `sovereignty.seal` (no key directory to check signatures against).
    pub verified: Option<bool>,
    /// Completed operations checked.
    pub operations: i32,
    /// The zones the operations ran and processed data in.
    pub zones: Vec<String>,
    /// What failed, one sentence each.
    pub problems: Vec<String>,
}

/// An inclusion proof of one event in its workflow's tree (RFC 9162 §2.1.3).
#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "InclusionProof")]
pub struct ProofView {
    pub workflow_id: String,
    pub event_id: String,
    pub index: i32,
    pub size: i32,
    pub leaf_hash: String,
    /// Sibling hashes, leaf to root, hex.
    pub proof: Vec<String>,
    pub root: String,
}

fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

async fn read(state: &AppState, workflow_id: &str) -> Result<Option<Chain>, Error> {
    match triad_kernel::audit::chain(&state.kafka, &state.codec, workflow_id).await {
        Ok(c) => Ok(Some(c)),
        Err(triad_kernel::Error::NoEvents { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The trail of `workflow_id`; None when the event store holds none of its events.
pub async fn trail(state: &AppState, workflow_id: &str) -> Result<Option<TrailView>, Error> {
    let Some(chain) = read(state, workflow_id).await? else {
        return Ok(None);
    };
    let verdict = match &state.kernel {
        None => None,
        Some(k) => {
            // Zones are judged under the policy version the workflow was accepted under, as
            // the log publishes it (docs/audit.md, "Policy versions").
            let directory = k.kernel().directory();
            let published = triad_kernel::audit::policies(&state.kafka, &state.codec).await?;
            let policy = triad_kernel::audit::policy_in_force(
                triad_kernel::audit::accepted_policy(&chain.leaves),
                &published,
                &directory,
            );
            let groups: Vec<(String, Vec<String>)> = match &policy {
                Ok((document, _)) => document.groups.clone().into_iter().collect(),
                Err(_) => Vec::new(),
            };
            let mut v = check(&chain.leaves, &directory, &groups);
            if let Err(why) = policy {
                v.problems.push(why);
            }
            Some(v)
        }
    };
    Ok(Some(TrailView {
        workflow_id: workflow_id.to_owned(),
        topic: chain.topic.clone(),
        partition: chain.partition,
        root: hex(&chain.root()),
        leaves: chain
            .leaves
            .iter()
            .enumerate()
            .map(|(i, l)| LeafView {
                index: int(i),
                offset: Long(l.offset),
                sequence: Long(l.event.meta.sequence),
                event_id: l.event_id.clone(),
                event_type: l.event_type.clone(),
                leaf_hash: hex(&l.hash),
            })
            .collect(),
        verified: verdict.as_ref().map(|v| v.problems.is_empty()),
        operations: verdict.as_ref().map_or(0, |v| int(v.operations)),
        zones: verdict
            .as_ref()
            .map(|v| v.zones.iter().cloned().collect())
            .unwrap_or_default(),
        problems: verdict.map(|v| v.problems).unwrap_or_default(),
    }))
}

/// The inclusion proof of `event_id`; None when the workflow or the event is not there.
pub async fn proof(
    state: &AppState,
    workflow_id: &str,
    event_id: &str,
) -> Result<Option<ProofView>, Error> {
    let Some(chain) = read(state, workflow_id).await? else {
        return Ok(None);
    };
    let Some(index) = chain.leaves.iter().position(|l| l.event_id == event_id) else {
        return Ok(None);
    };
    let hashes = chain.hashes();
    let Some(path) = merkle::inclusion_proof(&hashes, index) else {
        return Ok(None);
    };
    Ok(Some(ProofView {
        workflow_id: workflow_id.to_owned(),
        event_id: event_id.to_owned(),
        index: int(index),
        size: int(hashes.len()),
        leaf_hash: hex(&hashes[index]),
        proof: path.iter().map(|h| hex(h)).collect(),
        root: hex(&merkle::root(&hashes)),
    }))
}
