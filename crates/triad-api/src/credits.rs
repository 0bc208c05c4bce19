//! TRIAD credits at the API (docs/credits.md): an in-memory view of the ledger, followed from
//! `triad.credits` offset 0 and checked event by event as `triad audit ledger` checks it, so
//! a read never touches the routing path or a database; issuance (operator only) appends an
//! `IssueCredits` command and waits until the view shows its event.

use std::time::Duration;

use rdkafka::message::Message;
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;
use triad_domain::{CreditKind, CreditsCommand, CreditsEvent};
use triad_market::ledger::LedgerView;

use crate::AppState;

/// The API's view of the ledger and a counter of the records folded into it.
#[derive(Debug)]
pub struct Ledger {
    view: RwLock<LedgerView>,
    folded: watch::Sender<usize>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            view: RwLock::new(LedgerView::default()),
            folded: watch::channel(0).0,
        }
    }
}

/// One account as the API serves it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountView {
    pub account: String,
    pub totals: triad_domain::AccountTotals,
    pub entries: Vec<CreditsEvent>,
}

impl Ledger {
    pub async fn account(&self, id: &str) -> Option<AccountView> {
        let view = self.view.read().await;
        let state = view.accounts.get(id)?;
        Some(AccountView {
            account: id.to_owned(),
            totals: state.totals,
            entries: view.entries.get(id).cloned().unwrap_or_default(),
        })
    }

    pub async fn supply(&self) -> triad_market::ledger::Supply {
        self.view.read().await.supply()
    }

    /// Records that did not check out, if any.
    pub async fn problems(&self) -> Vec<String> {
        self.view.read().await.problems.clone()
    }

    /// The event `command_id` caused on `account`, once the view has it (or None after
    /// `timeout`).
    pub async fn wait_for(
        &self,
        account: &str,
        command_id: &str,
        timeout: Duration,
    ) -> Option<CreditsEvent> {
        let mut folded = self.folded.subscribe();
        let find = || async {
            self.view.read().await.entries.get(account).and_then(|es| {
                es.iter()
                    .rev()
                    .find(|e| e.causation.command_id == command_id)
                    .cloned()
            })
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = find().await {
                return Some(e);
            }
            match tokio::time::timeout_at(deadline, folded.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }
}

/// Follows every partition of `triad.credits` from offset 0 into `state.ledger` until
/// `cancel`.
pub async fn follow(state: std::sync::Arc<AppState>, cancel: CancellationToken) {
    let topic = state.names.credits.clone();
    let each = |m: rdkafka::message::OwnedMessage| {
        let state = state.clone();
        async move {
            let at = format!("{}@{}", m.partition(), m.offset());
            let payload = m.payload().unwrap_or_default();
            let decoded = state.codec.decode::<CreditsEvent>(Some(payload)).await;
            let mut view = state.ledger.view.write().await;
            match decoded {
                Ok(event) => {
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    let sha = triad_sovereignty::hex(&triad_sovereignty::custody::sha256(
                        payload
                            .get(triad_codec::wire::PREFIX_LEN..)
                            .unwrap_or_default(),
                    ));
                    view.record(&at, &key, event, sha);
                }
                Err(error) => {
                    tracing::warn!(%error, ledger.record = %at, "a ledger record does not decode");
                    view.undecodable(&at, &error.to_string());
                }
            }
            let records = view.records;
            drop(view);
            state.ledger.folded.send_replace(records);
        }
    };
    crate::follow_topic(&state.kafka, &topic, state.kafka.partitions, cancel, each).await;
}

/// Why a credits command was not accepted at the edge.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Unavailable(#[from] crate::Error),
}

/// What an issue asks for, as received.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    pub amount_micros: i64,
    #[serde(default = "grant")]
    pub kind: String,
    pub reason: String,
}

fn grant() -> String {
    "GRANT".to_owned()
}

/// Validates and appends an `IssueCredits` for `account`, then waits (up to 10 s) for its
/// ledger event: Some(event) once applied, None when the ledger has not answered yet.
pub async fn issue(
    state: &AppState,
    account: &str,
    request: &IssueRequest,
    actor: &str,
) -> Result<(String, Option<CreditsEvent>), IssueError> {
    if !triad_workflow::valid_account(account) {
        return Err(IssueError::Invalid {
            field: "account",
            message: format!("{account:?} must be 1-128 characters of A-Z a-z 0-9 . _ - : @"),
        });
    }
    if request.amount_micros <= 0 {
        return Err(IssueError::Invalid {
            field: "amount_micros",
            message: "must be positive".to_owned(),
        });
    }
    let Some(kind) = CreditKind::parse(&request.kind) else {
        return Err(IssueError::Invalid {
            field: "kind",
            message: format!(
                "{:?}: expected GRANT, CAPACITY, DATA or VALIDATION",
                request.kind
            ),
        });
    };
    if request.reason.trim().is_empty() || request.reason.len() > 1024 {
        return Err(IssueError::Invalid {
            field: "reason",
            message: "must be 1-1024 bytes saying what the credits are for".to_owned(),
        });
    }
    let command = CreditsCommand {
        command_id: triad_domain::new_command_id(),
        account: account.to_owned(),
        issued_at: triad_kafka::now_micros(),
        actor: Some(actor.to_owned()),
        body: triad_domain::CreditsCommandBody::IssueCredits(triad_domain::IssueCredits {
            amount_micros: request.amount_micros,
            kind,
            reason: request.reason.clone(),
        }),
        schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
    };
    state
        .producer
        .send_record(
            &state.codec,
            &state.names.credits_inbox,
            None,
            account,
            &command,
        )
        .await
        .map_err(crate::Error::from)?;
    let event = state
        .ledger
        .wait_for(account, &command.command_id, Duration::from_secs(10))
        .await;
    Ok((command.command_id, event))
}
