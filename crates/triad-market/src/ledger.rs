//! The TRIAD credits ledger's decisions, free of I/O (docs/credits.md).
//!
//! One [`Account`] is the fold of its events on `triad.credits`. [`Account::decide`] turns a
//! command into the events to write and the answer to send; [`Account::apply`] folds an
//! event back, checking what the event states (its sequence, its totals and the hash of the
//! account's previous event) so a replay of the topic is also its audit.
//!
//! The rules:
//! - **Issue** adds to the balance; a command id issues once.
//! - **Reserve** moves a workflow's worst case from the balance to `reserved` when the
//!   balance covers it, and records a refusal otherwise. One reservation per workflow: a
//!   repeated request gets the first answer and writes nothing.
//! - **Settle** burns the workflow's spend, at most its reservation, and releases the rest;
//!   burned credits leave the supply. A repeated settlement writes nothing.
//! - There is no transfer: nothing moves credits between accounts.
//!
//! `issued = balance + reserved + burned`, with nothing negative, after every event.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use triad_domain::{
    AccountTotals, CreditsBurned, CreditsCommandBody, CreditsEvent, CreditsEventBody,
    CreditsIssued, CreditsReserved, GENESIS_SHA256, LedgerCausation, LedgerOutcome, LedgerReply,
    ReservationRefused, ReservationReleased,
};

/// What the ledger knows of one workflow's reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Reservation {
    Held {
        amount_micros: i64,
    },
    Refused {
        amount_micros: i64,
        reason: String,
    },
    /// Burned, with the release of the rest still to be written (a crash came between the
    /// two events of a settlement); `causation` is the settlement's.
    Burned {
        amount_micros: i64,
        burned_micros: i64,
        causation: LedgerCausation,
    },
    Settled {
        amount_micros: i64,
        burned_micros: i64,
        released_micros: i64,
    },
}

/// One account: the fold of its ledger events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Account {
    pub totals: AccountTotals,
    /// The sequence of its last event (0 before the first).
    pub sequence: i64,
    /// Hex SHA-256 of its last event's Avro datum.
    pub last_sha256: String,
    pub reservations: BTreeMap<String, Reservation>,
    /// Command ids of the issues applied, so a repeated command issues once.
    issued_commands: BTreeSet<String>,
}

/// What a command decides: the events to write, in order, and the answer for the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub events: Vec<CreditsEventBody>,
    pub reply: Option<Reply>,
}

/// An answer to the workflow processor, on the command's reply topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub topic: String,
    pub workflow_id: String,
    pub body: LedgerReply,
}

/// A command the ledger cannot apply; it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

impl Account {
    /// Decides `command` (with id `command_id`) for account `account`.
    pub fn decide(
        &self,
        account: &str,
        command_id: &str,
        command: &CreditsCommandBody,
    ) -> Result<Decision, Invalid> {
        match command {
            CreditsCommandBody::IssueCredits(c) => {
                if c.amount_micros <= 0 {
                    return Err(invalid("amount_micros", "must be positive"));
                }
                if self.issued_commands.contains(command_id) {
                    return Ok(Decision {
                        events: vec![],
                        reply: None,
                    });
                }
                if self
                    .totals
                    .issued_micros
                    .checked_add(c.amount_micros)
                    .is_none()
                {
                    return Err(invalid(
                        "amount_micros",
                        "the account's supply would overflow",
                    ));
                }
                Ok(Decision {
                    events: vec![CreditsEventBody::CreditsIssued(CreditsIssued {
                        amount_micros: c.amount_micros,
                        kind: c.kind,
                        reason: c.reason.clone(),
                    })],
                    reply: None,
                })
            }
            CreditsCommandBody::ReserveCredits(r) => {
                if r.amount_micros < 0 {
                    return Err(invalid("amount_micros", "must not be negative"));
                }
                let reply = |outcome, amount_micros, reason: Option<String>| Reply {
                    topic: r.reply_topic.clone(),
                    workflow_id: r.workflow_id.clone(),
                    body: LedgerReply {
                        account: account.to_owned(),
                        outcome,
                        amount_micros,
                        burned_micros: 0,
                        released_micros: 0,
                        reason,
                    },
                };
                if let Some(known) = self.reservations.get(&r.workflow_id) {
                    // The first answer again, nothing written.
                    let again = match known {
                        Reservation::Refused {
                            amount_micros,
                            reason,
                        } => reply(LedgerOutcome::Refused, *amount_micros, Some(reason.clone())),
                        Reservation::Held { amount_micros }
                        | Reservation::Burned { amount_micros, .. }
                        | Reservation::Settled { amount_micros, .. } => {
                            reply(LedgerOutcome::Reserved, *amount_micros, None)
                        }
                    };
                    return Ok(Decision {
                        events: vec![],
                        reply: Some(again),
                    });
                }
                let balance = self.totals.balance_micros;
                if r.amount_micros <= balance {
                    return Ok(Decision {
                        events: vec![CreditsEventBody::CreditsReserved(CreditsReserved {
                            workflow_id: r.workflow_id.clone(),
                            amount_micros: r.amount_micros,
                        })],
                        reply: Some(reply(LedgerOutcome::Reserved, r.amount_micros, None)),
                    });
                }
                let reason = if self.sequence == 0 {
                    format!("account {account} has no credits")
                } else {
                    format!(
                        "the worst case of {} µcredits exceeds the balance of {balance} µcredits \
                         of account {account}",
                        r.amount_micros
                    )
                };
                Ok(Decision {
                    events: vec![CreditsEventBody::ReservationRefused(ReservationRefused {
                        workflow_id: r.workflow_id.clone(),
                        amount_micros: r.amount_micros,
                        reason: reason.clone(),
                    })],
                    reply: Some(reply(LedgerOutcome::Refused, r.amount_micros, Some(reason))),
                })
            }
            CreditsCommandBody::SettleReservation(s) => {
                if s.burned_micros < 0 {
                    return Err(invalid("burned_micros", "must not be negative"));
                }
                let settled = |amount_micros, burned_micros, released_micros| Reply {
                    topic: s.reply_topic.clone(),
                    workflow_id: s.workflow_id.clone(),
                    body: LedgerReply {
                        account: account.to_owned(),
                        outcome: LedgerOutcome::Settled,
                        amount_micros,
                        burned_micros,
                        released_micros,
                        reason: None,
                    },
                };
                let (events, reply) = match self.reservations.get(&s.workflow_id) {
                    Some(Reservation::Held { amount_micros }) => {
                        // Never more than was reserved: the reservation is the hard limit.
                        let burned = s.burned_micros.min(*amount_micros);
                        let rest = amount_micros - burned;
                        (
                            vec![
                                CreditsEventBody::CreditsBurned(CreditsBurned {
                                    workflow_id: s.workflow_id.clone(),
                                    amount_micros: burned,
                                }),
                                CreditsEventBody::ReservationReleased(ReservationReleased {
                                    workflow_id: s.workflow_id.clone(),
                                    amount_micros: rest,
                                }),
                            ],
                            settled(*amount_micros, burned, rest),
                        )
                    }
                    Some(Reservation::Burned {
                        amount_micros,
                        burned_micros,
                        ..
                    }) => {
                        let rest = amount_micros - burned_micros;
                        (
                            vec![CreditsEventBody::ReservationReleased(ReservationReleased {
                                workflow_id: s.workflow_id.clone(),
                                amount_micros: rest,
                            })],
                            settled(*amount_micros, *burned_micros, rest),
                        )
                    }
                    Some(Reservation::Settled {
                        amount_micros,
                        burned_micros,
                        released_micros,
                    }) => (
                        vec![],
                        settled(*amount_micros, *burned_micros, *released_micros),
                    ),
                    Some(Reservation::Refused { .. }) => (vec![], settled(0, 0, 0)),
                    // The workflow finished before its reservation arrived (a cancellation
                    // right after the submission): recorded as refused, so a reservation
                    // that arrives later is refused rather than held forever.
                    None => (
                        vec![CreditsEventBody::ReservationRefused(ReservationRefused {
                            workflow_id: s.workflow_id.clone(),
                            amount_micros: 0,
                            reason: "the workflow finished before its reservation".to_owned(),
                        })],
                        settled(0, 0, 0),
                    ),
                };
                Ok(Decision {
                    events,
                    reply: Some(reply),
                })
            }
        }
    }

    /// The account's totals after `body`, or why `body` cannot follow its state.
    pub fn totals_after(&self, body: &CreditsEventBody) -> Result<AccountTotals, String> {
        let mut t = self.totals;
        let held = |workflow: &str| match self.reservations.get(workflow) {
            Some(Reservation::Held { amount_micros }) => Ok(*amount_micros),
            other => Err(format!(
                "workflow {workflow} has no held reservation ({other:?})"
            )),
        };
        match body {
            CreditsEventBody::CreditsIssued(e) => {
                t.issued_micros = t.issued_micros.saturating_add(e.amount_micros);
                t.balance_micros = t.balance_micros.saturating_add(e.amount_micros);
            }
            CreditsEventBody::CreditsReserved(e) => {
                if self.reservations.contains_key(&e.workflow_id) {
                    return Err(format!("workflow {} reserved twice", e.workflow_id));
                }
                t.balance_micros -= e.amount_micros;
                t.reserved_micros += e.amount_micros;
            }
            CreditsEventBody::ReservationRefused(_) => {}
            CreditsEventBody::CreditsBurned(e) => {
                let held = held(&e.workflow_id)?;
                if e.amount_micros > held {
                    return Err(format!(
                        "workflow {} burned {} of a reservation of {held}",
                        e.workflow_id, e.amount_micros
                    ));
                }
                t.reserved_micros -= e.amount_micros;
                t.burned_micros += e.amount_micros;
            }
            CreditsEventBody::ReservationReleased(e) => {
                let Some(Reservation::Burned {
                    amount_micros,
                    burned_micros,
                    ..
                }) = self.reservations.get(&e.workflow_id)
                else {
                    return Err(format!(
                        "workflow {} released before it burned",
                        e.workflow_id
                    ));
                };
                if e.amount_micros != amount_micros - burned_micros {
                    return Err(format!(
                        "workflow {} released {} of the {} left",
                        e.workflow_id,
                        e.amount_micros,
                        amount_micros - burned_micros
                    ));
                }
                t.reserved_micros -= e.amount_micros;
                t.balance_micros += e.amount_micros;
            }
        }
        if !t.consistent() {
            return Err(format!("the totals would break the invariant: {t:?}"));
        }
        Ok(t)
    }

    /// The account's next event for `body`: its id derived from the causing command's
    /// position and the event's index (so a re-run writes the same id), its sequence, the
    /// totals after it and the hash of the previous event. Fold it with [`Account::apply`]
    /// once encoded.
    pub fn next_event(
        &self,
        account: &str,
        body: CreditsEventBody,
        causation: &LedgerCausation,
        index: u32,
        occurred_at: i64,
    ) -> Result<CreditsEvent, String> {
        let totals = self.totals_after(&body)?;
        let id = triad_domain::derive_event_id(
            &triad_domain::Causation {
                command_id: Some(causation.command_id.clone()),
                topic: causation.topic.clone(),
                partition: causation.partition,
                offset: causation.offset,
            },
            index,
        );
        Ok(CreditsEvent {
            event_id: id,
            account: account.to_owned(),
            sequence: self.sequence + 1,
            occurred_at,
            causation: causation.clone(),
            body,
            totals,
            previous_sha256: if self.sequence == 0 {
                GENESIS_SHA256.to_owned()
            } else {
                self.last_sha256.clone()
            },
            schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
        })
    }

    /// Folds `event` (whose Avro datum hashes to `datum_sha256`), checking what it states: the
    /// next sequence, the hash of the previous event, and the totals.
    pub fn apply(&mut self, event: &CreditsEvent, datum_sha256: String) -> Result<(), String> {
        if event.sequence != self.sequence + 1 {
            return Err(format!(
                "sequence {} follows {}",
                event.sequence, self.sequence
            ));
        }
        let previous = if self.sequence == 0 {
            GENESIS_SHA256
        } else {
            self.last_sha256.as_str()
        };
        if event.previous_sha256 != previous {
            return Err(format!(
                "previous_sha256 {} is not the hash of event {} ({previous})",
                event.previous_sha256, self.sequence
            ));
        }
        let totals = self.totals_after(&event.body)?;
        if totals != event.totals {
            return Err(format!(
                "the event states {:?}, its fold gives {totals:?}",
                event.totals
            ));
        }
        self.record(&event.body, &event.causation);
        self.totals = totals;
        self.sequence = event.sequence;
        self.last_sha256 = datum_sha256;
        Ok(())
    }

    fn record(&mut self, body: &CreditsEventBody, causation: &LedgerCausation) {
        match body {
            CreditsEventBody::CreditsIssued(_) => {
                self.issued_commands.insert(causation.command_id.clone());
            }
            CreditsEventBody::CreditsReserved(e) => {
                self.reservations.insert(
                    e.workflow_id.clone(),
                    Reservation::Held {
                        amount_micros: e.amount_micros,
                    },
                );
            }
            CreditsEventBody::ReservationRefused(e) => {
                self.reservations.insert(
                    e.workflow_id.clone(),
                    Reservation::Refused {
                        amount_micros: e.amount_micros,
                        reason: e.reason.clone(),
                    },
                );
            }
            CreditsEventBody::CreditsBurned(e) => {
                if let Some(Reservation::Held { amount_micros }) =
                    self.reservations.get(&e.workflow_id).cloned()
                {
                    self.reservations.insert(
                        e.workflow_id.clone(),
                        Reservation::Burned {
                            amount_micros,
                            burned_micros: e.amount_micros,
                            causation: causation.clone(),
                        },
                    );
                }
            }
            CreditsEventBody::ReservationReleased(e) => {
                if let Some(Reservation::Burned {
                    amount_micros,
                    burned_micros,
                    ..
                }) = self.reservations.get(&e.workflow_id).cloned()
                {
                    self.reservations.insert(
                        e.workflow_id.clone(),
                        Reservation::Settled {
                            amount_micros,
                            burned_micros,
                            released_micros: e.amount_micros,
                        },
                    );
                }
            }
        }
    }

    /// Settlements cut short between their two events: the release each still owes, with
    /// the settlement's causation (so the completing event gets the id it would have had).
    pub fn pending_releases(&self) -> Vec<(ReservationReleased, LedgerCausation)> {
        self.reservations
            .iter()
            .filter_map(|(workflow, r)| match r {
                Reservation::Burned {
                    amount_micros,
                    burned_micros,
                    causation,
                } => Some((
                    ReservationReleased {
                        workflow_id: workflow.clone(),
                        amount_micros: amount_micros - burned_micros,
                    },
                    causation.clone(),
                )),
                _ => None,
            })
            .collect()
    }
}

/// The ledger as its topic states it: every account folded from its events, with the
/// events and anything that does not check out. Fed record by record, in log order per
/// partition (a batch read, or a follower).
#[derive(Debug, Clone, Default)]
pub struct LedgerView {
    pub accounts: BTreeMap<String, Account>,
    /// Each account's events in log order.
    pub entries: BTreeMap<String, Vec<CreditsEvent>>,
    /// Events that do not follow from the ones before them (sequence, chain link, totals),
    /// do not decode or sit under another account's key: `partition@offset: reason`. An
    /// account with a problem is not folded further.
    pub problems: Vec<String>,
    /// Records seen.
    pub records: usize,
    broken: BTreeSet<String>,
}

impl LedgerView {
    /// Folds the record at `at` (`partition@offset`), keyed `key`, whose Avro datum hashes
    /// to `datum_sha256`.
    pub fn record(&mut self, at: &str, key: &str, event: CreditsEvent, datum_sha256: String) {
        self.records += 1;
        if key != event.account {
            self.problems.push(format!(
                "{at}: keyed {key:?} but of account {}",
                event.account
            ));
        }
        if self.broken.contains(&event.account) {
            return;
        }
        let account = self.accounts.entry(event.account.clone()).or_default();
        if let Err(reason) = account.apply(&event, datum_sha256) {
            self.problems
                .push(format!("{at}: account {}: {reason}", event.account));
            self.broken.insert(event.account.clone());
            return;
        }
        self.entries
            .entry(event.account.clone())
            .or_default()
            .push(event);
    }

    /// A record that does not decode.
    pub fn undecodable(&mut self, at: &str, reason: &str) {
        self.records += 1;
        self.problems
            .push(format!("{at}: does not decode: {reason}"));
    }

    pub fn supply(&self) -> Supply {
        Supply::of(self.accounts.values())
    }
}

/// The whole ledger's supply: what was issued, what is still available or reserved, and
/// what was burned (left the supply for good).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Supply {
    pub accounts: u64,
    pub issued_micros: i64,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    pub burned_micros: i64,
}

impl Supply {
    /// The sum over `accounts`.
    pub fn of<'a>(accounts: impl IntoIterator<Item = &'a Account>) -> Self {
        accounts.into_iter().fold(Self::default(), |mut s, a| {
            s.accounts += 1;
            s.issued_micros = s.issued_micros.saturating_add(a.totals.issued_micros);
            s.balance_micros = s.balance_micros.saturating_add(a.totals.balance_micros);
            s.reserved_micros = s.reserved_micros.saturating_add(a.totals.reserved_micros);
            s.burned_micros = s.burned_micros.saturating_add(a.totals.burned_micros);
            s
        })
    }

    /// Credits in circulation: issued and not burned.
    pub fn circulating_micros(&self) -> i64 {
        self.issued_micros - self.burned_micros
    }
}

/// The answer to an attempt to move credits between accounts, at every edge (REST,
/// GraphQL, CLI): there is no such operation.
pub const NON_TRANSFERABLE: &str = "TRIAD credits are non-transferable: they are issued to an \
     account for a contribution and can only be burned by that account's workflows";
