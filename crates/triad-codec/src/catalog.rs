//! The compiled-in schemas and the mapping from Rust types to them.

use std::collections::HashMap;

use apache_avro::Schema;
use serde::{Serialize, de::DeserializeOwned};
use triad_domain::{
    ApiKeyEvent, ControlRecord, CreditsCommand, CreditsEvent, CustodyCheckpoint, DeadLetter,
    ExecutorStatus, InboxRecord, KeyDirectoryChange, ModelHeartbeat, ModelRegistration,
    PolicyVersion, SovereigntyViolation, TaskRequest, WorkflowEvent, WorkflowKey, WorkflowSnapshot,
};

use crate::{Error, Result};

/// Every `.avsc` file of `schemas/`, by full record name.
pub const SCHEMA_FILES: &[(&str, &str)] = &[
    (InboxRecord::NAME, InboxRecord::AVSC),
    (WorkflowEvent::NAME, WorkflowEvent::AVSC),
    (DeadLetter::NAME, DeadLetter::AVSC),
    (TaskRequest::NAME, TaskRequest::AVSC),
    (ControlRecord::NAME, ControlRecord::AVSC),
    (ExecutorStatus::NAME, ExecutorStatus::AVSC),
    (WorkflowSnapshot::NAME, WorkflowSnapshot::AVSC),
    (ModelRegistration::NAME, ModelRegistration::AVSC),
    (ModelHeartbeat::NAME, ModelHeartbeat::AVSC),
    (ApiKeyEvent::NAME, ApiKeyEvent::AVSC),
    (KeyDirectoryChange::NAME, KeyDirectoryChange::AVSC),
    (WorkflowKey::NAME, WorkflowKey::AVSC),
    (SovereigntyViolation::NAME, SovereigntyViolation::AVSC),
    (CustodyCheckpoint::NAME, CustodyCheckpoint::AVSC),
    (PolicyVersion::NAME, PolicyVersion::AVSC),
    (CreditsCommand::NAME, CreditsCommand::AVSC),
    (CreditsEvent::NAME, CreditsEvent::AVSC),
];

/// A Rust type that is the image of one top-level `.avsc` record.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync {
    /// Full Avro name, e.g. `io.triad.v1.InboxRecord`.
    const NAME: &'static str;
    /// The schema text, embedded from `schemas/<NAME>.avsc`.
    const AVSC: &'static str;
}

impl AvroRecord for InboxRecord {
    const NAME: &'static str = "io.triad.v1.InboxRecord";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.InboxRecord.avsc");
}

impl AvroRecord for WorkflowEvent {
    const NAME: &'static str = "io.triad.v1.WorkflowEvent";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.WorkflowEvent.avsc");
}

impl AvroRecord for DeadLetter {
    const NAME: &'static str = "io.triad.v1.DeadLetter";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.DeadLetter.avsc");
}

impl AvroRecord for TaskRequest {
    const NAME: &'static str = "io.triad.v1.TaskRequest";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.TaskRequest.avsc");
}

impl AvroRecord for ControlRecord {
    const NAME: &'static str = "io.triad.v1.ControlRecord";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.ControlRecord.avsc");
}

impl AvroRecord for ExecutorStatus {
    const NAME: &'static str = "io.triad.v1.ExecutorStatus";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.ExecutorStatus.avsc");
}

impl AvroRecord for WorkflowSnapshot {
    const NAME: &'static str = "io.triad.v1.WorkflowSnapshot";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.WorkflowSnapshot.avsc");
}

impl AvroRecord for ModelRegistration {
    const NAME: &'static str = "io.triad.v1.ModelRegistration";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.ModelRegistration.avsc");
}

impl AvroRecord for ApiKeyEvent {
    const NAME: &'static str = "io.triad.v1.ApiKeyEvent";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.ApiKeyEvent.avsc");
}

impl AvroRecord for ModelHeartbeat {
    const NAME: &'static str = "io.triad.v1.ModelHeartbeat";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.ModelHeartbeat.avsc");
}

impl AvroRecord for KeyDirectoryChange {
    const NAME: &'static str = "io.triad.v1.KeyDirectoryChange";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.KeyDirectoryChange.avsc");
}

impl AvroRecord for WorkflowKey {
    const NAME: &'static str = "io.triad.v1.WorkflowKey";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.WorkflowKey.avsc");
}

impl AvroRecord for CreditsCommand {
    const NAME: &'static str = "io.triad.v1.CreditsCommand";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.CreditsCommand.avsc");
}

impl AvroRecord for CreditsEvent {
    const NAME: &'static str = "io.triad.v1.CreditsEvent";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.CreditsEvent.avsc");
}

impl AvroRecord for PolicyVersion {
    const NAME: &'static str = "io.triad.v1.PolicyVersion";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.PolicyVersion.avsc");
}

impl AvroRecord for CustodyCheckpoint {
    const NAME: &'static str = "io.triad.v1.CustodyCheckpoint";
    const AVSC: &'static str = include_str!("../../../schemas/io.triad.v1.CustodyCheckpoint.avsc");
}

impl AvroRecord for SovereigntyViolation {
    const NAME: &'static str = "io.triad.v1.SovereigntyViolation";
    const AVSC: &'static str =
        include_str!("../../../schemas/io.triad.v1.SovereigntyViolation.avsc");
}

/// The parsed reader schemas, parsed once at start-up.
#[derive(Debug)]
pub struct Catalog {
    schemas: HashMap<&'static str, Schema>,
}

impl Catalog {
    pub fn load() -> Result<Self> {
        let mut schemas = HashMap::new();
        for (name, avsc) in SCHEMA_FILES {
            let schema =
                Schema::parse_str(avsc).map_err(|source| Error::Schema { name, source })?;
            schemas.insert(*name, schema);
        }
        Ok(Self { schemas })
    }

    /// The reader schema of `T`. Every `AvroRecord` is in `SCHEMA_FILES`; the error path
    /// keeps a forgotten entry from becoming a panic.
    pub fn schema<T: AvroRecord>(&self) -> Result<&Schema> {
        self.schemas
            .get(T::NAME)
            .ok_or(Error::UnknownRecord { name: T::NAME })
    }
}
