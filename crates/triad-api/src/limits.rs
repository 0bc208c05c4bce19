//! Per-tenant limits (issue 8, docs/access.md "Limits"): a request rate per tenant (GCRA with
//! `governor`, keyed by tenant, checked for every authenticated request), and at submission
//! the tenant's active workflows and unfinished tasks, read from the read model. Over a limit
//! the caller gets 429 with `Retry-After` (GraphQL: an error with a stable code), and the
//! other tenants are untouched: each tenant has its own budget.

use std::num::NonZeroU32;
use std::time::Duration;

use async_graphql::ErrorExtensions as _;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use triad_config::LimitsConfig;

use crate::Problem;

/// A tenant's active workflows and their unfinished tasks. The read model trails the log by a
/// projection batch, so submissions within that window are not counted yet: the request
/// rate bounds how far a burst can overshoot.
const ACTIVE: &str = "SELECT count(*), \
    COALESCE(sum(task_count - tasks_completed - tasks_failed - tasks_skipped), 0)::bigint \
    FROM workflows WHERE tenant = $1 AND status IN ('ACCEPTED', 'RUNNING')";

/// The limits of this API node.
pub struct Limits {
    rate: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    max_active_workflows: u32,
    max_tasks_in_flight: u32,
    /// The longest a refusal is held ([`Limits::hold`]).
    hold_at_most: Duration,
    /// Permits for refusals held now.
    holds: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rate", &self.rate.is_some())
            .field("max_active_workflows", &self.max_active_workflows)
            .field("max_tasks_in_flight", &self.max_tasks_in_flight)
            .finish()
    }
}

/// Which limit a request ran into.
#[derive(Debug, Clone, PartialEq)]
pub enum Exceeded {
    Rate {
        retry_after: Duration,
    },
    Workflows {
        limit: u32,
    },
    Tasks {
        limit: u32,
        in_flight: i64,
        asked: usize,
    },
}

impl Exceeded {
    /// Whole seconds for `Retry-After`.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            // Rounded up: 0 only when a token is due now (after a hold).
            Self::Rate { retry_after } => {
                u64::try_from(retry_after.as_nanos().div_ceil(1_000_000_000)).unwrap_or(u64::MAX)
            }
            // Active work drains as tasks finish; a second is a fair first wait.
            Self::Workflows { .. } | Self::Tasks { .. } => 1,
        }
    }

    /// The stable code (REST problem `code`, lower case; GraphQL `extensions.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rate { .. } => "rate_limited",
            Self::Workflows { .. } => "too_many_workflows",
            Self::Tasks { .. } => "too_many_tasks",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Rate { .. } => {
                "your tenant is over its request rate (api.limits.requests_per_second)".to_owned()
            }
            Self::Workflows { limit } => format!(
                "your tenant has {limit} workflows accepted or running (api.limits.max_active_workflows); submit again when some finish"
            ),
            Self::Tasks {
                limit,
                in_flight,
                asked,
            } => format!(
                "your tenant has {in_flight} unfinished tasks and this workflow adds {asked}, above {limit} (api.limits.max_tasks_in_flight)"
            ),
        }
    }

    /// The REST answer: 429 problem+json with `Retry-After`.
    pub fn problem(&self) -> Problem {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            self.code(),
            "too many requests",
        )
        .detail(self.message());
        p.retry_after_s = Some(self.retry_after_s());
        p
    }

    /// The GraphQL-over-HTTP answer: 429 with `Retry-After` and a GraphQL error whose
    /// `extensions.code` is stable (`RATE_LIMITED`, …).
    pub fn graphql_response(&self) -> Response {
        let body = serde_json::json!({
            "data": null,
            "errors": [self.graphql_json()],
        });
        (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::RETRY_AFTER, self.retry_after_s().to_string()),
                (header::CONTENT_TYPE, "application/json".to_owned()),
            ],
            body.to_string(),
        )
            .into_response()
    }

    fn graphql_json(&self) -> serde_json::Value {
        serde_json::json!({
            "message": self.message(),
            "extensions": {
                "code": self.code().to_ascii_uppercase(),
                "retryAfterSeconds": self.retry_after_s(),
            },
        })
    }

    /// The same as a resolver's error.
    pub fn graphql_error(&self) -> async_graphql::Error {
        let (code, retry) = (self.code().to_ascii_uppercase(), self.retry_after_s());
        async_graphql::Error::new(self.message()).extend_with(move |_, e| {
            e.set("code", code.clone());
            e.set("retryAfterSeconds", retry);
        })
    }
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Self {
        let rate = NonZeroU32::new(config.requests_per_second).map(|rps| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(rps);
            RateLimiter::keyed(Quota::per_second(rps).allow_burst(burst))
        });
        Self {
            rate,
            clock: DefaultClock::default(),
            max_active_workflows: config.max_active_workflows,
            max_tasks_in_flight: config.max_tasks_in_flight,
            hold_at_most: Duration::from_millis(u64::from(config.refusal_hold_ms)),
            holds: tokio::sync::Semaphore::new(config.max_held_refusals as usize),
        }
    }

    /// Holds a rate refusal for half to all of `refusal_hold_ms` (while fewer than
    /// `max_held_refusals` are held) and returns it with the wait left after the hold.
    /// Answering a flood at once invites a closed-loop client to send its next request at
    /// once: on two cores 32 such connections made 11-19 k refusals a second and slowed every
    /// tenant's requests 4-5× (docs/benchmarks.md). Held, each connection sends about one
    /// request per hold, and a hold costs a timer, not CPU. The hold is random so that the
    /// flood's connections do not come back together and land their admitted requests as
    /// one burst. A client that honours `Retry-After` loses nothing.
    pub async fn hold(&self, exceeded: Exceeded) -> Exceeded {
        let Exceeded::Rate { retry_after } = exceeded else {
            return exceeded;
        };
        if self.hold_at_most.is_zero() {
            return exceeded;
        }
        let Ok(_permit) = self.holds.try_acquire() else {
            return exceeded;
        };
        let held = self.hold_at_most.mul_f64(rand::random_range(0.5..=1.0));
        tokio::time::sleep(held).await;
        Exceeded::Rate {
            retry_after: retry_after.saturating_sub(held),
        }
    }

    /// Forgets the tenants whose bucket is full again; how many are still tracked.
    pub fn sweep_idle(&self) -> usize {
        let Some(rate) = &self.rate else {
            return 0;
        };
        rate.retain_recent();
        rate.shrink_to_fit();
        rate.len()
    }

    /// Takes one request from `tenant`'s budget.
    pub fn check_rate(&self, tenant: &str) -> Result<(), Exceeded> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        rate.check_key(&tenant.to_owned())
            .map_err(|not_until| Exceeded::Rate {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Whether `tenant` may start a workflow of `tasks` tasks now.
    pub async fn check_submission(
        &self,
        pool: &deadpool_postgres::Pool,
        tenant: &str,
        tasks: usize,
    ) -> crate::Result<Result<(), Exceeded>> {
        if self.max_active_workflows == 0 && self.max_tasks_in_flight == 0 {
            return Ok(Ok(()));
        }
        let client = pool
            .get()
            .await
            .map_err(|e| crate::Error::Unavailable(e.to_string()))?;
        let row = client.query_one(ACTIVE, &[&tenant]).await?;
        let (active, in_flight): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(decide(
            self.max_active_workflows,
            self.max_tasks_in_flight,
            active,
            in_flight,
            tasks,
        ))
    }
}

/// Every minute until `cancel`, forgets the rate state of tenants whose bucket is full again
/// (they would start from a full bucket anyway), so the keyed state holds only the tenants
/// active lately rather than every tenant ever seen.
pub async fn sweep(
    state: std::sync::Arc<crate::AppState>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {
                let tracked = state.limits.sweep_idle();
                tracing::debug!(tenants = tracked, "rate buckets swept");
            }
        }
    }
}

/// The submission rule, apart from its query.
fn decide(
    max_workflows: u32,
    max_tasks: u32,
    active: i64,
    in_flight: i64,
    asked: usize,
) -> Result<(), Exceeded> {
    if max_workflows > 0 && active >= i64::from(max_workflows) {
        return Err(Exceeded::Workflows {
            limit: max_workflows,
        });
    }
    let asked_i = i64::try_from(asked).unwrap_or(i64::MAX);
    if max_tasks > 0 && in_flight.saturating_add(asked_i) > i64::from(max_tasks) {
        return Err(Exceeded::Tasks {
            limit: max_tasks,
            in_flight,
            asked,
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_has_its_own_budget() {
        let limits = Limits::new(&LimitsConfig {
            requests_per_second: 1,
            burst: 3,
            ..LimitsConfig::default()
        });
        for _ in 0..3 {
            limits.check_rate("acme").unwrap();
        }
        let Err(Exceeded::Rate { retry_after }) = limits.check_rate("acme") else {
            panic!("the fourth request within the burst passed")
        };
        assert!(retry_after <= Duration::from_secs(1));
        // Another tenant is untouched by acme's flood.
        limits.check_rate("beta").unwrap();
        assert_eq!(limits.sweep_idle(), 2, "both buckets are still refilling");
        let off = Limits::new(&LimitsConfig {
            requests_per_second: 0,
            ..LimitsConfig::default()
        });
        for _ in 0..10_000 {
            off.check_rate("acme").unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_held_and_says_what_wait_is_left() {
        let limits = Limits::new(&LimitsConfig {
            requests_per_second: 2,
            burst: 1,
            refusal_hold_ms: 200,
            max_held_refusals: 1,
            ..LimitsConfig::default()
        });
        limits.check_rate("acme").unwrap();
        let exceeded = limits.check_rate("acme").unwrap_err();
        let Exceeded::Rate { retry_after } = exceeded else {
            panic!("{exceeded:?}")
        };
        // The next token is ~500 ms away: held 100-200 ms, and the rest is left.
        let start = tokio::time::Instant::now();
        let after = limits.hold(exceeded.clone()).await;
        let held = start.elapsed();
        assert!(
            (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&held),
            "{held:?}"
        );
        let Exceeded::Rate { retry_after: left } = after else {
            panic!("{after:?}")
        };
        // What is left is what was not held (the timer rounds the hold up to a millisecond).
        let gap = (retry_after - left).abs_diff(held);
        assert!(gap <= Duration::from_millis(1), "{gap:?}");
        assert_eq!(after.retry_after_s(), 1);
        // With the one permit taken, a second refusal is answered at once.
        let first = limits.hold(exceeded.clone());
        let second = async {
            let start = tokio::time::Instant::now();
            limits.hold(exceeded.clone()).await;
            start.elapsed()
        };
        let (_, waited) = tokio::join!(first, second);
        assert_eq!(waited, Duration::ZERO);
        // Other limits are never held.
        let start = tokio::time::Instant::now();
        limits.hold(Exceeded::Workflows { limit: 1 }).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A token due now says so.
        let now = Exceeded::Rate {
            retry_after: Duration::ZERO,
        };
        assert_eq!(now.retry_after_s(), 0);
        let almost = Exceeded::Rate {
            retry_after: Duration::from_micros(300),
        };
        assert_eq!(almost.retry_after_s(), 1, "any wait rounds up to a second");
    }

    #[test]
    fn submissions_respect_active_workflows_and_tasks() {
        assert!(decide(2, 10, 1, 5, 5).is_ok());
        assert_eq!(
            decide(2, 10, 2, 0, 1),
            Err(Exceeded::Workflows { limit: 2 })
        );
        assert!(matches!(
            decide(2, 10, 1, 6, 5),
            Err(Exceeded::Tasks { limit: 10, .. })
        ));
        assert!(
            decide(0, 0, 1_000, 1_000_000, 5).is_ok(),
            "0 turns limits off"
        );
        let e = Exceeded::Rate {
            retry_after: Duration::from_millis(300),
        };
        assert_eq!((e.retry_after_s(), e.code()), (1, "rate_limited"));
    }
}
