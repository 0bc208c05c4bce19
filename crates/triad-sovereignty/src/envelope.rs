//! Zone-bound envelopes (`docs/sovereignty_kernel.md` is the byte-level specification).
//!
//! Public-key work happens once per workflow and zone set: [`WorkflowKey::create`] draws a
//! 32-byte workflow key and wraps it with HPKE to every active key enrolled in each allowed
//! zone ([`WorkflowKeyRecord`]). Each payload is then sealed with AES-256-GCM under a data
//! key derived from the workflow key and the envelope id with HKDF, so the per-payload path
//! is symmetric only. [`Opener::unseal`] checks zone and enrolment first, unwraps the
//! workflow key once (cached) and opens the payload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use rand::RngCore as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::directory::{KeyDirectory, KeyState};
use crate::keys::{NodeKey, put_lp};
use crate::{Error, Result, hpke};

/// The format version this code writes and reads.
pub const FORMAT: u8 = 1;

/// What a payload is to its task. Part of the AAD: an output cannot pose as a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Prompt,
    Output,
    Context,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prompt => "prompt",
            Role::Output => "output",
            Role::Context => "context",
        }
    }
}

/// A sealed payload. Every field but the ciphertext and its hash is bound by the AAD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: u8,
    pub envelope_id: String,
    pub workflow_id: String,
    pub task_id: String,
    pub role: Role,
    pub attempt: u32,
    /// The zones that may open it, sorted, without duplicates.
    pub zones: Vec<String>,
    pub workflow_key_id: String,
    #[serde(with = "hex_bytes")]
    pub nonce: Vec<u8>,
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub ciphertext_sha256: Vec<u8>,
}

/// The workflow key wrapped to one node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    pub zone: String,
    pub node_id: String,
    pub key_id: String,
    /// HPKE encapsulated key (65 bytes).
    #[serde(with = "hex_bytes")]
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the 32-byte workflow key (48 bytes).
    #[serde(with = "hex_bytes")]
    pub wrapped: Vec<u8>,
}

/// A workflow key for one zone set, wrapped to every recipient. It lives outside the
/// immutable event log: destroying it shreds every payload sealed under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowKeyRecord {
    pub format: u8,
    pub workflow_id: String,
    pub workflow_key_id: String,
    pub zones: Vec<String>,
    pub wrapped: Vec<WrappedKey>,
}

/// Where a payload belongs. Bound into its envelope.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub task_id: &'a str,
    pub role: Role,
    pub attempt: u32,
}

/// The sealing side of a workflow key (held by the node that created it).
pub struct WorkflowKey {
    /// HKDF-Extract(salt = workflow key id, IKM = workflow key), computed once: each
    /// payload's data key is then a single HKDF-Expand.
    prk: Hkdf<Sha256>,
    workflow_id: String,
    workflow_key_id: String,
    zones: Vec<String>,
}

impl std::fmt::Debug for WorkflowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowKey")
            .field("workflow_key_id", &self.workflow_key_id)
            .field("zones", &self.zones)
            .finish_non_exhaustive()
    }
}

/// Sorted and without duplicates: the canonical form the AAD and the wrap info use.
pub fn canonical_zones<S: AsRef<str>>(zones: &[S]) -> Vec<String> {
    let mut out: Vec<String> = zones.iter().map(|z| z.as_ref().to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

/// What starts an envelope where a payload field (`bytes` in the Avro schemas) holds one; the
/// JSON of the envelope follows. Anything else in such a field is a plaintext payload.
pub use triad_domain::SEALED_PREFIX;

impl Envelope {
    /// The envelope as a payload field holds it: [`SEALED_PREFIX`] then its JSON.
    pub fn to_wire(&self) -> Result<Vec<u8>> {
        let mut out = SEALED_PREFIX.to_vec();
        serde_json::to_writer(&mut out, self).map_err(|e| Error::Format {
            reason: e.to_string(),
        })?;
        Ok(out)
    }

    /// `None` for a plaintext payload; the envelope, or why it does not parse, otherwise.
    pub fn from_wire(bytes: &[u8]) -> Option<Result<Envelope>> {
        let json = bytes.strip_prefix(SEALED_PREFIX)?;
        Some(serde_json::from_slice(json).map_err(|e| Error::Format {
            reason: format!("a sealed payload that is not an envelope: {e}"),
        }))
    }

    /// Whether a payload field holds an envelope.
    pub fn is_sealed(bytes: &[u8]) -> bool {
        triad_domain::is_sealed(bytes)
    }
}

impl WorkflowKey {
    /// Draws a workflow key for `workflow_id` and `zones` and wraps it to every active key
    /// the directory enrols in each zone. A zone without one is an error: nothing could open
    /// the workflow's payloads there.
    pub fn create<S: AsRef<str>>(
        directory: &KeyDirectory,
        workflow_id: &str,
        zones: &[S],
    ) -> Result<(Self, WorkflowKeyRecord)> {
        let zones = canonical_zones(zones);
        if zones.is_empty() {
            return Err(Error::NoRecipients {
                zone: "(no zones)".to_owned(),
            });
        }
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut_slice());
        let workflow_key_id = uuid::Uuid::new_v4().to_string();
        let info = wrap_info(workflow_id, &workflow_key_id, &zones);
        let mut wrapped = Vec::new();
        for zone in &zones {
            let before = wrapped.len();
            for node in directory.recipients(zone) {
                // No HPKE AAD: the KEM context already binds the recipient's public key.
                let (enc, ct) = hpke::seal(&node.public_key, &info, b"", &*key)?;
                wrapped.push(WrappedKey {
                    zone: zone.clone(),
                    node_id: node.node_id.clone(),
                    key_id: node.key_id.clone(),
                    enc,
                    wrapped: ct,
                });
            }
            if wrapped.len() == before {
                return Err(Error::NoRecipients { zone: zone.clone() });
            }
        }
        let record = WorkflowKeyRecord {
            format: FORMAT,
            workflow_id: workflow_id.to_owned(),
            workflow_key_id: workflow_key_id.clone(),
            zones: zones.clone(),
            wrapped,
        };
        Ok((
            Self {
                prk: extract(&key, &workflow_key_id),
                workflow_id: workflow_id.to_owned(),
                workflow_key_id,
                zones,
            },
            record,
        ))
    }

    pub fn workflow_key_id(&self) -> &str {
        &self.workflow_key_id
    }

    /// Seals `plaintext` for `binding` (symmetric work only).
    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> Result<Envelope> {
        let mut envelope = Envelope {
            format: FORMAT,
            envelope_id: random_uuid(),
            workflow_id: self.workflow_id.clone(),
            task_id: binding.task_id.to_owned(),
            role: binding.role,
            attempt: binding.attempt,
            zones: self.zones.clone(),
            workflow_key_id: self.workflow_key_id.clone(),
            nonce: vec![0u8; 12],
            ciphertext: Vec::new(),
            ciphertext_sha256: Vec::new(),
        };
        rand::rng().fill_bytes(&mut envelope.nonce);
        let key = data_key(&self.prk, &envelope.envelope_id)?;
        envelope.ciphertext = Aes256Gcm::new_from_slice(key.as_slice())
            .map_err(|_| Error::Crypto("data key length"))?
            .encrypt(
                Nonce::from_slice(&envelope.nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad(&envelope),
                },
            )
            .map_err(|_| Error::Crypto("AES-256-GCM seal"))?;
        envelope.ciphertext_sha256 = Sha256::digest(&envelope.ciphertext).to_vec();
        Ok(envelope)
    }
}

/// A node's opening side: its key, its zone, and the workflow keys it unwrapped.
pub struct Opener {
    node_id: String,
    zone: String,
    key: Arc<dyn NodeKey>,
    /// Unwrapped workflow keys, as their HKDF-Extract output, by workflow key id.
    unwrapped: Mutex<HashMap<String, Hkdf<Sha256>>>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("node_id", &self.node_id)
            .field("zone", &self.zone)
            .field("key_id", &self.key.key_id())
            .finish_non_exhaustive()
    }
}

impl Opener {
    pub fn new(node_id: &str, zone: &str, key: Arc<dyn NodeKey>) -> Self {
        Self {
            node_id: node_id.to_owned(),
            zone: zone.to_owned(),
            key,
            unwrapped: Mutex::new(HashMap::new()),
        }
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Opens `envelope`, whose workflow key is `record`, as this node.
    ///
    /// Refused with [`Error::SovereigntyViolation`] when this node's zone is not one of the
    /// envelope's, when its key is not enrolled in that zone (or revoked), or when the
    /// workflow key was not wrapped to it; with [`Error::Tampered`] when any bound byte
    /// changed.
    pub fn unseal(
        &self,
        directory: &KeyDirectory,
        record: &WorkflowKeyRecord,
        envelope: &Envelope,
    ) -> Result<Zeroizing<Vec<u8>>> {
        if envelope.format != FORMAT {
            return Err(Error::Format {
                reason: format!(
                    "envelope format {} (this node reads {FORMAT})",
                    envelope.format
                ),
            });
        }
        let violation = |reason: &str| Error::SovereigntyViolation {
            node: self.node_id.clone(),
            zone: self.zone.clone(),
            envelope_zones: envelope.zones.clone(),
            reason: reason.to_owned(),
        };
        if !envelope.zones.contains(&self.zone) {
            return Err(violation("the node's zone is not one of the envelope's"));
        }
        match directory.get(self.key.key_id()) {
            Some(e) if e.zone == self.zone && e.state != KeyState::Revoked => {}
            Some(e) if e.state == KeyState::Revoked => {
                return Err(violation("the node's key is revoked"));
            }
            _ => return Err(violation("the node's key is not enrolled in its zone")),
        }
        if record.workflow_key_id != envelope.workflow_key_id
            || record.workflow_id != envelope.workflow_id
            || record.zones != envelope.zones
        {
            return Err(Error::Tampered {
                envelope_id: envelope.envelope_id.clone(),
                reason: "the envelope does not belong to this workflow key".to_owned(),
            });
        }
        let key = self.workflow_key(record, &violation)?;
        if Sha256::digest(&envelope.ciphertext).as_slice() != envelope.ciphertext_sha256.as_slice()
        {
            return Err(Error::Tampered {
                envelope_id: envelope.envelope_id.clone(),
                reason: "the ciphertext does not hash to ciphertext_sha256".to_owned(),
            });
        }
        if envelope.nonce.len() != 12 {
            return Err(Error::Tampered {
                envelope_id: envelope.envelope_id.clone(),
                reason: format!("the nonce has {} bytes, not 12", envelope.nonce.len()),
            });
        }
        let data = data_key(&key, &envelope.envelope_id)?;
        let plaintext = Aes256Gcm::new_from_slice(data.as_slice())
            .map_err(|_| Error::Crypto("data key length"))?
            .decrypt(
                Nonce::from_slice(&envelope.nonce),
                Payload {
                    msg: &envelope.ciphertext,
                    aad: &aad(envelope),
                },
            )
            .map_err(|_| Error::Tampered {
                envelope_id: envelope.envelope_id.clone(),
                reason: "AES-256-GCM authentication failed (ciphertext, tag, nonce or a bound field changed)"
                    .to_owned(),
            })?;
        Ok(Zeroizing::new(plaintext))
    }

    /// The unwrapped workflow key of `record`: from the cache, or unwrapped now (the one
    /// public-key operation per workflow key and node).
    fn workflow_key(
        &self,
        record: &WorkflowKeyRecord,
        violation: &dyn Fn(&str) -> Error,
    ) -> Result<Hkdf<Sha256>> {
        if let Some(k) = self
            .unwrapped
            .lock()
            .ok()
            .and_then(|c| c.get(&record.workflow_key_id).cloned())
        {
            return Ok(k);
        }
        let mine = record
            .wrapped
            .iter()
            .find(|w| w.key_id == self.key.key_id() && w.zone == self.zone)
            .ok_or_else(|| violation("the workflow key was not wrapped to this node's key"))?;
        let info = wrap_info(&record.workflow_id, &record.workflow_key_id, &record.zones);
        let plain = hpke::open(
            &*self.key,
            self.key.public(),
            &mine.enc,
            &info,
            b"",
            &mine.wrapped,
        )?;
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(Error::Unwrap {
                reason: format!("the workflow key has {} bytes, not 32", plain.len()),
            });
        }
        key.copy_from_slice(&plain);
        let prk = extract(&key, &record.workflow_key_id);
        if let Ok(mut c) = self.unwrapped.lock() {
            c.insert(record.workflow_key_id.clone(), prk.clone());
        }
        Ok(prk)
    }

    /// The sealing side of `record`'s workflow key, for a node inside its zones (an executor
    /// sealing a task's output under the key its prompt came with). The same checks as
    /// [`Opener::unseal`]: the node's zone is one of the record's and its key is enrolled
    /// there and was wrapped to.
    pub fn sealer(
        &self,
        directory: &KeyDirectory,
        record: &WorkflowKeyRecord,
    ) -> Result<WorkflowKey> {
        let violation = |reason: &str| Error::SovereigntyViolation {
            node: self.node_id.clone(),
            zone: self.zone.clone(),
            envelope_zones: record.zones.clone(),
            reason: reason.to_owned(),
        };
        if !record.zones.contains(&self.zone) {
            return Err(violation(
                "the node's zone is not one of the workflow key's",
            ));
        }
        match directory.get(self.key.key_id()) {
            Some(e) if e.zone == self.zone && e.state != KeyState::Revoked => {}
            Some(e) if e.state == KeyState::Revoked => {
                return Err(violation("the node's key is revoked"));
            }
            _ => return Err(violation("the node's key is not enrolled in its zone")),
        }
        let prk = self.workflow_key(record, &violation)?;
        Ok(WorkflowKey {
            prk,
            workflow_id: record.workflow_id.clone(),
            workflow_key_id: record.workflow_key_id.clone(),
            zones: record.zones.clone(),
        })
    }

    /// Drops a cached workflow key (crypto-shredding: once its record is destroyed too,
    /// nothing can open that workflow's payloads).
    pub fn forget(&self, workflow_key_id: &str) {
        if let Ok(mut c) = self.unwrapped.lock() {
            c.remove(workflow_key_id);
        }
    }
}

fn put_zones(out: &mut Vec<u8>, zones: &[String]) {
    out.extend_from_slice(&u32::try_from(zones.len()).unwrap_or(u32::MAX).to_be_bytes());
    for z in zones {
        put_lp(out, z.as_bytes());
    }
}

/// The additional authenticated data of an envelope (sovereignty_kernel.md, "AAD").
pub fn aad(e: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"TRIAD-ENVELOPE");
    out.push(e.format);
    put_lp(&mut out, e.envelope_id.as_bytes());
    put_lp(&mut out, e.workflow_id.as_bytes());
    put_lp(&mut out, e.task_id.as_bytes());
    put_lp(&mut out, e.role.as_str().as_bytes());
    out.extend_from_slice(&e.attempt.to_be_bytes());
    put_zones(&mut out, &e.zones);
    put_lp(&mut out, e.workflow_key_id.as_bytes());
    out
}

/// The HPKE `info` of a wrapped workflow key (sovereignty_kernel.md, "Wrapping").
pub fn wrap_info(workflow_id: &str, workflow_key_id: &str, zones: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"TRIAD-WORKFLOW-KEY");
    out.push(FORMAT);
    put_lp(&mut out, workflow_id.as_bytes());
    put_lp(&mut out, workflow_key_id.as_bytes());
    put_zones(&mut out, zones);
    out
}

/// HKDF-Extract(salt = workflow key id, IKM = workflow key): the part of every data key's
/// derivation that is the same for the whole workflow key.
fn extract(workflow_key: &[u8; 32], workflow_key_id: &str) -> Hkdf<Sha256> {
    Hkdf::<Sha256>::new(Some(workflow_key_id.as_bytes()), workflow_key)
}

/// The data key of one envelope: HKDF-SHA256 (salt = workflow key id, IKM = workflow key,
/// info = "TRIAD-DATA-KEY" || format || len-prefixed envelope id), 32 bytes; `prk` is the
/// workflow key's [`extract`].
fn data_key(prk: &Hkdf<Sha256>, envelope_id: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut info = Vec::with_capacity(64);
    info.extend_from_slice(b"TRIAD-DATA-KEY");
    info.push(FORMAT);
    put_lp(&mut info, envelope_id.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    prk.expand(&info, key.as_mut_slice())
        .map_err(|_| Error::Crypto("HKDF expand length"))?;
    Ok(key)
}

/// A random (version 4) UUID from the thread's CSPRNG (ChaCha, seeded from the OS): envelope
/// ids must never repeat under one workflow key, and a system call per payload is the
/// per-payload path's largest fixed cost.
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::keys::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        crate::keys::unhex(&s).ok_or_else(|| serde::de::Error::custom("not hex"))
    }
}
