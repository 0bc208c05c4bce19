//! The credits ledger's rules (docs/credits.md): given an account's events, a command decides
//! these events and this answer; the invariant holds after every event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use triad_domain::{
    CreditKind, CreditsCommandBody, CreditsEventBody, IssueCredits, LedgerCausation, LedgerOutcome,
    ReserveCredits, SettleReservation,
};
use triad_market::ledger::{Account, Reservation, Supply};

const ACCOUNT: &str = "acct";

fn issue(amount: i64) -> CreditsCommandBody {
    CreditsCommandBody::IssueCredits(IssueCredits {
        amount_micros: amount,
        kind: CreditKind::Grant,
        reason: "test".into(),
    })
}

fn reserve(workflow: &str, amount: i64) -> CreditsCommandBody {
    CreditsCommandBody::ReserveCredits(ReserveCredits {
        workflow_id: workflow.into(),
        amount_micros: amount,
        reply_topic: "triad.workflow-inbox".into(),
    })
}

fn settle(workflow: &str, burned: i64) -> CreditsCommandBody {
    CreditsCommandBody::SettleReservation(SettleReservation {
        workflow_id: workflow.into(),
        burned_micros: burned,
        reply_topic: "triad.workflow-inbox".into(),
    })
}

/// A ledger partition in memory: decides each command at the next offset and folds the
/// events, hashing a stand-in datum (the event's JSON) for the chain.
struct Ledger {
    account: Account,
    offset: i64,
    written: Vec<triad_domain::CreditsEvent>,
}

impl Ledger {
    fn new() -> Self {
        Self {
            account: Account::default(),
            offset: 0,
            written: vec![],
        }
    }

    fn run(&mut self, command_id: &str, command: &CreditsCommandBody) -> Option<LedgerOutcome> {
        let decision = self.account.decide(ACCOUNT, command_id, command).unwrap();
        let causation = LedgerCausation {
            command_id: command_id.into(),
            topic: "triad.credits-inbox".into(),
            partition: 0,
            offset: self.offset,
        };
        self.offset += 1;
        for (i, body) in decision.events.into_iter().enumerate() {
            let event = self
                .account
                .next_event(ACCOUNT, body, &causation, i as u32, 0)
                .unwrap();
            let hash = hex(&Sha256::digest(format!("{event:?}")));
            self.account.apply(&event, hash).unwrap();
            assert!(
                self.account.totals.consistent(),
                "{:?}",
                self.account.totals
            );
            self.written.push(event);
        }
        decision.reply.map(|r| r.body.outcome)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_reservation_within_the_balance_holds_and_settles_burning_at_most_it() {
    let mut l = Ledger::new();
    l.run("c1", &issue(10_000));
    assert_eq!(
        l.run("c2", &reserve("wf-1", 6_000)),
        Some(LedgerOutcome::Reserved)
    );
    assert_eq!(l.account.totals.balance_micros, 4_000);
    assert_eq!(l.account.totals.reserved_micros, 6_000);
    // Burned more than reserved: the reservation is the limit.
    assert_eq!(
        l.run("c3", &settle("wf-1", 9_999)),
        Some(LedgerOutcome::Settled)
    );
    assert_eq!(l.account.totals.burned_micros, 6_000);
    assert_eq!(l.account.totals.balance_micros, 4_000);
    assert_eq!(l.account.totals.reserved_micros, 0);
    let types: Vec<_> = l.written.iter().map(|e| e.body.type_name()).collect();
    assert_eq!(
        types,
        [
            "CreditsIssued",
            "CreditsReserved",
            "CreditsBurned",
            "ReservationReleased"
        ]
    );
}

#[test]
fn a_reservation_over_the_balance_is_refused_with_the_figures() {
    let mut l = Ledger::new();
    let decision = l
        .account
        .decide(ACCOUNT, "c0", &reserve("wf-0", 1))
        .unwrap();
    assert!(
        decision
            .reply
            .unwrap()
            .body
            .reason
            .unwrap()
            .contains("has no credits"),
    );
    l.run("c1", &issue(1_000));
    let decision = l
        .account
        .decide(ACCOUNT, "c2", &reserve("wf-1", 1_001))
        .unwrap();
    let reason = decision
        .reply
        .as_ref()
        .unwrap()
        .body
        .reason
        .clone()
        .unwrap();
    assert!(
        reason.contains("1001") && reason.contains("1000"),
        "{reason}"
    );
    assert_eq!(
        l.run("c2", &reserve("wf-1", 1_001)),
        Some(LedgerOutcome::Refused)
    );
    assert_eq!(l.account.totals.balance_micros, 1_000);
    // The refusal is the answer from now on, even once the balance would cover it.
    l.run("c3", &issue(5_000));
    assert_eq!(
        l.run("c4", &reserve("wf-1", 1_001)),
        Some(LedgerOutcome::Refused)
    );
}

#[test]
fn repeated_commands_write_nothing_and_answer_the_same() {
    let mut l = Ledger::new();
    l.run("c1", &issue(10_000));
    l.run("c1", &issue(10_000)); // the same command id again
    assert_eq!(l.account.totals.issued_micros, 10_000);
    l.run("c2", &reserve("wf-1", 3_000));
    let before = l.written.len();
    assert_eq!(
        l.run("c3", &reserve("wf-1", 3_000)),
        Some(LedgerOutcome::Reserved)
    );
    l.run("c4", &settle("wf-1", 100));
    let after_settle = l.written.len();
    let again = l
        .account
        .decide(ACCOUNT, "c5", &settle("wf-1", 100))
        .unwrap();
    assert!(again.events.is_empty());
    let body = again.reply.unwrap().body;
    assert_eq!((body.burned_micros, body.released_micros), (100, 2_900));
    assert_eq!(after_settle, before + 2);
}

#[test]
fn a_settlement_before_its_reservation_refuses_the_late_reservation() {
    let mut l = Ledger::new();
    l.run("c1", &issue(10_000));
    assert_eq!(
        l.run("c2", &settle("wf-1", 0)),
        Some(LedgerOutcome::Settled)
    );
    assert_eq!(
        l.run("c3", &reserve("wf-1", 3_000)),
        Some(LedgerOutcome::Refused)
    );
    assert_eq!(l.account.totals.reserved_micros, 0);
    assert_eq!(l.account.totals.balance_micros, 10_000);
}

#[test]
fn invalid_commands_name_the_field() {
    let a = Account::default();
    let e = a.decide(ACCOUNT, "c", &issue(0)).unwrap_err();
    assert_eq!(e.field, "amount_micros");
    let e = a.decide(ACCOUNT, "c", &reserve("w", -1)).unwrap_err();
    assert_eq!(e.field, "amount_micros");
    let e = a.decide(ACCOUNT, "c", &settle("w", -1)).unwrap_err();
    assert_eq!(e.field, "burned_micros");
}

#[test]
fn a_settlement_cut_short_owes_its_release_with_its_own_causation() {
    let mut l = Ledger::new();
    l.run("c1", &issue(10_000));
    l.run("c2", &reserve("wf-1", 3_000));
    // Only the first event of the settlement reaches the log.
    let decision = l
        .account
        .decide(ACCOUNT, "c3", &settle("wf-1", 1_000))
        .unwrap();
    let causation = LedgerCausation {
        command_id: "c3".into(),
        topic: "triad.credits-inbox".into(),
        partition: 0,
        offset: 2,
    };
    let burned = l
        .account
        .next_event(ACCOUNT, decision.events[0].clone(), &causation, 0, 0)
        .unwrap();
    l.account.apply(&burned, "ab".repeat(32)).unwrap();
    assert!(matches!(
        l.account.reservations["wf-1"],
        Reservation::Burned { .. }
    ));
    let pending = l.account.pending_releases();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0.amount_micros, 2_000);
    assert_eq!(pending[0].1, causation);
    // The release written as the settlement's second event completes it.
    let release = l
        .account
        .next_event(
            ACCOUNT,
            CreditsEventBody::ReservationReleased(pending[0].0.clone()),
            &pending[0].1,
            1,
            0,
        )
        .unwrap();
    let full = l
        .account
        .decide(ACCOUNT, "c3", &settle("wf-1", 1_000))
        .unwrap();
    assert_eq!(full.events.len(), 1, "a re-run owes only the release");
    l.account.apply(&release, "cd".repeat(32)).unwrap();
    assert!(l.account.pending_releases().is_empty());
    assert_eq!(l.account.totals.balance_micros, 9_000);
}

#[test]
fn a_replay_checks_the_chain_and_the_stated_totals() {
    let mut l = Ledger::new();
    l.run("c1", &issue(10_000));
    l.run("c2", &reserve("wf-1", 3_000));
    let hashes: Vec<String> = l
        .written
        .iter()
        .map(|e| hex(&Sha256::digest(format!("{e:?}"))))
        .collect();
    // Replaying the events as written gives the same account.
    let mut replay = Account::default();
    for (e, h) in l.written.iter().zip(&hashes) {
        replay.apply(e, h.clone()).unwrap();
    }
    assert_eq!(replay, l.account);
    // A tampered total, a broken link or a gap is named.
    let mut tampered = l.written[1].clone();
    tampered.totals.balance_micros += 1;
    let mut a = Account::default();
    a.apply(&l.written[0], hashes[0].clone()).unwrap();
    assert!(
        a.clone()
            .apply(&tampered, String::new())
            .unwrap_err()
            .contains("states")
    );
    let mut unlinked = l.written[1].clone();
    unlinked.previous_sha256 = "00".repeat(32);
    assert!(
        a.clone()
            .apply(&unlinked, String::new())
            .unwrap_err()
            .contains("previous_sha256")
    );
    assert!(
        Account::default()
            .apply(&l.written[1], String::new())
            .unwrap_err()
            .contains("sequence")
    );
}

#[derive(Debug, Clone)]
enum Op {
    Issue(i64),
    Reserve(u8, i64),
    Settle(u8, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..5_000).prop_map(Op::Issue),
        (0u8..12, 0i64..4_000).prop_map(|(w, a)| Op::Reserve(w, a)),
        (0u8..12, 0i64..6_000).prop_map(|(w, b)| Op::Settle(w, b)),
    ]
}

proptest! {
    /// Workflows of one account interleave arbitrarily (the single writer sees them in log
    /// order): the balance never goes negative, nothing burns past its reservation, and
    /// issued = balance + reserved + burned after every event.
    #[test]
    fn interleaved_workflows_never_overspend(ops in proptest::collection::vec(op(), 1..80)) {
        let mut l = Ledger::new();
        let mut reserved_for = std::collections::BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let id = format!("c{i}");
            match op {
                Op::Issue(a) => { l.run(&id, &issue(*a)); }
                Op::Reserve(w, a) => {
                    let outcome = l.run(&id, &reserve(&format!("wf-{w}"), *a));
                    if outcome == Some(LedgerOutcome::Reserved) {
                        reserved_for.entry(*w).or_insert(*a);
                    }
                }
                Op::Settle(w, b) => { l.run(&id, &settle(&format!("wf-{w}"), *b)); }
            }
            let t = l.account.totals;
            prop_assert!(t.consistent(), "{t:?}");
            prop_assert!(t.balance_micros >= 0);
        }
        let mut burned = 0;
        for e in &l.written {
            if let CreditsEventBody::CreditsBurned(b) = &e.body {
                let wf: u8 = b.workflow_id[3..].parse().unwrap();
                prop_assert!(b.amount_micros <= reserved_for[&wf]);
                burned += b.amount_micros;
            }
        }
        prop_assert_eq!(burned, l.account.totals.burned_micros);
        let supply = Supply::of([&l.account]);
        prop_assert_eq!(supply.circulating_micros(), supply.balance_micros + supply.reserved_micros);
    }
}
