//! Errors with the Confluent error codes and HTTP statuses clients expect.

use axum::http::StatusCode;

/// An error of the REST API: Confluent's `error_code` and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error(
        "Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotConfigured(String),
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {details}"
    )]
    Incompatible { subject: String, details: String },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel,
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    ReferenceExists { subject: String, version: u32 },
    #[error("Unrecognized field or bad request body: {0}")]
    BadRequest(String),
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl ApiError {
    /// Confluent's numeric `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound(_) => 40402,
            Self::SchemaNotFound(_) => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::SubjectNotSoftDeleted(_) => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectCompatibilityNotConfigured(_) => 40408,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibilityLevel => 42203,
            Self::ReferenceExists { .. } => 42206,
            Self::BadRequest(_) => 400,
            Self::Store(_) => 50001,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.code() {
            c if (40400..40500).contains(&c) => StatusCode::NOT_FOUND,
            409 => StatusCode::CONFLICT,
            c if (42200..42300).contains(&c) => StatusCode::UNPROCESSABLE_ENTITY,
            400 => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Errors of running the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error("record {offset} of {topic} is not a registry record: {reason}")]
    BadLogRecord {
        topic: String,
        offset: i64,
        reason: String,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
