//! One node's sovereignty kernel: its key and zone, the key directory it last folded, the
//! workflow key records it has seen, and `seal` / `open` for payload fields.
//!
//! The kernel holds state only; following the directory and the workflow-key topic is the
//! caller's job (crate `triad-kernel`), so this stays free of I/O and easy to test.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use zeroize::Zeroizing;

use crate::directory::KeyDirectory;
use crate::envelope::{Binding, Envelope, Opener, Role, WorkflowKey, WorkflowKeyRecord};
use crate::keys::NodeKey;
use crate::{Error, Result};

/// Where a payload field is read from. A sealed payload must have been sealed for exactly
/// this place: the AAD makes the envelope's fields tamper-evident, and this check makes an
/// intact envelope copied into another workflow, task or role useless.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub workflow_id: &'a str,
    pub task_id: &'a str,
    pub role: Role,
}

/// A payload field's content, opened.
#[derive(Debug)]
pub enum Opened<'a> {
    /// The field held plaintext (sealing was off where it was written).
    Plain(&'a [u8]),
    /// The field held an envelope, opened here.
    Sealed {
        envelope: Box<Envelope>,
        plaintext: Zeroizing<Vec<u8>>,
    },
}

impl Opened<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Opened::Plain(b) => b,
            Opened::Sealed { plaintext, .. } => plaintext,
        }
    }

    /// The envelope's workflow key id, when the payload was sealed.
    pub fn workflow_key_id(&self) -> Option<&str> {
        match self {
            Opened::Plain(_) => None,
            Opened::Sealed { envelope, .. } => Some(&envelope.workflow_key_id),
        }
    }
}

pub struct Kernel {
    opener: Opener,
    node_id: String,
    directory: RwLock<KeyDirectory>,
    /// Workflow key records by workflow key id, as the workflow-key topic holds them.
    records: RwLock<HashMap<String, WorkflowKeyRecord>>,
    /// Sealing sides of workflow keys created or unwrapped here, by workflow key id.
    sealers: Mutex<HashMap<String, Arc<WorkflowKey>>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

impl Kernel {
    pub fn new(node_id: &str, zone: &str, key: Arc<dyn NodeKey>) -> Self {
        Self {
            opener: Opener::new(node_id, zone, key),
            node_id: node_id.to_owned(),
            directory: RwLock::new(KeyDirectory::default()),
            records: RwLock::new(HashMap::new()),
            sealers: Mutex::new(HashMap::new()),
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn zone(&self) -> &str {
        self.opener.zone()
    }

    /// Replaces the directory (the caller folded and verified a newer one).
    pub fn set_directory(&self, directory: KeyDirectory) {
        if let Ok(mut d) = self.directory.write() {
            *d = directory;
        }
    }

    pub fn directory(&self) -> KeyDirectory {
        self.directory.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// Records a workflow key record seen on the log.
    pub fn put_record(&self, record: WorkflowKeyRecord) {
        if let Ok(mut r) = self.records.write() {
            r.insert(record.workflow_key_id.clone(), record);
        }
    }

    pub fn has_record(&self, workflow_key_id: &str) -> bool {
        self.records
            .read()
            .is_ok_and(|r| r.contains_key(workflow_key_id))
    }

    /// Crypto-shredding as this node sees it: the record is gone from the log, so it drops
    /// the record and every unwrapped copy of the key it held.
    pub fn shred(&self, workflow_key_id: &str) {
        if let Ok(mut r) = self.records.write() {
            r.remove(workflow_key_id);
        }
        if let Ok(mut s) = self.sealers.lock() {
            s.remove(workflow_key_id);
        }
        self.opener.forget(workflow_key_id);
    }

    /// Draws a workflow key for `workflow_id` and `zones`, wrapped to every active key the
    /// directory enrols there; returns the record to publish (the kernel keeps its sealer).
    pub fn create<S: AsRef<str>>(
        &self,
        workflow_id: &str,
        zones: &[S],
    ) -> Result<WorkflowKeyRecord> {
        let directory = self.directory();
        let (key, record) = WorkflowKey::create(&directory, workflow_id, zones)?;
        if let Ok(mut s) = self.sealers.lock() {
            s.insert(record.workflow_key_id.clone(), Arc::new(key));
        }
        self.put_record(record.clone());
        Ok(record)
    }

    fn record(&self, workflow_key_id: &str) -> Result<WorkflowKeyRecord> {
        self.records
            .read()
            .ok()
            .and_then(|r| r.get(workflow_key_id).cloned())
            .ok_or_else(|| Error::UnknownWorkflowKey {
                workflow_key_id: workflow_key_id.to_owned(),
            })
    }

    fn sealer(&self, workflow_key_id: &str) -> Result<Arc<WorkflowKey>> {
        if let Some(k) = self
            .sealers
            .lock()
            .ok()
            .and_then(|s| s.get(workflow_key_id).cloned())
        {
            return Ok(k);
        }
        let record = self.record(workflow_key_id)?;
        let key = Arc::new(self.opener.sealer(&self.directory(), &record)?);
        if let Ok(mut s) = self.sealers.lock() {
            s.insert(workflow_key_id.to_owned(), Arc::clone(&key));
        }
        Ok(key)
    }

    /// Seals `plaintext` under workflow key `workflow_key_id` for `binding`; returns the
    /// payload field's bytes ([`Envelope::to_wire`]).
    pub fn seal(
        &self,
        workflow_key_id: &str,
        binding: Binding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        self.sealer(workflow_key_id)?
            .seal(binding, plaintext)?
            .to_wire()
    }

    /// Opens a payload field read at `expect`: plaintext passes through; an envelope is
    /// checked against `expect` and opened ([`Error::UnknownWorkflowKey`] when its record has
    /// not been seen — not yet, or shredded).
    pub fn open<'a>(&self, payload: &'a [u8], expect: Expect<'_>) -> Result<Opened<'a>> {
        let Some(envelope) = Envelope::from_wire(payload) else {
            return Ok(Opened::Plain(payload));
        };
        let envelope = envelope?;
        if envelope.workflow_id != expect.workflow_id
            || envelope.task_id != expect.task_id
            || envelope.role != expect.role
        {
            return Err(Error::Tampered {
                envelope_id: envelope.envelope_id.clone(),
                reason: format!(
                    "sealed for workflow {}, task {}, role {} but read as workflow {}, task {}, role {}",
                    envelope.workflow_id,
                    envelope.task_id,
                    envelope.role.as_str(),
                    expect.workflow_id,
                    expect.task_id,
                    expect.role.as_str()
                ),
            });
        }
        let record = self.record(&envelope.workflow_key_id)?;
        let plaintext = self.opener.unseal(&self.directory(), &record, &envelope)?;
        Ok(Opened::Sealed {
            envelope: Box::new(envelope),
            plaintext,
        })
    }
}
