//! The market at the API: each model's health and breaker state as the executors report them
//! (`triad.executor-status`, followed from its start into memory), and a workflow's auctions
//! from the read model's timeline (`BidPlaced`, `AuctionClosed`).

use std::collections::BTreeMap;

use async_graphql::SimpleObject;
use rdkafka::message::Message;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use triad_domain::{ExecutorStatus, StatusBody};

use crate::long::Long;
use crate::{AppState, Result};

/// What one executor last reported about one model.
#[derive(Debug, Clone, SimpleObject)]
pub struct ModelHealth {
    pub model_id: String,
    pub executor_id: String,
    pub zone: String,
    /// Null until the executor reported a health change (a model starts healthy).
    pub healthy: Option<bool>,
    pub health_reason: Option<String>,
    /// Probes in a row that agreed on the last change.
    pub probes: Option<i32>,
    /// CLOSED, OPEN or HALF_OPEN after the last breaker transition; null before any.
    pub breaker: Option<String>,
    pub breaker_reason: Option<String>,
    /// When the executor reported the latest of these, µs since the epoch.
    pub updated_at: Long,
}

/// The executors' reports, by (model, executor).
#[derive(Debug, Default)]
pub struct HealthView {
    models: RwLock<BTreeMap<(String, String), ModelHealth>>,
}

impl HealthView {
    /// Every (model, executor) report, or those of `model`.
    pub async fn list(&self, model: Option<&str>) -> Vec<ModelHealth> {
        self.models
            .read()
            .await
            .values()
            .filter(|h| model.is_none_or(|m| h.model_id == m))
            .cloned()
            .collect()
    }

    async fn apply(&self, status: &ExecutorStatus) {
        let model_id = match &status.body {
            StatusBody::HealthTransition(t) => &t.model_id,
            StatusBody::BreakerTransition(t) => &t.model_id,
            StatusBody::Heartbeat(_) | StatusBody::AdapterInstall(_) => return,
        };
        let mut models = self.models.write().await;
        let entry = models
            .entry((model_id.clone(), status.executor_id.clone()))
            .or_insert_with(|| ModelHealth {
                model_id: model_id.clone(),
                executor_id: status.executor_id.clone(),
                zone: status.zone.clone(),
                healthy: None,
                health_reason: None,
                probes: None,
                breaker: None,
                breaker_reason: None,
                updated_at: Long(status.occurred_at),
            });
        match &status.body {
            StatusBody::HealthTransition(t) => {
                entry.healthy = Some(t.healthy);
                entry.health_reason = Some(t.reason.clone());
                entry.probes = Some(t.probes);
            }
            StatusBody::BreakerTransition(t) => {
                entry.breaker = Some(breaker_name(t.to_state).to_owned());
                entry.breaker_reason = Some(t.reason.clone());
            }
            StatusBody::Heartbeat(_) | StatusBody::AdapterInstall(_) => {}
        }
        entry.updated_at = Long(status.occurred_at);
    }
}

fn breaker_name(state: triad_domain::BreakerState) -> &'static str {
    match state {
        triad_domain::BreakerState::Closed => "CLOSED",
        triad_domain::BreakerState::Open => "OPEN",
        triad_domain::BreakerState::HalfOpen => "HALF_OPEN",
    }
}

/// Follows `triad.executor-status` from its start into `state.health` until `cancel`.
pub async fn follow_status(state: std::sync::Arc<AppState>, cancel: CancellationToken) {
    let topic = state.names.executor_status.clone();
    let each = |m: rdkafka::message::OwnedMessage| {
        let state = state.clone();
        async move {
            match state.codec.decode::<ExecutorStatus>(m.payload()).await {
                Ok(status) => state.health.apply(&status).await,
                Err(error) => {
                    tracing::debug!(%error, "an executor status record does not decode; skipped");
                }
            }
        }
    };
    crate::follow_topic(&state.kafka, &topic, 1, cancel, each).await;
}

/// One bid of an auction, as `BidPlaced` recorded it.
#[derive(Debug, Clone, SimpleObject)]
pub struct Bid {
    pub model_id: String,
    pub price_micros: Option<Long>,
    pub latency_ms: Option<Long>,
    pub confidence: Option<f64>,
    /// The bidder's standing when it bid (1.0 new; halves on a broken promise).
    pub standing: f64,
    /// WON, ACCEPTED, MALFORMED, LATE, DECLINED, OVER_SLA or BELOW_FLOOR.
    pub status: String,
    pub reason: String,
}

/// An attempt's auction: its bids and the award.
#[derive(Debug, Clone, SimpleObject)]
pub struct Auction {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub winner: Option<String>,
    pub price_micros: Option<Long>,
    pub reason: String,
    pub bids: Vec<Bid>,
}

const AUCTION_EVENTS: &str = "SELECT event_type, data::text FROM workflow_events \
    WHERE workflow_id = $1 AND event_type IN ('BidPlaced', 'AuctionClosed') ORDER BY sequence";

/// The auctions of `workflow`, in the order they closed.
pub async fn auctions(pool: &deadpool_postgres::Pool, workflow: &str) -> Result<Vec<Auction>> {
    let client = crate::read::client(pool).await?;
    let rows = client.query(AUCTION_EVENTS, &[&workflow]).await?;
    let mut bids: BTreeMap<String, Vec<Bid>> = BTreeMap::new();
    let mut out = Vec::new();
    for row in &rows {
        let kind: String = row.try_get(0)?;
        let data: String = row.try_get(1)?;
        match kind.as_str() {
            "BidPlaced" => {
                let Ok(b) = serde_json::from_str::<triad_domain::BidPlaced>(&data) else {
                    continue;
                };
                bids.entry(b.attempt_id).or_default().push(Bid {
                    model_id: b.bid.model_id,
                    price_micros: b.bid.price_micros.map(Long),
                    latency_ms: b.bid.latency_ms.map(Long),
                    confidence: b.bid.confidence,
                    standing: b.bid.standing,
                    status: b.bid.status,
                    reason: b.bid.reason,
                });
            }
            _ => {
                let Ok(c) = serde_json::from_str::<triad_domain::AuctionClosed>(&data) else {
                    continue;
                };
                out.push(Auction {
                    bids: bids.remove(&c.attempt_id).unwrap_or_default(),
                    task_id: c.task_id,
                    attempt: c.attempt,
                    attempt_id: c.attempt_id,
                    winner: c.winner,
                    price_micros: c.price_micros.map(Long),
                    reason: c.reason,
                });
            }
        }
    }
    Ok(out)
}
