//! Records of `triad.key-directory` (schema `io.triad.v1.KeyDirectoryChange`): the operator's
//! signed, chained changes to which node keys are enrolled in which zone.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDirectoryChange {
    pub sequence: i64,
    pub previous: String,
    pub change: DirectoryBody,
    pub signer: String,
    pub signature: String,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryBody {
    NodeEnrolled(NodeEnrolled),
    NodeKeyRetired(NodeKeyRetired),
    NodeKeyRevoked(NodeKeyRevoked),
    /// v2.
    NodeSigningKeyEnrolled(NodeSigningKeyEnrolled),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEnrolled {
    pub node_id: String,
    pub zone: String,
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyRetired {
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyRevoked {
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSigningKeyEnrolled {
    pub node_id: String,
    pub zone: String,
    pub public_key: String,
}
