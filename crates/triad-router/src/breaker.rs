//! A per-model circuit breaker: closed until `failures` failures fall within `window`, then
//! open (calls rejected) for `cooldown`, then half-open: one probe call goes through; its
//! success closes the breaker, its failure opens it again. Every state change is returned
//! as a [`Transition`] so the executor can publish it as an event and count it.

use std::collections::VecDeque;
use std::time::Duration;

use triad_domain::BreakerState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: String,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    Call,
    /// The half-open probe: report its outcome like any call.
    Probe(Option<Transition>),
    Rejected,
}

/// `now` is any monotonic clock reading (e.g. time since the executor started).
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    failures: VecDeque<Duration>,
    opened_at: Duration,
    probing: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            failures: VecDeque::new(),
            opened_at: Duration::ZERO,
            probing: false,
        }
    }

    /// The state as the router should see it at `now` (an open breaker whose cool-down
    /// passed is half-open: it will admit a probe).
    pub fn state(&self, now: Duration) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.opened_at + self.config.cooldown => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    pub fn permit(&mut self, now: Duration) -> Permit {
        match self.state {
            BreakerState::Closed => Permit::Call,
            BreakerState::Open if now >= self.opened_at + self.config.cooldown => {
                self.state = BreakerState::HalfOpen;
                self.probing = true;
                Permit::Probe(Some(Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                    reason: format!("cool-down of {:?} passed; probing", self.config.cooldown),
                }))
            }
            BreakerState::Open => Permit::Rejected,
            BreakerState::HalfOpen if !self.probing => {
                self.probing = true;
                Permit::Probe(None)
            }
            BreakerState::HalfOpen => Permit::Rejected,
        }
    }

    pub fn on_success(&mut self, _now: Duration) -> Option<Transition> {
        self.probing = false;
        self.failures.clear();
        match self.state {
            BreakerState::Closed => None,
            from => {
                self.state = BreakerState::Closed;
                Some(Transition {
                    from,
                    to: BreakerState::Closed,
                    reason: "probe succeeded".to_owned(),
                })
            }
        }
    }

    pub fn on_failure(&mut self, now: Duration) -> Option<Transition> {
        self.probing = false;
        match self.state {
            BreakerState::HalfOpen => {
                self.state = BreakerState::Open;
                self.opened_at = now;
                Some(Transition {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Open,
                    reason: "probe failed".to_owned(),
                })
            }
            BreakerState::Open => None,
            BreakerState::Closed => {
                self.failures.push_back(now);
                while self
                    .failures
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) > self.config.window)
                {
                    self.failures.pop_front();
                }
                if self.failures.len() >= self.config.failures as usize {
                    self.state = BreakerState::Open;
                    self.opened_at = now;
                    self.failures.clear();
                    return Some(Transition {
                        from: BreakerState::Closed,
                        to: BreakerState::Open,
                        reason: format!(
                            "{} failures within {:?}",
                            self.config.failures, self.config.window
                        ),
                    });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failures: 3,
            window: 60 * S,
            cooldown: 30 * S,
        })
    }

    #[test]
    fn opens_after_three_failures_within_the_window() {
        let mut b = breaker();
        assert_eq!(b.on_failure(Duration::ZERO), None);
        assert_eq!(b.on_failure(10 * S), None);
        let t = b.on_failure(20 * S).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(b.permit(21 * S), Permit::Rejected);
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_open_it() {
        let mut b = breaker();
        b.on_failure(Duration::ZERO);
        b.on_failure(50 * S);
        assert_eq!(b.on_failure(70 * S), None); // the first fell out of the window
        assert_eq!(b.state(70 * S), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_one_probe_whose_outcome_decides() {
        let mut b = breaker();
        for t in 0..3 {
            b.on_failure(t * S);
        }
        // Opened at 2 s: half-open from 32 s.
        assert_eq!(b.state(31 * S), BreakerState::Open);
        assert_eq!(b.state(32 * S), BreakerState::HalfOpen);
        let Permit::Probe(Some(t)) = b.permit(32 * S) else {
            panic!("expected a probe")
        };
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
        assert_eq!(
            b.permit(32 * S),
            Permit::Rejected,
            "only one probe at a time"
        );
        let t = b.on_failure(33 * S).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(b.permit(40 * S), Permit::Rejected);
        assert!(matches!(b.permit(64 * S), Permit::Probe(Some(_))));
        let t = b.on_success(65 * S).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        assert_eq!(b.permit(66 * S), Permit::Call);
    }
}
