//! The bidding market (docs/market.md): for a task that asks for an auction, the eligible
//! models bid (price, latency estimate, confidence) before a short deadline, and the rule
//! below picks the winner. Every bid — accepted, late, malformed, declined or not qualifying —
//! is recorded with its status, so an award can be audited and replayed from the log.
//!
//! ## The rule
//! A bid *qualifies* when it is well formed (price ≥ 0, latency > 0, confidence a number in
//! [0, 1]), arrived before the deadline, promises a latency within the task's SLA (its
//! timeout) and a confidence at or above the floor. Among qualifying bids the lowest
//! *effective price* wins: `price / standing`, where standing ∈ [0.1, 1] is the bidder's
//! record of honouring its awards (1 for a newcomer). Ties go to the lower latency, then to
//! the lower model id, so the award is deterministic.
//!
//! ## Standing
//! An award is *honoured* when the winner's call succeeds within twice its latency estimate
//! (at least 100 ms of slack). Each dishonoured award halves the bidder's standing (floor
//! 0.1); each honoured one adds 0.1 (cap 1). A bidder that promised fast and cheap and did
//! not deliver has to bid ever lower to win again.

use std::collections::BTreeMap;

/// What a bidder offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offer {
    pub price_micros: i64,
    pub latency_ms: u64,
    pub confidence: f64,
}

/// What came back from one bidder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Received {
    Bid(Offer),
    /// The model does not take part in auctions.
    Declined,
    /// No answer before the deadline.
    Late,
}

/// A bid's fate, as recorded in the `BidPlaced` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Won,
    Malformed,
    Late,
    Declined,
    OverSla,
    BelowFloor,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Won => "WON",
            Self::Malformed => "MALFORMED",
            Self::Late => "LATE",
            Self::Declined => "DECLINED",
            Self::OverSla => "OVER_SLA",
            Self::BelowFloor => "BELOW_FLOOR",
        }
    }
}

/// One recorded bid.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub model_id: String,
    pub offer: Option<Offer>,
    pub standing: f64,
    pub status: Status,
    pub reason: String,
}

/// The auction's rules for one task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// The task's timeout: a bid promising more does not qualify.
    pub sla_ms: u64,
    pub confidence_floor: f64,
}

/// The closed auction: every bid in bidder order, and the winner if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub bids: Vec<Recorded>,
    pub winner: Option<String>,
    pub reason: String,
}

impl Outcome {
    pub fn winning_offer(&self) -> Option<Offer> {
        self.bids
            .iter()
            .find(|b| b.status == Status::Won)
            .and_then(|b| b.offer)
    }
}

/// Each bidder's standing (module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    scores: BTreeMap<String, f64>,
}

pub const MIN_STANDING: f64 = 0.1;

impl Standing {
    pub fn of(&self, model: &str) -> f64 {
        self.scores.get(model).copied().unwrap_or(1.0)
    }

    /// Records how the winner of an award delivered: whether its call succeeded and how long
    /// it took against its estimate. Returns whether the award was honoured.
    pub fn settle(&mut self, model: &str, offer: Offer, ok: bool, latency_ms: u64) -> bool {
        let allowed = offer
            .latency_ms
            .saturating_mul(2)
            .max(offer.latency_ms + 100);
        let honoured = ok && latency_ms <= allowed;
        let s = self.of(model);
        let next = if honoured {
            (s + 0.1).min(1.0)
        } else {
            (s * 0.5).max(MIN_STANDING)
        };
        self.scores.insert(model.to_owned(), next);
        honoured
    }
}

fn malformed(o: &Offer) -> Option<String> {
    if o.price_micros < 0 {
        return Some(format!("negative price {}", o.price_micros));
    }
    if o.latency_ms == 0 {
        return Some("a latency estimate of 0 ms".to_owned());
    }
    if !o.confidence.is_finite() || !(0.0..=1.0).contains(&o.confidence) {
        return Some(format!("confidence {} outside [0, 1]", o.confidence));
    }
    None
}

/// Closes an auction over `received` (bidder order is kept in the record) by the rule of the
/// module docs.
pub fn close(received: Vec<(String, Received)>, rules: Rules, standing: &Standing) -> Outcome {
    let mut bids: Vec<Recorded> = received
        .into_iter()
        .map(|(model_id, r)| {
            let standing = standing.of(&model_id);
            let (offer, status, reason) = match r {
                Received::Declined => (None, Status::Declined, "no bid".to_owned()),
                Received::Late => (None, Status::Late, "no bid before the deadline".to_owned()),
                Received::Bid(o) => match malformed(&o) {
                    Some(why) => (Some(o), Status::Malformed, why),
                    None if o.latency_ms > rules.sla_ms => (
                        Some(o),
                        Status::OverSla,
                        format!(
                            "promises {} ms, over the task's {} ms",
                            o.latency_ms, rules.sla_ms
                        ),
                    ),
                    None if o.confidence < rules.confidence_floor => (
                        Some(o),
                        Status::BelowFloor,
                        format!(
                            "confidence {} below the floor {}",
                            o.confidence, rules.confidence_floor
                        ),
                    ),
                    None => (
                        Some(o),
                        Status::Accepted,
                        format!(
                            "effective price {:.1} (price / standing {standing:.2})",
                            o.price_micros as f64 / standing
                        ),
                    ),
                },
            };
            Recorded {
                model_id,
                offer,
                standing,
                status,
                reason,
            }
        })
        .collect();
    let best = bids
        .iter()
        .enumerate()
        .filter(|(_, b)| b.status == Status::Accepted)
        .filter_map(|(i, b)| b.offer.map(|o| (i, b, o)))
        .min_by(|(_, a, x), (_, b, y)| {
            let ea = x.price_micros as f64 / a.standing;
            let eb = y.price_micros as f64 / b.standing;
            ea.total_cmp(&eb)
                .then(x.latency_ms.cmp(&y.latency_ms))
                .then(a.model_id.cmp(&b.model_id))
        })
        .map(|(i, _, _)| i);
    match best {
        Some(i) => {
            bids[i].status = Status::Won;
            let winner = bids[i].model_id.clone();
            let qualifying = bids
                .iter()
                .filter(|b| matches!(b.status, Status::Accepted | Status::Won))
                .count();
            Outcome {
                reason: format!(
                    "lowest effective price among {qualifying} qualifying bid{}",
                    if qualifying == 1 { "" } else { "s" }
                ),
                winner: Some(winner),
                bids,
            }
        }
        None => Outcome {
            reason: "no qualifying bid; routed by score".to_owned(),
            winner: None,
            bids,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(price: i64, latency: u64, confidence: f64) -> Received {
        Received::Bid(Offer {
            price_micros: price,
            latency_ms: latency,
            confidence,
        })
    }

    const RULES: Rules = Rules {
        sla_ms: 1_000,
        confidence_floor: 0.5,
    };

    fn statuses(o: &Outcome) -> Vec<(&str, &str)> {
        o.bids
            .iter()
            .map(|b| (b.model_id.as_str(), b.status.as_str()))
            .collect()
    }

    #[test]
    fn the_cheapest_qualifying_bid_wins_and_every_bid_is_recorded() {
        let o = close(
            vec![
                ("a".into(), bid(500, 100, 0.9)),
                ("b".into(), bid(300, 100, 0.9)),
                ("c".into(), bid(100, 5_000, 0.9)),
                ("d".into(), bid(50, 100, 0.2)),
                ("e".into(), bid(-1, 100, 0.9)),
                ("f".into(), bid(10, 100, f64::NAN)),
                ("g".into(), Received::Late),
                ("h".into(), Received::Declined),
            ],
            RULES,
            &Standing::default(),
        );
        assert_eq!(o.winner.as_deref(), Some("b"));
        assert_eq!(
            statuses(&o),
            [
                ("a", "ACCEPTED"),
                ("b", "WON"),
                ("c", "OVER_SLA"),
                ("d", "BELOW_FLOOR"),
                ("e", "MALFORMED"),
                ("f", "MALFORMED"),
                ("g", "LATE"),
                ("h", "DECLINED")
            ]
        );
        assert_eq!(o.reason, "lowest effective price among 2 qualifying bids");
        assert_eq!(o.winning_offer().unwrap().price_micros, 300);
    }

    #[test]
    fn ties_break_on_latency_then_id_and_no_bid_means_no_winner() {
        let o = close(
            vec![
                ("z".into(), bid(100, 50, 0.9)),
                ("y".into(), bid(100, 80, 0.9)),
                ("x".into(), bid(100, 50, 0.9)),
            ],
            RULES,
            &Standing::default(),
        );
        assert_eq!(o.winner.as_deref(), Some("x"));
        let none = close(
            vec![("a".into(), Received::Late)],
            RULES,
            &Standing::default(),
        );
        assert_eq!(none.winner, None);
        assert_eq!(none.reason, "no qualifying bid; routed by score");
    }

    #[test]
    fn dishonoured_awards_lower_standing_until_a_cheaper_rival_wins() {
        let mut standing = Standing::default();
        let offer = Offer {
            price_micros: 100,
            latency_ms: 100,
            confidence: 0.9,
        };
        // Within twice the estimate (and 100 ms slack): honoured, standing stays at 1.
        assert!(standing.settle("fast", offer, true, 200));
        assert_eq!(standing.of("fast"), 1.0);
        // Four times the estimate, then a failure: halved twice.
        assert!(!standing.settle("fast", offer, true, 400));
        assert!(!standing.settle("fast", offer, false, 10));
        assert!((standing.of("fast") - 0.25).abs() < 1e-12);
        // Bidding 100 against a rival's 300 now loses: 100 / 0.25 = 400 > 300.
        let o = close(
            vec![
                ("fast".into(), bid(100, 100, 0.9)),
                ("steady".into(), bid(300, 100, 0.9)),
            ],
            RULES,
            &standing,
        );
        assert_eq!(o.winner.as_deref(), Some("steady"));
        // The floor holds.
        for _ in 0..10 {
            standing.settle("fast", offer, false, 0);
        }
        assert_eq!(standing.of("fast"), MIN_STANDING);
        // Honoured awards win it back, 0.1 at a time.
        standing.settle("fast", offer, true, 50);
        assert!((standing.of("fast") - 0.2).abs() < 1e-12);
    }
}
