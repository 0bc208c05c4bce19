//! The key directory: which node keys are enrolled in which zone. It is a pure fold of
//! directory changes (enrolment, retirement at rotation, revocation), so it can be rebuilt
//! from the log that records them.

use std::collections::BTreeMap;

use p256::PublicKey;
use serde::{Deserialize, Serialize};

use crate::keys::{key_id, unhex};
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
}

impl KeyDirectory {
    pub fn apply(&mut self, change: &DirectoryChange) -> Result<()> {
        match change {
            DirectoryChange::Enrolled {
                node_id,
                zone,
                public_key,
            } => {
                let bytes = unhex(public_key).ok_or_else(|| Error::Directory {
                    reason: format!("enrolment of {node_id}: public_key is not hex"),
                })?;
                let public = PublicKey::from_sec1_bytes(&bytes).map_err(|_| Error::Directory {
                    reason: format!("enrolment of {node_id}: public_key is not a P-256 point"),
                })?;
                let id = key_id(&public);
                if let Some(existing) = self.entries.get(&id) {
                    return Err(Error::Directory {
                        reason: format!(
                            "key {id} is already enrolled for node {} in {}",
                            existing.node_id, existing.zone
                        ),
                    });
                }
                self.entries.insert(
                    id.clone(),
                    NodeEntry {
                        node_id: node_id.clone(),
                        zone: zone.clone(),
                        key_id: id,
                        public_key: public,
                        state: KeyState::Active,
                    },
                );
                Ok(())
            }
            DirectoryChange::Retired { key_id } => self.set(key_id, KeyState::Retired),
            DirectoryChange::Revoked { key_id } => self.set(key_id, KeyState::Revoked),
        }
    }

    fn set(&mut self, key_id: &str, state: KeyState) -> Result<()> {
        let entry = self
            .entries
            .get_mut(key_id)
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

    pub fn get(&self, key_id: &str) -> Option<&NodeEntry> {
        self.entries.get(key_id)
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
