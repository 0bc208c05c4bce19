//! The key directory: which node keys are enrolled in which zone. It is a pure fold of
//! directory changes (enrolment, retirement at rotation, revocation), so it can be rebuilt
//! from the log that records them.

use std::collections::BTreeMap;

use p256::PublicKey;
use serde::{Deserialize, Serialize};

use crate::keys::{key_id, put_lp, unhex};
use crate::{Error, Result};

/// A change to the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum DirectoryChange {
    /// `node` joins `zone` with this key (uncompressed SEC1, hex).
    Enrolled {
        node_id: String,
        zone: String,
        public_key: String,
    },
    /// `node`'s signing key (ECDSA P-256, hex) in `zone`: it signs the node's execution
    /// records. Never a recipient of workflow keys.
    SigningKeyEnrolled {
        node_id: String,
        zone: String,
        public_key: String,
    },
    /// Rotation: new workflow keys are no longer wrapped to it, but the node keeps opening
    /// what was sealed to it while it keeps the key.
    Retired { key_id: String },
    /// The key opens nothing any more, and nothing new is wrapped to it.
    Revoked { key_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Retired,
    Revoked,
}

#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub node_id: String,
    pub zone: String,
    pub key_id: String,
    pub public_key: PublicKey,
    pub state: KeyState,
}

#[derive(Debug, Clone, Default)]
pub struct KeyDirectory {
    entries: BTreeMap<String, NodeEntry>,
    /// Signing keys, by key id: kept apart so they never become recipients.
    signers: BTreeMap<String, NodeEntry>,
}

fn parse_point(node_id: &str, public_key: &str) -> Result<PublicKey> {
    let bytes = unhex(public_key).ok_or_else(|| Error::Directory {
        reason: format!("enrolment of {node_id}: public_key is not hex"),
    })?;
    PublicKey::from_sec1_bytes(&bytes).map_err(|_| Error::Directory {
        reason: format!("enrolment of {node_id}: public_key is not a P-256 point"),
    })
}

impl KeyDirectory {
    pub fn apply(&mut self, change: &DirectoryChange) -> Result<()> {
        match change {
            DirectoryChange::Enrolled {
                node_id,
                zone,
                public_key,
            } => self.enrol(false, node_id, zone, public_key),
            DirectoryChange::SigningKeyEnrolled {
                node_id,
                zone,
                public_key,
            } => self.enrol(true, node_id, zone, public_key),
            DirectoryChange::Retired { key_id } => self.set(key_id, KeyState::Retired),
            DirectoryChange::Revoked { key_id } => self.set(key_id, KeyState::Revoked),
        }
    }

    /// Adds a wrapping key (a recipient) or, with `signing`, a signing key. A key has one
    /// purpose and is enrolled once.
    fn enrol(&mut self, signing: bool, node_id: &str, zone: &str, public_key: &str) -> Result<()> {
        let public = parse_point(node_id, public_key)?;
        let id = key_id(&public);
        if let Some(existing) = self.entries.get(&id).or_else(|| self.signers.get(&id)) {
            return Err(Error::Directory {
                reason: format!(
                    "key {id} is already enrolled for node {} in {}",
                    existing.node_id, existing.zone
                ),
            });
        }
        let entry = NodeEntry {
            node_id: node_id.to_owned(),
            zone: zone.to_owned(),
            key_id: id.clone(),
            public_key: public,
            state: KeyState::Active,
        };
        if signing {
            self.signers.insert(id, entry);
        } else {
            self.entries.insert(id, entry);
        }
        Ok(())
    }

    fn set(&mut self, key_id: &str, state: KeyState) -> Result<()> {
        let entry = match self.entries.get_mut(key_id) {
            Some(e) => Some(e),
            None => self.signers.get_mut(key_id),
        }
        .ok_or_else(|| Error::Directory {
            reason: format!("key {key_id} is not enrolled"),
        })?;
        if entry.state == KeyState::Revoked {
            return Err(Error::Directory {
                reason: format!("key {key_id} is revoked; a revocation is final"),
            });
        }
        entry.state = state;
        Ok(())
    }

    /// Every key ever enrolled, by key id.
    pub fn entries(&self) -> impl Iterator<Item = &NodeEntry> {
        self.entries.values()
    }

    pub fn get(&self, key_id: &str) -> Option<&NodeEntry> {
        self.entries.get(key_id)
    }

    /// A signing key, by key id.
    pub fn signer(&self, key_id: &str) -> Option<&NodeEntry> {
        self.signers.get(key_id)
    }

    /// Every signing key ever enrolled, by key id.
    pub fn signers(&self) -> impl Iterator<Item = &NodeEntry> {
        self.signers.values()
    }

    /// The keys new workflow keys of `zone` are wrapped to.
    pub fn recipients<'a>(&'a self, zone: &'a str) -> impl Iterator<Item = &'a NodeEntry> + 'a {
        self.entries
            .values()
            .filter(move |e| e.zone == zone && e.state == KeyState::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpke::public_bytes;
    use crate::keys::{NodeKey, SoftwareKey, hex};

    fn enrol(node: &str, zone: &str, key: &SoftwareKey) -> DirectoryChange {
        DirectoryChange::Enrolled {
            node_id: node.into(),
            zone: zone.into(),
            public_key: hex(&public_bytes(key.public())),
        }
    }

    #[test]
    fn signing_keys_are_kept_apart_from_recipients() {
        let (wrap, sign) = (SoftwareKey::generate(), SoftwareKey::generate());
        let mut d = KeyDirectory::default();
        d.apply(&enrol("e1", "US-EAST", &wrap)).unwrap();
        let signing = DirectoryChange::SigningKeyEnrolled {
            node_id: "e1".into(),
            zone: "US-EAST".into(),
            public_key: hex(&public_bytes(sign.public())),
        };
        d.apply(&signing).unwrap();
        assert_eq!(
            d.recipients("US-EAST").count(),
            1,
            "a signing key is no recipient"
        );
        let id = sign.key_id().to_owned();
        assert_eq!(d.signer(&id).map(|e| e.zone.as_str()), Some("US-EAST"));
        assert!(d.get(&id).is_none());
        // One key, one purpose: neither may be enrolled again in the other role.
        assert!(d.apply(&signing).is_err());
        assert!(d.apply(&enrol("e1", "US-EAST", &sign)).is_err());
        d.apply(&DirectoryChange::Revoked { key_id: id.clone() })
            .unwrap();
        assert_eq!(d.signer(&id).map(|e| e.state), Some(KeyState::Revoked));
        // The signed bytes of a signing-key enrolment differ from a wrapping-key one.
        let as_wrap = DirectoryChange::Enrolled {
            node_id: "e1".into(),
            zone: "US-EAST".into(),
            public_key: hex(&public_bytes(sign.public())),
        };
        assert_ne!(
            signed_bytes(1, GENESIS, &signing).unwrap(),
            signed_bytes(1, GENESIS, &as_wrap).unwrap()
        );
    }

    #[test]
    fn enrolment_rotation_and_revocation_decide_the_recipients() {
        let (a, b, c) = (
            SoftwareKey::generate(),
            SoftwareKey::generate(),
            SoftwareKey::generate(),
        );
        let mut d = KeyDirectory::default();
        d.apply(&enrol("e1", "US-EAST", &a)).unwrap();
        d.apply(&enrol("e2", "US-EAST", &b)).unwrap();
        d.apply(&enrol("w1", "EU-WEST", &c)).unwrap();
        let ids = |d: &KeyDirectory, z: &str| {
            d.recipients(z)
                .map(|e| e.key_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&d, "US-EAST").len(), 2);
        assert_eq!(ids(&d, "EU-WEST"), [c.key_id().to_owned()]);
        d.apply(&DirectoryChange::Retired {
            key_id: a.key_id().into(),
        })
        .unwrap();
        assert_eq!(ids(&d, "US-EAST"), [b.key_id().to_owned()]);
        d.apply(&DirectoryChange::Revoked {
            key_id: b.key_id().into(),
        })
        .unwrap();
        assert!(ids(&d, "US-EAST").is_empty());
        let err = d
            .apply(&DirectoryChange::Retired {
                key_id: b.key_id().into(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("final"), "{err}");
        assert!(
            d.apply(&enrol("e3", "US-EAST", &a)).is_err(),
            "no re-enrolment of a key"
        );
    }
}

/// A directory change as the operator signed it: a gap-free sequence, chained to the previous
/// change by hash, so a removed, reordered, altered or foreign change is detected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedChange {
    pub sequence: u64,
    /// Hex SHA-256 of the previous change's signed bytes (64 zeros before the first).
    pub previous: String,
    pub change: DirectoryChange,
    /// Key id of the operator key that signed.
    pub signer: String,
    /// Hex ECDSA P-256 / SHA-256 signature, `r || s`, over [`SignedChange::signed_bytes`].
    pub signature: String,
}

impl SignedChange {
    /// `"TRIAD-DIRECTORY" || u8(1) || u64(sequence) || previous (32 bytes) || change`, where the
    /// change is `u8(1) || lp(node_id) || lp(zone) || lp(public key, 65 bytes)` for an
    /// enrolment, `u8(2) || lp(key_id)` for a retirement, `u8(3) || lp(key_id)` for a
    /// revocation, `u8(4) || lp(node_id) || lp(zone) || lp(public key)` for a signing key's
    /// enrolment (`docs/sovereignty_kernel.md`).
    pub fn signed_bytes(&self) -> Result<Vec<u8>> {
        signed_bytes(self.sequence, &self.previous, &self.change)
    }
}

fn signed_bytes(sequence: u64, previous: &str, change: &DirectoryChange) -> Result<Vec<u8>> {
    let prev = unhex(previous)
        .filter(|p| p.len() == 32)
        .ok_or_else(|| Error::Directory {
            reason: format!("change {sequence}: previous is not a 32-byte hex hash"),
        })?;
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"TRIAD-DIRECTORY");
    out.push(1);
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&prev);
    match change {
        DirectoryChange::Enrolled {
            node_id,
            zone,
            public_key,
        }
        | DirectoryChange::SigningKeyEnrolled {
            node_id,
            zone,
            public_key,
        } => {
            let pk = unhex(public_key).ok_or_else(|| Error::Directory {
                reason: format!("change {sequence}: public_key is not hex"),
            })?;
            let signing = matches!(change, DirectoryChange::SigningKeyEnrolled { .. });
            out.push(if signing { 4 } else { 1 });
            put_lp(&mut out, node_id.as_bytes());
            put_lp(&mut out, zone.as_bytes());
            put_lp(&mut out, &pk);
        }
        DirectoryChange::Retired { key_id } => {
            out.push(2);
            put_lp(&mut out, key_id.as_bytes());
        }
        DirectoryChange::Revoked { key_id } => {
            out.push(3);
            put_lp(&mut out, key_id.as_bytes());
        }
    }
    Ok(out)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    crate::keys::hex(&Sha256::digest(bytes))
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The operator's side: signs changes in order.
#[derive(Debug)]
pub struct DirectoryWriter<'a> {
    operator: &'a dyn crate::signing::Signer,
    sequence: u64,
    head: String,
}

impl<'a> DirectoryWriter<'a> {
    /// Continues after `sequence` changes whose last signed bytes hash to `head` (0 and
    /// `None` for a new directory).
    pub fn new(
        operator: &'a dyn crate::signing::Signer,
        sequence: u64,
        head: Option<String>,
    ) -> Self {
        Self {
            operator,
            sequence,
            head: head.unwrap_or_else(|| GENESIS.to_owned()),
        }
    }

    pub fn sign(&mut self, change: DirectoryChange) -> Result<SignedChange> {
        let sequence = self.sequence + 1;
        let bytes = signed_bytes(sequence, &self.head, &change)?;
        let signature = crate::keys::hex(&self.operator.sign(&bytes)?);
        let signed = SignedChange {
            sequence,
            previous: self.head.clone(),
            change,
            signer: self.operator.key_id().to_owned(),
            signature,
        };
        self.sequence = sequence;
        self.head = sha256_hex(&bytes);
        Ok(signed)
    }
}

/// The directory as a reader folds it: every change must be the next in sequence, chained to
/// the previous one and signed by the operator key.
#[derive(Debug, Clone)]
pub struct SignedDirectory {
    operator: PublicKey,
    operator_id: String,
    directory: KeyDirectory,
    sequence: u64,
    head: String,
}

impl SignedDirectory {
    pub fn new(operator: PublicKey) -> Self {
        Self {
            operator_id: key_id(&operator),
            operator,
            directory: KeyDirectory::default(),
            sequence: 0,
            head: GENESIS.to_owned(),
        }
    }

    pub fn directory(&self) -> &KeyDirectory {
        &self.directory
    }

    /// The number of changes applied and the hash they chain to.
    pub fn head(&self) -> (u64, &str) {
        (self.sequence, &self.head)
    }

    pub fn apply(&mut self, signed: &SignedChange) -> Result<()> {
        let refuse = |reason: String| Error::Directory {
            reason: format!("change {}: {reason}", signed.sequence),
        };
        if signed.signer != self.operator_id {
            return Err(refuse(format!(
                "signed by key {}, not by the operator key {}",
                signed.signer, self.operator_id
            )));
        }
        if signed.sequence != self.sequence + 1 {
            return Err(refuse(format!(
                "expected change {} (a change is missing, repeated or out of order)",
                self.sequence + 1
            )));
        }
        if signed.previous != self.head {
            return Err(refuse(
                "does not chain to the previous change (one was removed or altered)".to_owned(),
            ));
        }
        let bytes = signed.signed_bytes()?;
        if !crate::signing::verify(&self.operator, &bytes, &signed.signature) {
            return Err(refuse(
                "the operator's signature does not verify".to_owned(),
            ));
        }
        self.directory.apply(&signed.change)?;
        self.sequence = signed.sequence;
        self.head = sha256_hex(&bytes);
        Ok(())
    }
}

#[cfg(test)]
mod signed_tests {
    use super::*;
    use crate::hpke::public_bytes;
    use crate::keys::{NodeKey, SoftwareKey, hex};
    use crate::signing::{Signer, SoftwareSigner};

    fn enrol(node: &str, zone: &str) -> (SoftwareKey, DirectoryChange) {
        let key = SoftwareKey::generate();
        let change = DirectoryChange::Enrolled {
            node_id: node.into(),
            zone: zone.into(),
            public_key: hex(&public_bytes(key.public())),
        };
        (key, change)
    }

    fn chain(operator: &SoftwareSigner) -> (Vec<SignedChange>, Vec<SoftwareKey>) {
        let mut w = DirectoryWriter::new(operator, 0, None);
        let (a, ea) = enrol("a", "US-EAST");
        let (b, eb) = enrol("b", "US-WEST");
        let (c, ec) = enrol("c", "EU-WEST");
        let revoke = DirectoryChange::Revoked {
            key_id: b.key_id().to_owned(),
        };
        let changes = [ea, eb, ec, revoke]
            .into_iter()
            .map(|c| w.sign(c).unwrap())
            .collect();
        (changes, vec![a, b, c])
    }

    fn fold(operator: &SoftwareSigner, changes: &[SignedChange]) -> Result<SignedDirectory> {
        let mut d = SignedDirectory::new(*operator.public());
        for c in changes {
            d.apply(c)?;
        }
        Ok(d)
    }

    #[test]
    fn an_operator_signed_chain_folds_into_the_directory() {
        let operator = SoftwareSigner::generate();
        let (changes, keys) = chain(&operator);
        let d = fold(&operator, &changes).unwrap();
        assert_eq!(d.head().0, 4);
        assert_eq!(
            d.directory().get(keys[1].key_id()).unwrap().state,
            KeyState::Revoked
        );
        assert_eq!(d.directory().recipients("EU-WEST").count(), 1);
        // A writer continuing from the head extends the same chain.
        let mut w = DirectoryWriter::new(&operator, 4, Some(d.head().1.to_owned()));
        let (_, more) = enrol("d", "US-EAST");
        let mut d = d;
        d.apply(&w.sign(more).unwrap()).unwrap();
        assert_eq!(d.directory().recipients("US-EAST").count(), 2);
    }

    #[test]
    fn an_altered_removed_reordered_repeated_or_foreign_change_is_refused() {
        let operator = SoftwareSigner::generate();
        let (changes, _) = chain(&operator);
        let err = |changes: &[SignedChange]| fold(&operator, changes).unwrap_err().to_string();

        let mut altered = changes.clone();
        if let DirectoryChange::Enrolled { zone, .. } = &mut altered[2].change {
            *zone = "US-EAST".into(); // smuggle an EU node into CONUS
        }
        assert!(
            err(&altered).contains("signature does not verify"),
            "{}",
            err(&altered)
        );

        let mut removed = changes.clone();
        removed.remove(1);
        assert!(
            err(&removed).contains("expected change 2"),
            "{}",
            err(&removed)
        );

        let mut renumbered = changes.clone();
        renumbered.remove(1);
        renumbered[1].sequence = 2;
        assert!(
            err(&renumbered).contains("does not chain"),
            "{}",
            err(&renumbered)
        );

        let mut reordered = changes.clone();
        reordered.swap(0, 1);
        assert!(err(&reordered).contains("expected change 1"));

        let mut repeated = changes.clone();
        repeated.insert(1, changes[0].clone());
        assert!(err(&repeated).contains("expected change 2"));

        let rogue = SoftwareSigner::generate();
        let (forged, _) = chain(&rogue);
        assert!(err(&forged).contains("not by the operator key"));
        let mut resigned = forged.clone();
        for c in &mut resigned {
            c.signer = operator.key_id().to_owned();
        }
        assert!(err(&resigned).contains("signature does not verify"));
    }
}
