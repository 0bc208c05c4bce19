//! The executor loop (crate docs).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use triad_sovereignty::{Binding, Expect, Role};

use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::{ExecutorConfig, KafkaConfig};
use triad_domain::{
    BreakerState, BreakerTransition, CommandMetadata, ExecutorStatus, Heartbeat, InboxBody,
    InboxRecord, ModelCall, ModelRegistration, RoutingDecision, StatusBody, TaskOutcome,
    TaskRequest, TaskResultReported,
};
use triad_kafka::consume::{Group, Outcome};
use triad_kafka::dlq::DeadLetterWriter;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_market::SpecialtyClassifier;
use triad_models::{Catalogue, Health, ModelError, ModelRequest};
use triad_router::{
    Breaker, BreakerConfig, CallWindow, ModelInfo, Needs, Permit, Transition, backoff,
    estimate_tokens, rank,
};

use crate::Result;
use crate::control::{self, Cancellations};
use crate::registry::{self, Verdict};

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    pub zone: String,
    /// Distinguishes executors of one zone (static group membership, status records).
    pub instance: u32,
    pub config: ExecutorConfig,
    /// The claim check: outputs above `inline_max_bytes` go to this store and travel by
    /// reference; inputs by reference are fetched from it. None: such payloads fail the task.
    pub blobs: Option<Arc<dyn triad_store::BlobStore>>,
    pub inline_max_bytes: usize,
    /// Counters shared by the executors of this process (served on `metrics.listen`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This node's sovereignty kernel when payloads are sealed (`sovereignty.seal`): prompts
    /// and inputs are opened here, inside the zone, and outputs sealed before they leave.
    pub kernel: Option<Arc<triad_kernel::NodeKernel>>,
    /// The policy's host allowlist per zone (`policy.hosts`), checked before every call.
    pub zone_hosts: Arc<std::collections::BTreeMap<String, Vec<String>>>,
    /// This node's signing key: each success carries an execution record signed with it.
    pub signer: Option<Arc<dyn triad_sovereignty::signing::Signer>>,
}

/// How long start-up waits for the model registry to be read before serving.
const REGISTRY_CATCH_UP: Duration = Duration::from_secs(30);

/// How many finished attempt ids an executor remembers to skip re-deliveries.
const RECENT_ATTEMPTS: usize = 100_000;

/// Attempts running or recently finished here.
#[derive(Debug, Default)]
struct Attempts {
    running: HashSet<String>,
    recent: HashSet<String>,
    order: VecDeque<String>,
}

impl Attempts {
    /// Claims `id`; false when it is running or finished here already.
    fn claim(&mut self, id: &str) -> bool {
        if self.running.contains(id) || self.recent.contains(id) {
            return false;
        }
        self.running.insert(id.to_owned());
        true
    }

    fn finish(&mut self, id: &str) {
        self.running.remove(id);
        self.recent.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        while self.order.len() > RECENT_ATTEMPTS {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Forgets a claim whose work did not finish (shutdown), so a re-delivery runs it.
    fn abandon(&mut self, id: &str) {
        self.running.remove(id);
    }
}

struct Executor {
    options: Options,
    names: Names,
    executor_id: String,
    codec: Arc<Codec>,
    producer: Producer,
    catalogue: Catalogue,
    /// Remote models registered on `triad.models`, next to the configured catalogue.
    remote: crate::remote::RemoteModels,
    /// The policy's zones, for re-checking registrations.
    policy_zones: Vec<String>,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// Each model's probes (`executor.health_every_ms`): the router skips unhealthy ones.
    health: Mutex<HashMap<String, triad_router::ProbeTracker>>,
    /// Each model's recent calls here: measured latency and reliability for the router.
    stats: Mutex<HashMap<String, CallWindow>>,
    /// Each bidder's record of honouring its auction awards here.
    standing: Mutex<triad_market::auction::Standing>,
    attempts: Mutex<Attempts>,
    cancellations: Arc<Cancellations>,
    started: Instant,
    in_flight: std::sync::atomic::AtomicI32,
    stop: CancellationToken,
}

/// The outcome of trying the ranked models for one attempt.
struct Tried {
    outcome: std::result::Result<(String, triad_models::ModelResponse, i64), String>,
    retryable: bool,
    calls: Vec<ModelCall>,
    score: f64,
    reason: String,
    alternatives: Vec<String>,
    auction: Option<triad_market::auction::Outcome>,
}

/// The auction as the inbox records it.
fn auction_record(o: &triad_market::auction::Outcome) -> triad_domain::Auction {
    triad_domain::Auction {
        winner: o.winner.clone(),
        reason: o.reason.clone(),
        bids: o
            .bids
            .iter()
            .map(|b| triad_domain::AuctionBid {
                model_id: b.model_id.clone(),
                price_micros: b.offer.map(|o| o.price_micros),
                latency_ms: b
                    .offer
                    .map(|o| i64::try_from(o.latency_ms).unwrap_or(i64::MAX)),
                confidence: b.offer.map(|o| o.confidence),
                standing: b.standing,
                status: b.status.as_str().to_owned(),
                reason: b.reason.clone(),
            })
            .collect(),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Executor {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn publish_transition(&self, model: &str, t: Transition) {
        tracing::warn!(model, from = ?t.from, to = ?t.to, reason = %t.reason, "circuit breaker transition");
        self.options
            .metrics
            .breaker_transition(&self.options.zone, model, t.from, t.to);
        let status = ExecutorStatus {
            zone: self.options.zone.clone(),
            executor_id: self.executor_id.clone(),
            occurred_at: triad_kafka::now_micros(),
            body: StatusBody::BreakerTransition(BreakerTransition {
                model_id: model.to_owned(),
                from_state: t.from,
                to_state: t.to,
                reason: t.reason,
            }),
            schema_version: 1,
        };
        self.publish_status(&status, "breaker transition").await;
    }

    /// Publishes to `triad.executor-status`; a failure is logged, never fatal (status is
    /// telemetry: the next heartbeat or transition follows).
    async fn publish_status(&self, status: &ExecutorStatus, what: &'static str) {
        if let Err(error) = self
            .producer
            .send_record(
                &self.codec,
                &self.names.executor_status,
                None,
                &self.executor_id,
                status,
            )
            .await
        {
            tracing::warn!(%error, what, "publishing executor status failed");
        }
    }

    /// A configured model, or a registered remote one.
    fn model(&self, id: &str) -> Option<Arc<dyn triad_models::ModelAdapter>> {
        self.catalogue
            .models
            .get(id)
            .cloned()
            .or_else(|| self.remote.get(id))
    }

    /// Every model served here: the configured ones, then the registered ones.
    fn models(&self) -> Vec<(String, Arc<dyn triad_models::ModelAdapter>)> {
        let mut all: Vec<(String, Arc<dyn triad_models::ModelAdapter>)> = self
            .catalogue
            .models
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        all.extend(self.remote.all());
        all
    }

    fn model_infos(&self) -> Vec<ModelInfo> {
        let now = self.now();
        let models = self.models();
        let breakers = self.breakers.lock().ok();
        let health = self.health.lock().ok();
        let stats = self.stats.lock().ok();
        models
            .iter()
            .map(|(id, m)| {
                let f = m.capabilities();
                // Measured figures replace the declared ones once there are enough calls.
                let window = stats.as_ref().and_then(|s| s.get(id));
                let measured = |p| window.and_then(|w| w.latency_percentile(p));
                ModelInfo {
                    id: id.clone(),
                    zones: f.zones.clone(),
                    specialties: f.specialties.clone(),
                    latency_p50_ms: measured(50).unwrap_or(f.latency_p50_ms),
                    latency_p95_ms: measured(95).unwrap_or(f.latency_p95_ms),
                    reliability: window.and_then(CallWindow::success_ratio).unwrap_or(1.0),
                    input_micros_per_1k: f.input_micros_per_1k,
                    output_micros_per_1k: f.output_micros_per_1k,
                    max_context: f.max_context,
                    healthy: health
                        .as_ref()
                        .and_then(|h| h.get(id).map(triad_router::ProbeTracker::healthy))
                        .unwrap_or(true),
                    breaker: breakers
                        .as_ref()
                        .and_then(|b| b.get(id).map(|b| b.state(now)))
                        .unwrap_or(BreakerState::Closed),
                    endpoint_host: f.endpoint_host.clone(),
                }
            })
            .collect()
    }

    fn permit(&self, model: &str) -> Permit {
        let now = self.now();
        let config = BreakerConfig {
            failures: self.options.config.breaker_failures,
            window: Duration::from_millis(self.options.config.breaker_window_ms),
            cooldown: Duration::from_millis(self.options.config.breaker_cooldown_ms),
        };
        self.breakers.lock().map_or(Permit::Call, |mut b| {
            b.entry(model.to_owned())
                .or_insert_with(|| Breaker::new(config))
                .permit(now)
        })
    }

    fn record(&self, model: &str, ok: bool, latency_ms: i64) -> Option<Transition> {
        if let Ok(mut stats) = self.stats.lock() {
            stats
                .entry(model.to_owned())
                .or_default()
                .record(u64::try_from(latency_ms).unwrap_or(0), ok);
        }
        let now = self.now();
        let mut breakers = self.breakers.lock().ok()?;
        let b = breakers.get_mut(model)?;
        if ok {
            b.on_success(now)
        } else {
            b.on_failure(now)
        }
    }

    /// Asks each eligible model for a bid, concurrently, and closes the auction when all have
    /// answered or `executor.bid_timeout_ms` has passed (docs/market.md).
    async fn hold_auction(
        &self,
        eligible: &[triad_router::Ranked],
        prompt: &str,
        needs: &Needs,
    ) -> triad_market::auction::Outcome {
        use triad_market::auction::{Offer, Received, Rules, close};
        let call = ModelRequest {
            prompt: prompt.to_owned(),
            max_tokens: needs.max_tokens,
            timeout: Duration::from_millis(self.options.config.bid_timeout_ms),
        };
        let window = Duration::from_millis(self.options.config.bid_timeout_ms);
        let bids = futures::future::join_all(eligible.iter().map(|r| {
            let call = &call;
            async move {
                let received = match self.model(&r.id) {
                    None => Received::Declined,
                    Some(model) => match tokio::time::timeout(window, model.bid(call)).await {
                        Err(_) => Received::Late,
                        Ok(None) => Received::Declined,
                        Ok(Some(b)) => Received::Bid(Offer {
                            price_micros: b.price_micros,
                            latency_ms: b.latency_ms,
                            confidence: b.confidence,
                        }),
                    },
                };
                (r.id.clone(), received)
            }
        }))
        .await;
        let rules = Rules {
            sla_ms: needs.timeout_ms,
            confidence_floor: self.options.config.bid_confidence_floor,
        };
        let standing = self.standing.lock().map(|s| s.clone()).unwrap_or_default();
        let outcome = close(bids, rules, &standing);
        tracing::info!(winner = ?outcome.winner, bids = outcome.bids.len(), reason = %outcome.reason, "auction closed");
        outcome
    }

    /// Holds the auction's winner to its bid: its standing rises when its call succeeded
    /// within twice the promised latency, and halves otherwise (docs/market.md).
    fn settle_auction(&self, tried: &Tried) {
        let Some(outcome) = &tried.auction else {
            return;
        };
        let (Some(winner), Some(offer)) = (&outcome.winner, outcome.winning_offer()) else {
            return;
        };
        let calls: Vec<&ModelCall> = tried
            .calls
            .iter()
            .filter(|c| &c.model_id == winner)
            .collect();
        if calls.is_empty() {
            // Never called (cancelled first): nothing was promised and broken.
            return;
        }
        let ok = calls.iter().find(|c| c.ok);
        let latency = ok.map_or(0, |c| u64::try_from(c.latency_ms).unwrap_or(u64::MAX));
        if let Ok(mut standing) = self.standing.lock() {
            let honoured = standing.settle(winner, offer, ok.is_some(), latency);
            tracing::info!(model = %winner, honoured, standing = standing.of(winner), "auction award settled");
        }
    }

    /// Calls the ranked models best first until one answers (crate docs, step 3).
    /// `instruction` is the template without its references (what the prompt reads as is
    /// judged on it); `prompt` is the filled template sent to the model.
    async fn try_models(
        &self,
        request: &TaskRequest,
        instruction: &str,
        prompt: &str,
        abort: &CancellationToken,
    ) -> Tried {
        let deadline = Instant::now()
            + Duration::from_millis(u64::try_from(request.timeout_ms.max(1)).unwrap_or(60_000));
        let needs = Needs {
            executor_zone: self.options.zone.clone(),
            allowed_zones: request
                .allowed_zones
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>(),
            specialties: request.specialties.clone(),
            inferred_specialty: if request.specialties.is_empty() {
                triad_market::matching::shared()
                    .and_then(|c| c.classify(instruction))
                    .map(|i| i.specialty)
            } else {
                None
            },
            hint: request.model_hint.clone().filter(|h| !h.is_empty()),
            prompt_tokens: estimate_tokens(prompt),
            max_tokens: u32::try_from(request.max_tokens.max(1)).unwrap_or(1),
            timeout_ms: u64::try_from(request.timeout_ms.max(0)).unwrap_or(0),
            zone_hosts: Arc::clone(&self.options.zone_hosts),
        };
        let mut ranking = rank(&self.model_infos(), &needs);
        let auction = if request.auction && !ranking.eligible.is_empty() {
            let outcome = self.hold_auction(&ranking.eligible, prompt, &needs).await;
            // The winner is called first; the others follow by score, as fallbacks.
            if let Some(i) = outcome
                .winner
                .as_ref()
                .and_then(|w| ranking.eligible.iter().position(|r| &r.id == w))
            {
                let won = ranking.eligible.remove(i);
                ranking.eligible.insert(0, won);
            }
            Some(outcome)
        } else {
            None
        };
        let mut tried = Tried {
            outcome: Err(String::new()),
            retryable: false,
            calls: vec![],
            score: ranking.eligible.first().map_or(0.0, |r| r.score),
            reason: match (&auction, &needs.inferred_specialty, ranking.reason) {
                (Some(a), _, _) if a.winner.is_some() => format!("auction: {}", a.reason),
                (_, Some(s), "best score") => format!("best score; the prompt reads as {s}"),
                (_, _, reason) => reason.to_owned(),
            },
            auction,
            alternatives: ranking
                .eligible
                .iter()
                .skip(1)
                .map(|r| r.id.clone())
                .collect(),
        };
        if ranking.eligible.is_empty() {
            // Open breakers and unhealthy models recover; zones and specialties do not.
            tried.retryable = ranking
                .rejected
                .iter()
                .any(|(_, why)| why.contains("breaker") || why == "unhealthy");
            tried.outcome = Err(ranking.explain_none());
            return tried;
        }
        let mut errors = Vec::new();
        for (position, ranked) in ranking.eligible.iter().enumerate() {
            let Some(model) = self.model(&ranked.id) else {
                continue;
            };
            // Pre-authorisation of the call (docs/credits.md): on a credits reservation, a
            // model whose worst-case call does not fit the attempt's allowance is not called.
            if let Some(allowance) = request.budget_micros {
                let worst = model
                    .capabilities()
                    .cost_micros(i64::from(needs.prompt_tokens), i64::from(needs.max_tokens));
                if worst > allowance {
                    errors.push(format!(
                        "{}: not called, its worst-case call of {worst} µcredits exceeds the \
                         attempt's allowance of {allowance} on the workflow's reservation",
                        ranked.id
                    ));
                    continue;
                }
            }
            let mut retry = 0u32;
            loop {
                let permit = self.permit(&ranked.id);
                if let Permit::Probe(Some(t)) = &permit {
                    self.publish_transition(&ranked.id, t.clone()).await;
                }
                if permit == Permit::Rejected {
                    errors.push(format!("{}: circuit breaker open", ranked.id));
                    tried.retryable = true;
                    break;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    errors.push(format!("{}: the task's timeout passed", ranked.id));
                    tried.retryable = true;
                    break;
                }
                let call = ModelRequest {
                    prompt: prompt.to_owned(),
                    max_tokens: needs.max_tokens,
                    timeout: remaining,
                };
                let started = Instant::now();
                let result = tokio::select! {
                    r = model.invoke(&call) => r,
                    () = abort.cancelled() => Err(ModelError::fatal("cancelled: the workflow was cancelled")),
                    () = tokio::time::sleep(remaining) => Err(ModelError::retryable(format!("{}: no answer within the task's timeout", ranked.id))),
                };
                let latency = millis(started.elapsed());
                match result {
                    Ok(response) => {
                        let cost = model
                            .capabilities()
                            .cost_micros(response.input_tokens, response.output_tokens);
                        tried.calls.push(ModelCall {
                            model_id: ranked.id.clone(),
                            ok: true,
                            error: None,
                            input_tokens: response.input_tokens,
                            output_tokens: response.output_tokens,
                            cost_micros: cost,
                            latency_ms: latency,
                        });
                        if let Some(t) = self.record(&ranked.id, true, latency) {
                            self.publish_transition(&ranked.id, t).await;
                        }
                        tried.score = ranked.score;
                        if position > 0 {
                            tried.reason = format!("fallback after {}", errors.join("; "));
                            tried.alternatives = ranking
                                .eligible
                                .iter()
                                .filter(|r| r.id != ranked.id)
                                .map(|r| r.id.clone())
                                .collect();
                        }
                        tried.outcome = Ok((ranked.id.clone(), response, cost));
                        return tried;
                    }
                    Err(e) => {
                        tried.calls.push(ModelCall {
                            model_id: ranked.id.clone(),
                            ok: false,
                            error: Some(e.message.clone()),
                            input_tokens: 0,
                            output_tokens: 0,
                            cost_micros: 0,
                            latency_ms: latency,
                        });
                        if abort.is_cancelled() {
                            tried.outcome = Err(e.message);
                            tried.retryable = false;
                            return tried;
                        }
                        if let Some(t) = self.record(&ranked.id, false, latency) {
                            self.publish_transition(&ranked.id, t).await;
                        }
                        tried.retryable |= e.retryable;
                        retry += 1;
                        if !e.retryable || retry >= self.options.config.retries_per_model {
                            errors.push(e.message);
                            break;
                        }
                        let delay = backoff(
                            retry - 1,
                            Duration::from_millis(self.options.config.retry_base_ms),
                            Duration::from_millis(self.options.config.retry_max_ms),
                            rand::random::<f64>(),
                            e.retry_after,
                        );
                        if delay >= deadline.saturating_duration_since(Instant::now()) {
                            errors.push(format!(
                                "{} (retry after {delay:?} would pass the timeout)",
                                e.message
                            ));
                            break;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = abort.cancelled() => {}
                        }
                    }
                }
            }
        }
        tried.outcome = Err(format!(
            "every eligible model failed: {}",
            errors.join("; ")
        ));
        tried
    }

    async fn handle(&self, message: OwnedMessage) -> std::result::Result<Outcome, crate::Error> {
        let request: TaskRequest = match self.codec.decode(message.payload()).await {
            Ok(r) => r,
            Err(e) if e.is_undecodable() => {
                return Ok(Outcome::Undecodable {
                    kind: "decode",
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let claimed = self
            .attempts
            .lock()
            .is_ok_and(|mut a| a.claim(&request.attempt_id));
        if !claimed {
            tracing::debug!(attempt.id = %request.attempt_id, "attempt already handled here; skipped");
            return Ok(Outcome::Done);
        }
        if self.cancellations.is_cancelled(&request.workflow_id) {
            tracing::info!(workflow.id = %request.workflow_id, attempt.id = %request.attempt_id, "workflow cancelled; request skipped");
            self.finish(&request.attempt_id);
            return Ok(Outcome::Done);
        }
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.execute(&request).await;
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let record = InboxRecord {
            meta: CommandMetadata {
                command_id: triad_domain::new_command_id(),
                idempotency_key: format!("result:{}", request.attempt_id),
                workflow_id: request.workflow_id.clone(),
                issued_at: triad_kafka::now_micros(),
                actor: Some(format!("executor/{}", self.executor_id)),
                tenant: None,
                schema_version: triad_domain::INBOX_SCHEMA_VERSION,
            },
            body: InboxBody::TaskResultReported(result),
        };
        match self
            .producer
            .send_record(
                &self.codec,
                &self.names.inbox,
                None,
                &request.workflow_id,
                &record,
            )
            .await
        {
            Ok(_) => {
                self.finish(&request.attempt_id);
                Ok(Outcome::Done)
            }
            Err(e) => {
                // Not reported: let a re-delivery (or the retry of this record) run it again.
                if let Ok(mut a) = self.attempts.lock() {
                    a.abandon(&request.attempt_id);
                }
                Err(e.into())
            }
        }
    }

    fn finish(&self, attempt_id: &str) {
        if let Ok(mut a) = self.attempts.lock() {
            a.finish(attempt_id);
        }
    }

    async fn execute(&self, request: &TaskRequest) -> TaskResultReported {
        let started = Instant::now();
        let mut result = TaskResultReported {
            task_id: request.task_id.clone(),
            attempt: request.attempt,
            attempt_id: request.attempt_id.clone(),
            model_id: String::new(),
            executor_zone: self.options.zone.clone(),
            outcome: TaskOutcome::Failed,
            output: None,
            output_ref: None,
            error: None,
            retryable: false,
            input_tokens: 0,
            output_tokens: 0,
            cost_micros: 0,
            latency_ms: 0,
            routing: None,
            execution: None,
        };
        if request.zone != self.options.zone {
            result.error = Some(format!(
                "executor of zone {} received a task for zone {}; refused",
                self.options.zone, request.zone
            ));
            return result;
        }
        let (template, seal_with) = match self
            .open(request, &request.task_id, Role::Prompt, &request.prompt)
            .await
        {
            Ok(opened) => opened,
            Err((error, retryable)) => {
                result.error = Some(error);
                result.retryable = retryable;
                return result;
            }
        };
        let mut payloads: Vec<(&str, std::borrow::Cow<'_, [u8]>)> = request
            .inputs
            .iter()
            .map(|(task, p)| (task.as_str(), std::borrow::Cow::Borrowed(p.as_ref())))
            .collect();
        // Inputs by reference are fetched here, inside the zone, and verified by hash.
        for (task, reference) in &request.input_refs {
            match self.fetch(reference).await {
                Ok(content) => payloads.push((task.as_str(), std::borrow::Cow::Owned(content))),
                Err(error) => {
                    result.error = Some(format!(
                        "the output of {task} (blob {}) could not be fetched: {error}",
                        reference.sha256
                    ));
                    result.retryable = true;
                    return result;
                }
            }
        }
        let mut inputs: HashMap<&str, String> = HashMap::new();
        for (task, payload) in &payloads {
            match self.open(request, task, Role::Output, payload).await {
                Ok((text, _)) => {
                    inputs.insert(task, text);
                }
                Err((error, retryable)) => {
                    result.error = Some(format!("the output of {task}: {error}"));
                    result.retryable = retryable;
                    return result;
                }
            }
        }
        let prompt = match triad_workflow::fill(&template, |t| inputs.get(t).map(String::as_str)) {
            Ok(p) => p,
            Err(e) => {
                result.error = Some(e);
                return result;
            }
        };
        let abort = self.cancellations.token(&request.workflow_id);
        let abort = {
            let child = abort.clone();
            let stop = self.stop.clone();
            // Shutting down aborts calls too; the request is then re-delivered elsewhere.
            tokio::spawn({
                let child = child.clone();
                async move {
                    tokio::select! {
                        () = stop.cancelled() => child.cancel(),
                        () = child.cancelled() => {}
                    }
                }
            });
            child
        };
        let instruction = triad_market::matching::instruction(&template);
        let tried = self
            .try_models(request, &instruction, &prompt, &abort)
            .await;
        self.settle_auction(&tried);
        self.cancellations.release(&request.workflow_id);
        abort.cancel();
        result.latency_ms = millis(started.elapsed());
        let routing = |model_id: &str| RoutingDecision {
            model_id: model_id.to_owned(),
            score: tried.score,
            reason: tried.reason.clone(),
            alternatives: tried.alternatives.clone(),
            calls: tried.calls.clone(),
            auction: tried.auction.as_ref().map(auction_record),
        };
        match &tried.outcome {
            Ok((model, response, cost)) => {
                tracing::info!(attempt.id = %request.attempt_id, model = %model, latency_ms = result.latency_ms, "task completed");
                result.model_id.clone_from(model);
                result.outcome = TaskOutcome::Succeeded;
                result.input_tokens = response.input_tokens;
                result.output_tokens = response.output_tokens;
                result.cost_micros = *cost;
                result.routing = Some(routing(model));
                let output = match self.seal_output(request, seal_with.as_deref(), &response.output)
                {
                    Ok(o) => o,
                    Err(error) => {
                        result.outcome = TaskOutcome::Failed;
                        result.error = Some(error);
                        return result;
                    }
                };
                if output.len() <= self.options.inline_max_bytes {
                    result.output = Some(output);
                } else {
                    match self.store(&output).await {
                        Ok(reference) => {
                            tracing::info!(attempt.id = %request.attempt_id, blob.sha256 = %reference.sha256, blob.size = reference.size, "output stored by reference");
                            result.output_ref = Some(reference);
                        }
                        Err(error) => {
                            // The call's spend stays on the record; the attempt is retried.
                            result.outcome = TaskOutcome::Failed;
                            result.retryable = true;
                            result.error = Some(format!(
                                "the output ({} bytes, above blobs.inline_max_bytes = {}) could not be stored: {error}",
                                output.len(),
                                self.options.inline_max_bytes
                            ));
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(attempt.id = %request.attempt_id, %error, "task failed");
                let last = tried
                    .calls
                    .last()
                    .map(|c| c.model_id.clone())
                    .unwrap_or_default();
                result.model_id.clone_from(&last);
                result.error = Some(error.clone());
                result.retryable = tried.retryable;
                if !tried.calls.is_empty() {
                    result.routing = Some(routing(&last));
                }
            }
        }
        if result.outcome == TaskOutcome::Succeeded {
            result.execution = self.execution_record(request, &result);
        }
        self.options.metrics.attempt(
            &self.options.zone,
            &result.model_id,
            result.outcome == TaskOutcome::Succeeded,
        );
        result
    }

    /// The signed execution record of a success (None without a signing key). A signing
    /// failure is logged and leaves the record out: the audit then reports the attempt as
    /// unsigned, which is the truth.
    fn execution_record(
        &self,
        request: &TaskRequest,
        result: &TaskResultReported,
    ) -> Option<Box<triad_domain::ExecutionRecord>> {
        use triad_sovereignty::custody::{self, Execution, hash_from_hex, sha256};
        let signer = self.options.signer.as_ref()?;
        let node_id = self.options.kernel.as_ref().map_or_else(
            || format!("executor-{}", self.options.zone),
            |k| k.kernel().node_id().to_owned(),
        );
        let model_zones = self
            .model(&result.model_id)
            .map(|m| m.capabilities().zones.clone())
            .filter(|z| !z.is_empty())
            .unwrap_or_else(|| vec![self.options.zone.clone()]);
        let stored =
            |inline: Option<&[u8]>, reference: Option<&triad_domain::BlobRef>| match reference {
                Some(r) => hash_from_hex("a blob reference", &r.sha256).ok(),
                None => Some(sha256(inline.unwrap_or_default())),
            };
        let mut inputs = Vec::new();
        for (task, field) in &request.inputs {
            inputs.push((task.as_str(), sha256(field)));
        }
        for (task, r) in &request.input_refs {
            inputs.push((
                task.as_str(),
                hash_from_hex("a blob reference", &r.sha256).ok()?,
            ));
        }
        let execution = Execution {
            workflow_id: &request.workflow_id,
            task_id: &request.task_id,
            attempt: u32::try_from(request.attempt).unwrap_or(0),
            attempt_id: &request.attempt_id,
            node_id: &node_id,
            executor_zone: &self.options.zone,
            model_id: &result.model_id,
            model_zones: &model_zones,
            prompt_sha256: sha256(&request.prompt),
            inputs_sha256: custody::inputs_digest(inputs),
            output_sha256: stored(result.output.as_deref(), result.output_ref.as_ref())?,
        };
        match custody::sign(signer.as_ref(), &execution) {
            Ok(signature) => Some(Box::new(triad_domain::ExecutionRecord {
                node_id: node_id.clone(),
                key_id: signer.key_id().to_owned(),
                executor_zone: self.options.zone.clone(),
                model_id: result.model_id.clone(),
                model_zones: model_zones.clone(),
                prompt_sha256: triad_sovereignty::hex(&execution.prompt_sha256),
                inputs_sha256: triad_sovereignty::hex(&execution.inputs_sha256),
                output_sha256: triad_sovereignty::hex(&execution.output_sha256),
                signature,
            })),
            Err(error) => {
                tracing::error!(attempt.id = %request.attempt_id, %error, "signing the execution record failed");
                None
            }
        }
    }

    /// A payload field as text, opened by the kernel when sealed, with the workflow key it
    /// was sealed under. Errors carry whether a retry may help (a workflow key record not
    /// seen yet); a sovereignty violation or a tampered envelope never heals.
    async fn open(
        &self,
        request: &TaskRequest,
        task_id: &str,
        role: Role,
        payload: &[u8],
    ) -> Result<(String, Option<String>), (String, bool)> {
        let Some(kernel) = &self.options.kernel else {
            if triad_domain::is_sealed(payload) {
                return Err((
                    "the payload is sealed and this executor runs without sovereignty.seal: it holds no key to open it"
                        .to_owned(),
                    false,
                ));
            }
            return Ok((String::from_utf8_lossy(payload).into_owned(), None));
        };
        let expect = Expect {
            workflow_id: &request.workflow_id,
            task_id,
            role,
        };
        match kernel.open(payload, expect).await {
            Ok(opened) => Ok((
                String::from_utf8_lossy(opened.bytes()).into_owned(),
                opened.workflow_key_id().map(str::to_owned),
            )),
            Err(error) => {
                let retryable = matches!(
                    error,
                    triad_kernel::Error::Sovereignty(
                        triad_sovereignty::Error::UnknownWorkflowKey { .. }
                    )
                );
                tracing::warn!(
                    attempt.id = %request.attempt_id,
                    zone = %self.options.zone,
                    %error,
                    "a payload did not open here"
                );
                if let triad_kernel::Error::Sovereignty(
                    triad_sovereignty::Error::SovereigntyViolation {
                        node,
                        zone,
                        envelope_zones,
                        reason,
                    },
                ) = &error
                {
                    self.record_violation(triad_domain::SovereigntyViolation {
                        occurred_at: triad_kafka::now_micros(),
                        node_id: node.clone(),
                        zone: zone.clone(),
                        workflow_id: request.workflow_id.clone(),
                        task_id: task_id.to_owned(),
                        attempt_id: Some(request.attempt_id.clone()),
                        role: role.as_str().to_owned(),
                        envelope_zones: envelope_zones.clone(),
                        reason: reason.clone(),
                        schema_version: 1,
                    })
                    .await;
                }
                Err((error.to_string(), retryable))
            }
        }
    }

    /// Puts a refused open on record (`triad.violations`, kept forever). A failure to write
    /// it is logged; the attempt fails either way.
    async fn record_violation(&self, violation: triad_domain::SovereigntyViolation) {
        if let Err(error) = self
            .producer
            .send_record(
                &self.codec,
                &self.names.violations,
                None,
                &violation.workflow_id,
                &violation,
            )
            .await
        {
            tracing::error!(%error, workflow.id = %violation.workflow_id, "recording a sovereignty violation failed");
        }
    }

    /// The output's bytes: sealed under the workflow key the prompt came with, for this
    /// task and attempt, when the prompt was sealed; plaintext otherwise.
    fn seal_output(
        &self,
        request: &TaskRequest,
        seal_with: Option<&str>,
        output: &str,
    ) -> Result<Vec<u8>, String> {
        match (seal_with, &self.options.kernel) {
            (Some(kid), Some(kernel)) => kernel
                .kernel()
                .seal(
                    kid,
                    Binding {
                        task_id: &request.task_id,
                        role: Role::Output,
                        attempt: u32::try_from(request.attempt).unwrap_or(0),
                    },
                    output.as_bytes(),
                )
                .map_err(|e| format!("sealing the output: {e}")),
            _ => Ok(output.as_bytes().to_vec()),
        }
    }

    async fn fetch(&self, reference: &triad_domain::BlobRef) -> Result<Vec<u8>, String> {
        let store = self
            .options
            .blobs
            .as_ref()
            .ok_or("no blob store is configured")?;
        store.get(reference).await.map_err(|e| e.to_string())
    }

    async fn store(&self, content: &[u8]) -> Result<triad_domain::BlobRef, String> {
        let store = self
            .options
            .blobs
            .as_ref()
            .ok_or("no blob store is configured")?;
        store.put(content).await.map_err(|e| e.to_string())
    }

    /// Applies a record of `triad.models`: a component version (crate `registry`), a remote
    /// model's registration or a tombstone (crate `remote`).
    async fn registration(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let key = key.map(String::from_utf8_lossy).unwrap_or_default();
        let registration = match payload {
            None => None,
            Some(bytes) => match self.codec.decode::<ModelRegistration>(Some(bytes)).await {
                Ok(r) => Some(r),
                Err(error) => {
                    tracing::warn!(%error, messaging.destination.name = %self.names.models, "undecodable registration skipped");
                    return;
                }
            },
        };
        let verdict = match registration {
            Some(r) if r.remote.is_none() => registry::apply(&self.catalogue.replaceable, r).await,
            other => {
                let configured: std::collections::BTreeSet<String> =
                    self.catalogue.models.keys().cloned().collect();
                let rules = triad_market::registry::Rules {
                    zones: &self.policy_zones,
                    hosts: &self.options.zone_hosts,
                    configured: &configured,
                };
                self.remote.apply(
                    &key,
                    other.as_ref(),
                    rules,
                    &|var| std::env::var(var).ok(),
                    Instant::now(),
                )
            }
        };
        if let Verdict::Report(install) = verdict {
            let status = ExecutorStatus {
                zone: self.options.zone.clone(),
                executor_id: self.executor_id.clone(),
                occurred_at: triad_kafka::now_micros(),
                body: StatusBody::AdapterInstall(install),
                schema_version: 1,
            };
            self.publish_status(&status, "adapter install").await;
        }
    }

    /// A self-registered model's heartbeat (`triad.model-health`).
    async fn model_heartbeat(&self, payload: Option<&[u8]>) {
        match self
            .codec
            .decode::<triad_domain::ModelHeartbeat>(payload)
            .await
        {
            Ok(h) => {
                if !self.remote.heartbeat(&h.model_id, Instant::now()) {
                    tracing::debug!(model = %h.model_id, "heartbeat of a model not served here");
                }
            }
            Err(error) => {
                tracing::warn!(%error, messaging.destination.name = %self.names.model_health, "undecodable model heartbeat skipped");
            }
        }
    }

    async fn heartbeat(&self) {
        let status = ExecutorStatus {
            zone: self.options.zone.clone(),
            executor_id: self.executor_id.clone(),
            occurred_at: triad_kafka::now_micros(),
            body: StatusBody::Heartbeat(Heartbeat {
                in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                capacity: i32::try_from(self.options.config.max_in_flight).unwrap_or(i32::MAX),
                models: self.models().into_iter().map(|(id, _)| id).collect(),
            }),
            schema_version: 1,
        };
        self.publish_status(&status, "heartbeat").await;
    }

    /// Probes every model once; a model whose health changes (enough probes in a row) is
    /// published as a `HealthTransition` status, counted and logged.
    async fn check_health(&self) {
        let config = triad_router::HealthConfig {
            unhealthy_after: self.options.config.unhealthy_after,
            healthy_after: self.options.config.healthy_after,
        };
        let missed = self.remote.missed(Instant::now());
        for (id, model) in self.models() {
            let changed = if let Some(missed) = missed.get(&id) {
                // A model that sends heartbeats is judged on them, not probed.
                let healthy = *missed < u64::from(config.unhealthy_after.max(1));
                let reason = if healthy {
                    "heartbeats arrive".to_owned()
                } else {
                    format!("{missed} heartbeats missed")
                };
                self.health
                    .lock()
                    .ok()
                    .and_then(|mut h| h.entry(id.clone()).or_default().set(healthy))
                    .map(|h| (h, reason, if h { 1 } else { *missed }))
            } else {
                let (ok, reason) = match model.health().await {
                    Health::Healthy => (true, "the probe succeeded".to_owned()),
                    Health::Unhealthy(why) => (false, why),
                };
                let changed = self
                    .health
                    .lock()
                    .ok()
                    .and_then(|mut h| h.entry(id.clone()).or_default().observe(ok, config));
                if changed.is_none() && !ok {
                    tracing::debug!(model = %id, %reason, "health probe failed");
                }
                changed.map(|h| {
                    let probes = if h {
                        config.healthy_after
                    } else {
                        config.unhealthy_after
                    };
                    (h, reason, u64::from(probes))
                })
            };
            let Some((healthy, reason, probes)) = changed else {
                continue;
            };
            tracing::warn!(model = %id, healthy, %reason, probes, "model health changed");
            self.options
                .metrics
                .health_transition(&self.options.zone, &id, healthy);
            let status = ExecutorStatus {
                zone: self.options.zone.clone(),
                executor_id: self.executor_id.clone(),
                occurred_at: triad_kafka::now_micros(),
                body: StatusBody::HealthTransition(triad_domain::HealthTransition {
                    model_id: id.clone(),
                    healthy,
                    reason,
                    probes: i32::try_from(probes.max(1)).unwrap_or(i32::MAX),
                }),
                schema_version: 3,
            };
            self.publish_status(&status, "health transition").await;
        }
    }
}

/// Runs the executor of `options.zone` until `cancel`, then drains the work in flight.
pub async fn run(
    options: &Options,
    codec: Arc<Codec>,
    catalogue: Catalogue,
    zones: &[String],
    cancel: CancellationToken,
) -> Result<()> {
    if !zones.contains(&options.zone) {
        return Err(crate::Error::UnknownZone {
            zone: options.zone.clone(),
            known: zones.join(", "),
        });
    }
    let names = Names::new(&options.kafka);
    let producer = Producer::new(&options.kafka)?;
    let executor_id = format!("{}-{}", options.zone, options.instance);
    let executor = Arc::new(Executor {
        options: options.clone(),
        names: names.clone(),
        executor_id: executor_id.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        catalogue,
        remote: crate::remote::RemoteModels::default(),
        policy_zones: zones.to_vec(),
        breakers: Mutex::new(HashMap::new()),
        stats: Mutex::new(HashMap::new()),
        standing: Mutex::new(triad_market::auction::Standing::default()),
        health: Mutex::new(HashMap::new()),
        attempts: Mutex::new(Attempts::default()),
        cancellations: Arc::new(Cancellations::default()),
        started: Instant::now(),
        in_flight: std::sync::atomic::AtomicI32::new(0),
        stop: cancel.clone(),
    });
    let background = cancel.child_token();
    let control_task = tokio::spawn(control::follow(
        options.kafka.clone(),
        names.control.clone(),
        codec.clone(),
        executor.cancellations.clone(),
        background.clone(),
    ));
    let (caught_up, registry_ready) = tokio::sync::oneshot::channel();
    let registry_task = {
        let executor = executor.clone();
        let stop = background.clone();
        let kafka = options.kafka.clone();
        tokio::spawn(async move {
            let topic = executor.names.models.clone();
            let followed = triad_kafka::tail::follow(
                &kafka,
                &topic,
                rdkafka::Offset::Beginning,
                stop,
                Some(caught_up),
                |m| {
                    let executor = executor.clone();
                    async move { executor.registration(m.key(), m.payload()).await }
                },
            )
            .await;
            if let Err(error) = followed {
                // Hot swap stops; the models keep serving the versions they run.
                tracing::error!(%error, messaging.destination.name = %topic, "the model registry reader stopped");
            }
        })
    };
    // Serve the versions the registry names, not the configured ones they replaced: wait
    // until the registry is read (bounded, so a slow registry delays but never blocks work).
    if tokio::time::timeout(REGISTRY_CATCH_UP, registry_ready)
        .await
        .is_err()
    {
        tracing::warn!(
            messaging.destination.name = %names.models,
            "the model registry was not read within {} s; serving the configured components until it is",
            REGISTRY_CATCH_UP.as_secs()
        );
    }
    let heartbeats_task = {
        let executor = executor.clone();
        let stop = background.clone();
        let kafka = options.kafka.clone();
        tokio::spawn(async move {
            let topic = executor.names.model_health.clone();
            // From the end: a registration's grace covers the time before the first one.
            let followed =
                triad_kafka::tail::follow(&kafka, &topic, rdkafka::Offset::End, stop, None, |m| {
                    let executor = executor.clone();
                    async move { executor.model_heartbeat(m.payload()).await }
                })
                .await;
            if let Err(error) = followed {
                // Heartbeat models then turn unhealthy: the router stops using them.
                tracing::error!(%error, messaging.destination.name = %topic, "the model heartbeat reader stopped");
            }
        })
    };
    let beat = {
        let executor = executor.clone();
        let stop = background.clone();
        let every = Duration::from_millis(options.config.heartbeat_ms);
        let probe_every = Duration::from_millis(options.config.health_every_ms.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut probe = tokio::time::interval(probe_every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => executor.heartbeat().await,
                    _ = probe.tick() => executor.check_health().await,
                }
            }
        })
    };
    let topic = names.tasks(&options.zone);
    let group = format!("{}-executor-{}", options.kafka.group_prefix, options.zone);
    let dlq = DeadLetterWriter::new(producer.clone(), codec, &names.dlq);
    tracing::info!(
        zone = %options.zone,
        messaging.consumer.group.name = %group,
        messaging.destination.name = %topic,
        max_in_flight = options.config.max_in_flight,
        models = ?executor.models().into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
        "executor starting"
    );
    let handler = {
        let executor = executor.clone();
        move |m: OwnedMessage| {
            let executor = executor.clone();
            async move { executor.handle(m).await }
        }
    };
    let topics = [topic.as_str()];
    let result = triad_kafka::pool::run_pool(
        Group::worker(
            &options.kafka,
            &group,
            &topics,
            &dlq,
            &producer,
            options.instance,
        ),
        options.config.max_in_flight,
        cancel,
        handler,
    )
    .await;
    background.cancel();
    let _ = beat.await;
    if let Ok(Err(error)) = control_task.await {
        tracing::warn!(%error, "the control reader stopped");
    }
    let _ = registry_task.await;
    let _ = heartbeats_task.await;
    result?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_claimed_once_and_abandoned_claims_run_again() {
        let mut a = Attempts::default();
        assert!(a.claim("wf/t#1"));
        assert!(!a.claim("wf/t#1"), "running");
        a.finish("wf/t#1");
        assert!(!a.claim("wf/t#1"), "finished here");
        assert!(a.claim("wf/t#2"));
        a.abandon("wf/t#2");
        assert!(a.claim("wf/t#2"));
    }
}
