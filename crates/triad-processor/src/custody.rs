//! The processor's part of the chain of custody (`docs/audit.md`, "Signed roots"): each
//! workflow's state carries the Merkle frontier of the events written so far, extended with
//! the leaf hash of every event's exact Kafka value bytes — when the processor encodes it
//! and when recovery reads it back — and the terminal event carries the processor's
//! signature over the root of the events before it.

use std::sync::Arc;

use triad_domain::{SignedRoot, WorkflowEvent};
use triad_sovereignty::custody;
use triad_sovereignty::merkle::{Frontier, Hash};
use triad_sovereignty::signing::Signer;
use triad_workflow::aggregate::Custody;

/// The processor's signing identity: its node id and the key the directory enrols for it.
#[derive(Debug, Clone)]
pub struct RootSigner {
    pub node_id: String,
    pub signer: Arc<dyn Signer>,
}

/// The state's frontier. A state whose peaks do not parse (only a hand-edited snapshot)
/// restarts the frontier, so its root is refused by `triad audit verify`, loudly, rather
/// than the processor stopping.
fn frontier(c: &Custody) -> Frontier {
    let peaks: Option<Vec<Hash>> = c
        .peaks
        .iter()
        .map(|p| custody::hash_from_hex("custody.peaks", p).ok())
        .collect();
    peaks
        .and_then(|p| Frontier::from_parts(c.leaves, p))
        .unwrap_or_else(|| {
            tracing::warn!(
                custody.leaves = c.leaves,
                "workflow state has a malformed custody frontier; restarting it"
            );
            Frontier::default()
        })
}

/// Extends the chain with one event's leaf hash.
pub fn push(c: &mut Custody, leaf: Hash) {
    let mut f = frontier(c);
    f.push(leaf);
    c.leaves = f.size();
    c.peaks = f
        .peaks()
        .iter()
        .map(|p| triad_sovereignty::hex(p))
        .collect();
}

/// Signs the root of the chain so far into `event` (the terminal event that follows it).
pub fn seal(
    c: &Custody,
    event: &mut WorkflowEvent,
    signer: &RootSigner,
) -> triad_sovereignty::Result<()> {
    let f = frontier(c);
    let root = f.root();
    let signature = custody::sign_root(
        signer.signer.as_ref(),
        &custody::SignedRoot {
            workflow_id: &event.meta.workflow_id,
            event_id: &event.meta.event_id,
            leaves: f.size(),
            root,
        },
    )?;
    event.signed_root = Some(SignedRoot {
        leaves: i64::try_from(f.size()).unwrap_or(i64::MAX),
        root: triad_sovereignty::hex(&root),
        node_id: signer.node_id.clone(),
        key_id: signer.signer.key_id().to_owned(),
        signature,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_sovereignty::merkle::{leaf_hash, root};

    #[test]
    fn the_state_frontier_tracks_the_root_of_the_pushed_leaves() {
        let leaves: Vec<Hash> = (0u8..20).map(|i| leaf_hash(&[i])).collect();
        let mut c = Custody::default();
        for (n, leaf) in leaves.iter().enumerate() {
            push(&mut c, *leaf);
            // Through JSON, as a snapshot stores it.
            c = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(frontier(&c).root(), root(&leaves[..=n]));
        }
    }
}
