//! Records of the TRIAD credits ledger: commands on `triad.credits-inbox` (schema
//! `io.triad.v1.CreditsCommand`) and the ledger itself, `triad.credits` (schema
//! `io.triad.v1.CreditsEvent`), both keyed by account (docs/credits.md).

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

/// A command for the ledger's single writer of `account`. There is deliberately no transfer
/// command: credits are non-transferable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsCommand {
    pub command_id: String,
    pub account: String,
    pub issued_at: TimestampMicros,
    #[serde(default)]
    pub actor: Option<String>,
    pub body: CreditsCommandBody,
    pub schema_version: i32,
}

/// The Avro union of a command's body, in branch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditsCommandBody {
    IssueCredits(IssueCredits),
    ReserveCredits(ReserveCredits),
    SettleReservation(SettleReservation),
}

impl CreditsCommandBody {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::IssueCredits(_) => "IssueCredits",
            Self::ReserveCredits(_) => "ReserveCredits",
            Self::SettleReservation(_) => "SettleReservation",
        }
    }
}

/// Why credits were issued: the seed's contributions, or an operator's grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CreditKind {
    #[serde(rename = "GRANT")]
    Grant,
    #[serde(rename = "CAPACITY")]
    Capacity,
    #[serde(rename = "DATA")]
    Data,
    #[serde(rename = "VALIDATION")]
    Validation,
}

impl CreditKind {
    pub const ALL: [Self; 4] = [Self::Grant, Self::Capacity, Self::Data, Self::Validation];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "GRANT",
            Self::Capacity => "CAPACITY",
            Self::Data => "DATA",
            Self::Validation => "VALIDATION",
        }
    }

    /// The kind named `name`, case-insensitively.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueCredits {
    pub amount_micros: i64,
    pub kind: CreditKind,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveCredits {
    pub workflow_id: String,
    pub amount_micros: i64,
    pub reply_topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleReservation {
    pub workflow_id: String,
    pub burned_micros: i64,
    pub reply_topic: String,
}

/// One event of an account's ledger, with the account's totals after it and the hash of
/// the account's previous event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsEvent {
    pub event_id: String,
    pub account: String,
    pub sequence: i64,
    pub occurred_at: TimestampMicros,
    pub causation: LedgerCausation,
    pub body: CreditsEventBody,
    pub totals: AccountTotals,
    pub previous_sha256: String,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCausation {
    pub command_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The Avro union of a ledger event's body, in branch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditsEventBody {
    CreditsIssued(CreditsIssued),
    CreditsReserved(CreditsReserved),
    ReservationRefused(ReservationRefused),
    CreditsBurned(CreditsBurned),
    ReservationReleased(ReservationReleased),
}

impl CreditsEventBody {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::CreditsIssued(_) => "CreditsIssued",
            Self::CreditsReserved(_) => "CreditsReserved",
            Self::ReservationRefused(_) => "ReservationRefused",
            Self::CreditsBurned(_) => "CreditsBurned",
            Self::ReservationReleased(_) => "ReservationReleased",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsIssued {
    pub amount_micros: i64,
    pub kind: CreditKind,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsReserved {
    pub workflow_id: String,
    pub amount_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRefused {
    pub workflow_id: String,
    pub amount_micros: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsBurned {
    pub workflow_id: String,
    pub amount_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationReleased {
    pub workflow_id: String,
    pub amount_micros: i64,
}

/// An account's totals. `issued = balance + reserved + burned` holds after every event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountTotals {
    pub issued_micros: i64,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub burned_micros: i64,
}

impl AccountTotals {
    /// True when the ledger's invariant holds: nothing negative, and every credit issued is
    /// available, reserved or burned.
    pub fn consistent(&self) -> bool {
        self.balance_micros >= 0
            && self.reserved_micros >= 0
            && self.burned_micros >= 0
            && self.issued_micros
                == self
                    .balance_micros
                    .saturating_add(self.reserved_micros)
                    .saturating_add(self.burned_micros)
    }
}

/// The `previous_sha256` of an account's first event.
pub const GENESIS_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";
