//! Execution records: what an executor signs about an attempt it ran (docs/audit.md,
//! "Execution records"), so an audit can check, from the log alone, which enrolled node ran
//! it, in which zone, on which model processing data where, and on exactly which bytes.

use sha2::{Digest, Sha256};

use crate::keys::{hex, put_lp, unhex};
use crate::signing::Signer;
use crate::{Error, Result};

/// The facts an execution record states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution<'a> {
    pub workflow_id: &'a str,
    pub task_id: &'a str,
    pub attempt: u32,
    pub attempt_id: &'a str,
    pub node_id: &'a str,
    pub executor_zone: &'a str,
    pub model_id: &'a str,
    pub model_zones: &'a [String],
    pub prompt_sha256: [u8; 32],
    pub inputs_sha256: [u8; 32],
    pub output_sha256: [u8; 32],
}

/// `"TRIAD-EXECUTION" || u8(1) || lp(workflow) || lp(task) || u32(attempt) ||
/// lp(attempt id) || lp(node) || lp(executor zone) || lp(model) || u32(n) || lp(zone)… ||
/// prompt SHA-256 || inputs SHA-256 || output SHA-256` (hashes as 32 raw bytes).
pub fn execution_bytes(e: &Execution<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"TRIAD-EXECUTION");
    out.push(1);
    put_lp(&mut out, e.workflow_id.as_bytes());
    put_lp(&mut out, e.task_id.as_bytes());
    out.extend_from_slice(&e.attempt.to_be_bytes());
    put_lp(&mut out, e.attempt_id.as_bytes());
    put_lp(&mut out, e.node_id.as_bytes());
    put_lp(&mut out, e.executor_zone.as_bytes());
    put_lp(&mut out, e.model_id.as_bytes());
    out.extend_from_slice(
        &u32::try_from(e.model_zones.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for z in e.model_zones {
        put_lp(&mut out, z.as_bytes());
    }
    out.extend_from_slice(&e.prompt_sha256);
    out.extend_from_slice(&e.inputs_sha256);
    out.extend_from_slice(&e.output_sha256);
    out
}

/// What a processor signs when a workflow ends: the Merkle root of every event of the
/// workflow before the terminal one, with their number, bound to the terminal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRoot<'a> {
    pub workflow_id: &'a str,
    /// The terminal event that carries the root.
    pub event_id: &'a str,
    /// How many events the root covers (a root means something only with its size).
    pub leaves: u64,
    pub root: [u8; 32],
}

/// `"TRIAD-ROOT" || u8(1) || lp(workflow) || lp(terminal event id) || u64(leaves) || root`.
pub fn root_bytes(r: &SignedRoot<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"TRIAD-ROOT");
    out.push(1);
    put_lp(&mut out, r.workflow_id.as_bytes());
    put_lp(&mut out, r.event_id.as_bytes());
    out.extend_from_slice(&r.leaves.to_be_bytes());
    out.extend_from_slice(&r.root);
    out
}

/// Signs `r`; returns the hex `r || s` signature.
pub fn sign_root(signer: &dyn Signer, r: &SignedRoot<'_>) -> Result<String> {
    Ok(hex(&signer.sign(&root_bytes(r))?))
}

/// What the notary signs about a range of an event-store partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint<'a> {
    /// The stream's logical name (`workflow-events`).
    pub stream: &'a str,
    pub partition: u32,
    pub sequence: u64,
    pub from_offset: u64,
    pub to_offset: u64,
    pub records: u64,
    pub root: [u8; 32],
    /// SHA-256 of the previous checkpoint's bytes (zeros for the first).
    pub previous: [u8; 32],
}

/// `"TRIAD-CHECKPOINT" || u8(1) || lp(stream) || u32(partition) || u64(sequence) ||
/// u64(from) || u64(to) || u64(records) || root || previous`.
pub fn checkpoint_bytes(c: &Checkpoint<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"TRIAD-CHECKPOINT");
    out.push(1);
    put_lp(&mut out, c.stream.as_bytes());
    out.extend_from_slice(&c.partition.to_be_bytes());
    out.extend_from_slice(&c.sequence.to_be_bytes());
    out.extend_from_slice(&c.from_offset.to_be_bytes());
    out.extend_from_slice(&c.to_offset.to_be_bytes());
    out.extend_from_slice(&c.records.to_be_bytes());
    out.extend_from_slice(&c.root);
    out.extend_from_slice(&c.previous);
    out
}

/// `"TRIAD-POLICY" || u8(1) || lp(document)`: what the publisher of a policy version signs.
pub fn policy_bytes(document: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(document.len() + 20);
    out.extend_from_slice(b"TRIAD-POLICY");
    out.push(1);
    put_lp(&mut out, document.as_bytes());
    out
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 over a task's inputs in task-id order: `lp(task id) || H` each, where `H` is the
/// SHA-256 of the dependency's output as stored (the inline field, or the content a
/// reference names — which is the reference's own hash).
pub fn inputs_digest<'a>(inputs: impl IntoIterator<Item = (&'a str, [u8; 32])>) -> [u8; 32] {
    let mut sorted: Vec<(&str, [u8; 32])> = inputs.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (task, hash) in sorted {
        let mut lp = Vec::with_capacity(task.len() + 4);
        put_lp(&mut lp, task.as_bytes());
        h.update(&lp);
        h.update(hash);
    }
    h.finalize().into()
}

/// Signs `e`; returns the hex `r || s` signature.
pub fn sign(signer: &dyn Signer, e: &Execution<'_>) -> Result<String> {
    Ok(hex(&signer.sign(&execution_bytes(e))?))
}

/// A 32-byte hash from hex.
pub fn hash_from_hex(what: &str, text: &str) -> Result<[u8; 32]> {
    unhex(text)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::Format {
            reason: format!("{what} is not a 32-byte hex hash"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{SoftwareSigner, verify};

    #[test]
    fn every_stated_fact_is_covered_by_the_signature() {
        let zones = vec!["US-EAST".to_owned()];
        let e = Execution {
            workflow_id: "wf",
            task_id: "t",
            attempt: 1,
            attempt_id: "t#1",
            node_id: "executor-US-EAST",
            executor_zone: "US-EAST",
            model_id: "m",
            model_zones: &zones,
            prompt_sha256: sha256(b"p"),
            inputs_sha256: inputs_digest([("a", sha256(b"x"))]),
            output_sha256: sha256(b"o"),
        };
        let signer = SoftwareSigner::generate();
        let sig = sign(&signer, &e).unwrap();
        assert!(verify(signer.public(), &execution_bytes(&e), &sig));
        let other_zones = vec!["EU-WEST".to_owned()];
        for changed in [
            Execution {
                task_id: "u",
                ..e.clone()
            },
            Execution {
                attempt: 2,
                ..e.clone()
            },
            Execution {
                executor_zone: "EU-WEST",
                ..e.clone()
            },
            Execution {
                model_id: "n",
                ..e.clone()
            },
            Execution {
                model_zones: &other_zones,
                ..e.clone()
            },
            Execution {
                output_sha256: sha256(b"O"),
                ..e.clone()
            },
            Execution {
                inputs_sha256: inputs_digest([("a", sha256(b"y"))]),
                ..e.clone()
            },
        ] {
            assert!(!verify(signer.public(), &execution_bytes(&changed), &sig));
        }
        // Input order does not matter; input names and contents do.
        assert_eq!(
            inputs_digest([("a", sha256(b"1")), ("b", sha256(b"2"))]),
            inputs_digest([("b", sha256(b"2")), ("a", sha256(b"1"))])
        );
        assert_ne!(
            inputs_digest([("a", sha256(b"1"))]),
            inputs_digest([("b", sha256(b"1"))])
        );
    }

    #[test]
    fn a_signed_root_is_deterministic_and_binds_workflow_event_size_and_root() {
        let signer = SoftwareSigner::generate();
        let r = SignedRoot {
            workflow_id: "wf",
            event_id: "e",
            leaves: 17,
            root: sha256(b"root"),
        };
        let sig = sign_root(&signer, &r).unwrap();
        // RFC 6979: a processor that re-emits the terminal event after a crash writes the
        // same bytes.
        assert_eq!(sign_root(&signer, &r).unwrap(), sig);
        assert!(verify(signer.public(), &root_bytes(&r), &sig));
        for changed in [
            SignedRoot {
                workflow_id: "wg",
                ..r.clone()
            },
            SignedRoot {
                event_id: "f",
                ..r.clone()
            },
            SignedRoot {
                leaves: 16,
                ..r.clone()
            },
            SignedRoot {
                root: sha256(b"other"),
                ..r.clone()
            },
        ] {
            assert!(!verify(signer.public(), &root_bytes(&changed), &sig));
        }
    }
}
