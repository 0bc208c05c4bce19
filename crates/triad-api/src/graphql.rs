//! GraphQL (async-graphql): queries on the read models, mutations that append commands,
//! and a subscription that follows a workflow's events. Served at `/graphql` (GraphiQL on
//! GET, queries on POST) and `/graphql/ws` (graphql-transport-ws and the legacy graphql-ws).
//! The SDL is kept in `docs/schema.graphql`; a test fails when it drifts.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    ComplexObject, Context, ErrorExtensions, InputObject, Json, Object, Schema, SimpleObject,
    Subscription,
};
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use futures::Stream;

use crate::commands::{self, CommandError};
use crate::long::Long;
use crate::read::{self, EventView, ModelView, TaskView, WorkflowView};
use crate::stream::{ChangeStream, EventStream};
use crate::{AppState, Error};
use triad_auth::Principal;
use triad_domain::AccessRole;

/// Largest page `workflows(first:)` returns.
pub const MAX_PAGE: i32 = 100;
pub const MAX_DEPTH: usize = 10;
/// Fields count once, lists `first` times: 40 aliased pages of 100 workflows are refused.
pub const MAX_COMPLEXITY: usize = 5_000;

pub type TriadSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

pub fn schema(state: Arc<AppState>) -> TriadSchema {
    let trusted = state.trusted_operations.clone();
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(state)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY);
    if let Some(t) = trusted {
        builder = builder.extension(t);
    }
    builder.finish()
}

/// The schema without state, for exporting the SDL.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

fn err(code: &'static str, message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

fn unavailable(e: Error) -> async_graphql::Error {
    tracing::warn!(error = %e, "GraphQL request failed");
    err("UNAVAILABLE", e.to_string())
}

fn command_error(e: CommandError) -> async_graphql::Error {
    match e {
        CommandError::BadKey => err("INVALID_IDEMPOTENCY_KEY", e.to_string()),
        CommandError::Invalid(errors) => {
            let fields: Vec<async_graphql::Value> = errors
                .0
                .iter()
                .map(|e| {
                    let mut m = async_graphql::indexmap::IndexMap::new();
                    m.insert(
                        async_graphql::Name::new("field"),
                        async_graphql::Value::from(e.field.clone()),
                    );
                    m.insert(
                        async_graphql::Name::new("message"),
                        async_graphql::Value::from(e.message.clone()),
                    );
                    async_graphql::Value::Object(m)
                })
                .collect();
            async_graphql::Error::new(format!("invalid workflow: {errors}")).extend_with(
                move |_, ext| {
                    ext.set("code", "INVALID_WORKFLOW");
                    ext.set("errors", async_graphql::Value::List(fields.clone()));
                },
            )
        }
        CommandError::Finished(status) => err(
            "WORKFLOW_FINISHED",
            format!("the workflow has already finished ({status})"),
        ),
        CommandError::ForeignAccount(reason) => {
            async_graphql::Error::new(reason).extend_with(|_, ext| {
                ext.set("code", "FOREIGN_ACCOUNT");
                ext.set("field", "account");
            })
        }
        CommandError::NotFound(id) => {
            err("NOT_FOUND", format!("no workflow {id} is visible to you"))
        }
        CommandError::Limited(exceeded) => exceeded.graphql_error(),
        CommandError::Unavailable(e) => unavailable(e),
    }
}

fn state<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Arc<AppState>> {
    ctx.data::<Arc<AppState>>()
}

/// The caller, resolved by the HTTP layer or the WebSocket's `connection_init`.
fn principal<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Principal> {
    ctx.data::<Principal>()
        .map_err(|_| err("UNAUTHENTICATED", "invalid or missing credentials"))
}

/// The caller's tenant scope: its tenant, or none for an operator (every tenant).
fn scope<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<Option<&'a str>> {
    Ok(crate::access::scope(principal(ctx)?))
}

/// Refuses (code FORBIDDEN) unless the caller has at least `role`.
fn require_role(ctx: &Context<'_>, role: AccessRole, action: &str) -> async_graphql::Result<()> {
    crate::access::require_role(principal(ctx)?, role, action)
        .map_err(|p| err("FORBIDDEN", p.title))
}

/// Whether the caller sees `workflow_id` (another tenant's reads as absent).
async fn sees(ctx: &Context<'_>, workflow_id: &str) -> async_graphql::Result<bool> {
    let s = state(ctx)?;
    let scope = scope(ctx)?;
    if scope.is_none() {
        return Ok(true);
    }
    Ok(read::workflow(&s.pool, workflow_id)
        .await
        .map_err(unavailable)?
        .is_some_and(|w| w.visible_to(scope)))
}

#[derive(Debug, Clone, SimpleObject)]
pub struct Label {
    pub key: String,
    pub value: String,
}

#[ComplexObject]
impl WorkflowView {
    /// Labels given at submission.
    async fn labels(&self) -> Vec<Label> {
        self.labels
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| Label {
                        key: k.clone(),
                        value: v.as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The workflow's events after `afterSequence`, in order (at most 500).
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 0)] after_sequence: i64,
        #[graphql(default = 500)] first: i64,
    ) -> async_graphql::Result<Vec<EventView>> {
        let s = state(ctx)?;
        read::events_after(
            &s.pool,
            &self.workflow_id,
            after_sequence,
            first.clamp(1, 500),
        )
        .await
        .map_err(unavailable)
    }
}

#[ComplexObject]
impl EventView {
    /// The event without its payloads (sizes only).
    async fn data(&self) -> Json<serde_json::Value> {
        Json(self.data.clone())
    }
}

/// Filters for `workflows`.
#[derive(Debug, Clone, Default, InputObject)]
pub struct WorkflowFilter {
    /// ACCEPTED, RUNNING, COMPLETED, FAILED, CANCELLED or REJECTED.
    pub status: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug)]
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// A credits account from the ledger; null when it has no entries.
    async fn account(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<Account>> {
        if !crate::access::owns_account(principal(ctx)?, &id) {
            return Ok(None);
        }
        Ok(state(ctx)?.ledger.account(&id).await.map(Account::from))
    }

    /// The credits supply over every account (operators only: it spans tenants).
    async fn credit_supply(&self, ctx: &Context<'_>) -> async_graphql::Result<CreditSupply> {
        require_role(ctx, AccessRole::Operator, "the credits supply")?;
        let s = state(ctx)?.ledger.supply().await;
        Ok(CreditSupply {
            accounts: Long(i64::try_from(s.accounts).unwrap_or(i64::MAX)),
            issued: Long(s.issued_micros),
            burned: Long(s.burned_micros),
            circulating: Long(s.circulating_micros()),
            balance: Long(s.balance_micros),
            reserved: Long(s.reserved_micros),
        })
    }

    /// One workflow from the read model; null when it is not there (yet).
    async fn workflow(
        &self,
        ctx: &Context<'_>,
        id: String,
    ) -> async_graphql::Result<Option<WorkflowView>> {
        state(ctx)?
            .workflow(&id, scope(ctx)?)
            .await
            .map_err(unavailable)
    }

    /// Workflows, newest first, with cursor pagination (`first` at most 100).
    #[graphql(complexity = "(first.clamp(1, MAX_PAGE) as usize) * child_complexity")]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowFilter>,
        #[graphql(default = 20)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, WorkflowView>> {
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(err(
                "PAGE_SIZE",
                format!("first must be between 1 and {MAX_PAGE}"),
            ));
        }
        let cursor = match after.as_deref() {
            None => None,
            Some(c) => Some(
                read::Cursor::parse(c)
                    .ok_or_else(|| err("INVALID_CURSOR", "after is not a cursor from this API"))?,
            ),
        };
        let filter = filter.unwrap_or_default();
        let s = state(ctx)?;
        let (page, more) = read::workflows_page(
            &s.pool,
            filter.status.as_deref(),
            filter.name.as_deref(),
            scope(ctx)?,
            cursor.as_ref(),
            i64::from(first),
        )
        .await
        .map_err(unavailable)?;
        let mut connection = Connection::new(cursor.is_some(), more);
        for (cursor, mut view) in page {
            s.reveal(&mut view);
            connection.edges.push(Edge::new(cursor.to_string(), view));
        }
        Ok(connection)
    }

    /// One task of a workflow.
    async fn task(
        &self,
        ctx: &Context<'_>,
        workflow_id: String,
        task_id: String,
    ) -> async_graphql::Result<Option<TaskView>> {
        let w = state(ctx)?
            .workflow(&workflow_id, scope(ctx)?)
            .await
            .map_err(unavailable)?;
        Ok(w.and_then(|w| w.tasks.into_iter().find(|t| t.task_id == task_id)))
    }

    /// API keys (never their secrets): the caller's tenant's (tenant admins) or every
    /// tenant's (operators).
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::keys::KeyView>> {
        crate::keys::list(state(ctx)?, principal(ctx)?).map_err(key_error)
    }

    /// Models with their measured statistics (latency percentiles, reliability, spend), and
    /// each registered remote model with its registration (docs/market.md), by id.
    async fn models(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ModelView>> {
        let s = state(ctx)?;
        let mut models = read::models(&s.pool).await.map_err(unavailable)?;
        for registered in s.registry.registered(s) {
            let view = crate::registry::RegistrationView::from(&registered);
            match models
                .iter_mut()
                .find(|m| m.model_id == registered.model_id)
            {
                Some(m) => m.registration = Some(view),
                None => models.push(ModelView::registered(registered.model_id, view)),
            }
        }
        models.sort_by(|a, b| a.model_id.cmp(&b.model_id));
        Ok(models)
    }

    /// Each model's health and circuit-breaker state as each executor last reported it
    /// (`triad.executor-status`); only `modelId`'s when given.
    async fn model_health(
        &self,
        ctx: &Context<'_>,
        model_id: Option<String>,
    ) -> async_graphql::Result<Vec<crate::market::ModelHealth>> {
        Ok(state(ctx)?.health.list(model_id.as_deref()).await)
    }

    /// A workflow's auctions from the read model: every bid with its fate, and the award.
    async fn auctions(
        &self,
        ctx: &Context<'_>,
        workflow_id: String,
    ) -> async_graphql::Result<Vec<crate::market::Auction>> {
        if !sees(ctx, &workflow_id).await? {
            return Ok(Vec::new());
        }
        crate::market::auctions(&state(ctx)?.pool, &workflow_id)
            .await
            .map_err(unavailable)
    }

    /// What a workflow would cost, before it is submitted: the expected cost on the models the
    /// router would choose and the worst case a hard budget reserves (docs/market.md). The
    /// input is validated as `submitWorkflow` validates it; nothing is written.
    async fn estimate_cost(
        &self,
        ctx: &Context<'_>,
        input: WorkflowInput,
    ) -> async_graphql::Result<CostEstimate> {
        let e = commands::estimate(state(ctx)?, &input.into_workflow()).map_err(command_error)?;
        Ok(CostEstimate::from(e))
    }

    /// A workflow's chain of custody, recomputed from the event store in Kafka (not the read
    /// models): its leaves, Merkle root and audit (`triad audit verify`); null when the event
    /// store holds none of its events.
    async fn audit_trail(
        &self,
        ctx: &Context<'_>,
        workflow_id: String,
    ) -> async_graphql::Result<Option<crate::audit::TrailView>> {
        if !sees(ctx, &workflow_id).await? {
            return Ok(None);
        }
        crate::audit::trail(state(ctx)?, &workflow_id)
            .await
            .map_err(unavailable)
    }

    /// An inclusion proof of one event in its workflow's Merkle tree, for a third party to
    /// check (docs/audit.md); null when the workflow or the event is not in the event store.
    async fn audit_proof(
        &self,
        ctx: &Context<'_>,
        workflow_id: String,
        event_id: String,
    ) -> async_graphql::Result<Option<crate::audit::ProofView>> {
        if !sees(ctx, &workflow_id).await? {
            return Ok(None);
        }
        crate::audit::proof(state(ctx)?, &workflow_id, &event_id)
            .await
            .map_err(unavailable)
    }
}

/// `estimateCost`'s answer: per task and in total, in micro-credits.
#[derive(Debug, Clone, SimpleObject)]
pub struct CostEstimate {
    /// One call per task on the router's first choice, with the full `maxTokens` of output.
    pub expected_micros: Long,
    /// `maxAttempts ×` the priciest eligible model's call, per task: what a budget reserves.
    pub worst_case_micros: Long,
    pub tasks: Vec<TaskCostEstimate>,
}

#[derive(Debug, Clone, SimpleObject)]
pub struct TaskCostEstimate {
    pub task_id: String,
    /// The prompt's estimated tokens, each dependency output counted at its `maxTokens`.
    pub prompt_tokens: Long,
    pub max_tokens: Long,
    pub max_attempts: Long,
    /// The model the router would choose; null when none can run the task.
    pub model: Option<String>,
    /// Every model that could run the task, best first.
    pub candidates: Vec<String>,
    /// The specialty the prompt reads as, when the task names none.
    pub inferred_specialty: Option<String>,
    pub expected_micros: Long,
    pub worst_case_micros: Long,
    /// Why no model can run the task.
    pub problem: Option<String>,
}

impl From<triad_market::Estimate> for CostEstimate {
    fn from(e: triad_market::Estimate) -> Self {
        Self {
            expected_micros: Long(e.expected_micros),
            worst_case_micros: Long(e.worst_case_micros),
            tasks: e
                .tasks
                .into_iter()
                .map(|t| TaskCostEstimate {
                    task_id: t.task,
                    prompt_tokens: Long(i64::from(t.prompt_tokens)),
                    max_tokens: Long(i64::from(t.max_tokens)),
                    max_attempts: Long(i64::from(t.max_attempts)),
                    model: t.model,
                    candidates: t.candidates,
                    inferred_specialty: t.inferred_specialty,
                    expected_micros: Long(t.expected_micros),
                    worst_case_micros: Long(t.worst_case_micros),
                    problem: t.problem,
                })
                .collect(),
        }
    }
}

/// A task of `submitWorkflow`'s input, mirroring the workflow document.
#[derive(Debug, Clone, InputObject)]
pub struct TaskInput {
    pub id: String,
    pub prompt: String,
    pub model: Option<String>,
    #[graphql(default)]
    pub specialties: Vec<String>,
    #[graphql(default)]
    pub zones: Vec<String>,
    #[graphql(default)]
    pub depends_on: Vec<String>,
    #[graphql(default = 1024)]
    pub max_tokens: i32,
    #[graphql(default = 60000)]
    pub timeout_ms: i64,
    #[graphql(default = 3)]
    pub max_attempts: i32,
    #[graphql(default)]
    pub auction: bool,
}

#[derive(Debug, Clone, InputObject)]
pub struct LabelInput {
    pub key: String,
    pub value: String,
}

/// `submitWorkflow`'s input: the workflow document (docs/workflows.md).
#[derive(Debug, Clone, InputObject)]
pub struct WorkflowInput {
    pub name: String,
    #[graphql(default)]
    pub zones: Vec<String>,
    #[graphql(default)]
    pub labels: Vec<LabelInput>,
    pub tasks: Vec<TaskInput>,
    /// The TRIAD credits account that pays; the workflow then runs only on a reservation of
    /// its worst-case cost (docs/credits.md).
    pub account: Option<String>,
}

impl WorkflowInput {
    fn into_workflow(self) -> triad_workflow::Workflow {
        triad_workflow::Workflow {
            name: self.name,
            zones: self.zones,
            labels: self.labels.into_iter().map(|l| (l.key, l.value)).collect(),
            account: self.account,
            tasks: self
                .tasks
                .into_iter()
                .map(|t| triad_workflow::Task {
                    id: t.id,
                    prompt: t.prompt,
                    model: t.model,
                    specialties: t.specialties,
                    zones: t.zones,
                    depends_on: t.depends_on,
                    max_tokens: t.max_tokens,
                    timeout_ms: t.timeout_ms,
                    retry: triad_workflow::RetryPolicy {
                        max_attempts: t.max_attempts,
                    },
                    auction: t.auction,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, SimpleObject)]
pub struct Submitted {
    pub workflow_id: String,
    /// SUBMITTED: the command is durably in Kafka; acceptance arrives as an event.
    pub status: String,
    pub stream_url: String,
}

#[derive(Debug)]
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Validates and submits a workflow; returns once the command is in Kafka (acks=all).
    /// The same `idempotencyKey` returns the same workflow instead of a second one.
    async fn submit_workflow(
        &self,
        ctx: &Context<'_>,
        input: WorkflowInput,
        idempotency_key: Option<String>,
    ) -> async_graphql::Result<Submitted> {
        let s = state(ctx)?;
        let id = commands::submit(s, &input.into_workflow(), idempotency_key, principal(ctx)?)
            .await
            .map_err(command_error)?;
        Ok(Submitted {
            stream_url: format!("/v1/workflows/{id}/events"),
            workflow_id: id,
            status: "SUBMITTED".to_owned(),
        })
    }

    /// Requests cancellation; the result arrives as a WorkflowCancelled event.
    async fn cancel_workflow(
        &self,
        ctx: &Context<'_>,
        id: String,
        reason: Option<String>,
    ) -> async_graphql::Result<bool> {
        commands::cancel(state(ctx)?, &id, reason, principal(ctx)?)
            .await
            .map_err(command_error)?;
        Ok(true)
    }

    /// Issues credits to an account for a contribution (operators only). Returns the ledger
    /// entry once the ledger applied it.
    async fn issue_credits(
        &self,
        ctx: &Context<'_>,
        account: String,
        amount: Long,
        #[graphql(default_with = "\"GRANT\".to_owned()")] kind: String,
        reason: String,
    ) -> async_graphql::Result<CreditEntry> {
        let s = state(ctx)?;
        require_role(ctx, AccessRole::Operator, "issuing credits")?;
        let request = crate::credits::IssueRequest {
            amount_micros: amount.0,
            kind,
            reason,
        };
        let actor = principal(ctx)?.actor();
        let (command_id, event) = crate::credits::issue(s, &account, &request, &actor)
            .await
            .map_err(credits_error)?;
        match event {
            Some(e) => Ok(CreditEntry::from(&e)),
            None => Err(err(
                "PENDING",
                format!("issue {command_id} was sent but the ledger has not applied it yet"),
            )),
        }
    }

    /// Creates an API key (tenant admins for their tenant, below operator; operators any).
    /// The answer's `key` is shown this once.
    async fn create_api_key(
        &self,
        ctx: &Context<'_>,
        input: crate::keys::CreateKey,
    ) -> async_graphql::Result<crate::keys::CreatedKey> {
        // The answer carries the key's text: no cache on the way may keep it.
        ctx.insert_http_header(axum::http::header::CACHE_CONTROL, "no-store");
        crate::keys::create(state(ctx)?, principal(ctx)?, input)
            .await
            .map_err(key_error)
    }

    /// Replaces an API key by a new one (same tenant, role, name, expiry) and revokes it.
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        key_id: String,
    ) -> async_graphql::Result<crate::keys::CreatedKey> {
        // The answer carries the key's text: no cache on the way may keep it.
        ctx.insert_http_header(axum::http::header::CACHE_CONTROL, "no-store");
        crate::keys::rotate(state(ctx)?, principal(ctx)?, &key_id)
            .await
            .map_err(key_error)
    }

    /// Revokes an API key: this node refuses it from this answer on, every node once it
    /// reads the event.
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        key_id: String,
        reason: String,
    ) -> async_graphql::Result<crate::keys::KeyView> {
        crate::keys::revoke(state(ctx)?, principal(ctx)?, &key_id, &reason)
            .await
            .map_err(key_error)
    }

    /// Registers a remote model (tenant admins; the model then belongs to the tenant, and an
    /// id another tenant holds is refused): checked against the
    /// sovereignty policy (zones, `policy.hosts`), then appended to `triad.models`, one
    /// version above its latest. Executors serve it from their next task.
    async fn register_model(
        &self,
        ctx: &Context<'_>,
        id: String,
        input: crate::registry::RemoteModelInput,
    ) -> async_graphql::Result<crate::registry::RegistrationView> {
        let s = state(ctx)?;
        require_role(ctx, AccessRole::TenantAdmin, "registering models")?;
        let spec = input
            .into_spec()
            .map_err(|e| err("INVALID_REGISTRATION", e))?;
        let registered = crate::registry::register(s, &id, spec, principal(ctx)?)
            .await
            .map_err(registry_error)?;
        let r = registered.registration;
        let remote = r
            .remote
            .ok_or_else(|| err("UNAVAILABLE", "the registration has no remote body"))?;
        Ok(crate::registry::RegistrationView::from(
            &crate::registry::RegisteredModel {
                model_id: r.model_id,
                version: r.version,
                registered_at: r.registered_at,
                remote,
            },
        ))
    }

    /// Deregisters a remote model (its tenant's admins, or operators): executors stop
    /// serving it.
    async fn deregister_model(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<bool> {
        let s = state(ctx)?;
        require_role(ctx, AccessRole::TenantAdmin, "deregistering models")?;
        crate::registry::deregister(s, &id, principal(ctx)?)
            .await
            .map_err(registry_error)?;
        Ok(true)
    }

    /// A registered model's heartbeat (its tenant's admins, or operators), for models
    /// registered with `heartbeatEveryMs`.
    async fn model_heartbeat(
        &self,
        ctx: &Context<'_>,
        id: String,
        sender: Option<String>,
    ) -> async_graphql::Result<bool> {
        let s = state(ctx)?;
        require_role(ctx, AccessRole::TenantAdmin, "model heartbeats")?;
        crate::registry::heartbeat(
            s,
            &id,
            sender.as_deref().unwrap_or("graphql"),
            principal(ctx)?,
        )
        .await
        .map_err(registry_error)?;
        Ok(true)
    }

    /// Always an error (code NON_TRANSFERABLE): TRIAD credits cannot move between accounts.
    async fn transfer_credits(
        &self,
        from: String,
        to: String,
        amount: Long,
    ) -> async_graphql::Result<bool> {
        let _ = amount;
        Err(err(
            "NON_TRANSFERABLE",
            format!(
                "{} (asked: {from} -> {to})",
                triad_market::ledger::NON_TRANSFERABLE
            ),
        ))
    }
}

/// A TRIAD credits account (docs/credits.md). Amounts are in µcredits.
#[derive(Debug, Clone, SimpleObject)]
pub struct Account {
    pub id: String,
    /// Available for new reservations.
    pub balance: Long,
    /// Held for running workflows' worst cases.
    pub reserved: Long,
    /// Spent for good (left the supply).
    pub burned: Long,
    /// Everything ever issued: balance + reserved + burned.
    pub issued: Long,
    /// The account's ledger events, oldest first.
    pub entries: Vec<CreditEntry>,
}

/// One event of an account's ledger, with the account's totals after it.
#[derive(Debug, Clone, SimpleObject)]
pub struct CreditEntry {
    pub sequence: Long,
    pub event_id: String,
    /// CreditsIssued, CreditsReserved, ReservationRefused, CreditsBurned or
    /// ReservationReleased.
    pub event_type: String,
    pub occurred_at: Long,
    pub amount: Long,
    pub workflow_id: Option<String>,
    /// For an issue: GRANT, CAPACITY, DATA or VALIDATION.
    pub kind: Option<String>,
    /// For an issue or a refusal: why.
    pub reason: Option<String>,
    pub balance: Long,
    pub reserved: Long,
    pub burned: Long,
    /// Hex SHA-256 of the account's previous event (the chain an auditor checks).
    pub previous_sha256: String,
}

impl From<&triad_domain::CreditsEvent> for CreditEntry {
    fn from(e: &triad_domain::CreditsEvent) -> Self {
        use triad_domain::CreditsEventBody as B;
        let (amount, workflow_id, kind, reason) = match &e.body {
            B::CreditsIssued(b) => (
                b.amount_micros,
                None,
                Some(b.kind.as_str().to_owned()),
                Some(b.reason.clone()),
            ),
            B::CreditsReserved(b) => (b.amount_micros, Some(b.workflow_id.clone()), None, None),
            B::ReservationRefused(b) => (
                b.amount_micros,
                Some(b.workflow_id.clone()),
                None,
                Some(b.reason.clone()),
            ),
            B::CreditsBurned(b) => (b.amount_micros, Some(b.workflow_id.clone()), None, None),
            B::ReservationReleased(b) => (b.amount_micros, Some(b.workflow_id.clone()), None, None),
        };
        Self {
            sequence: Long(e.sequence),
            event_id: e.event_id.clone(),
            event_type: e.body.type_name().to_owned(),
            occurred_at: Long(e.occurred_at),
            amount: Long(amount),
            workflow_id,
            kind,
            reason,
            balance: Long(e.totals.balance_micros),
            reserved: Long(e.totals.reserved_micros),
            burned: Long(e.totals.burned_micros),
            previous_sha256: e.previous_sha256.clone(),
        }
    }
}

impl From<crate::credits::AccountView> for Account {
    fn from(a: crate::credits::AccountView) -> Self {
        Self {
            id: a.account,
            balance: Long(a.totals.balance_micros),
            reserved: Long(a.totals.reserved_micros),
            burned: Long(a.totals.burned_micros),
            issued: Long(a.totals.issued_micros),
            entries: a.entries.iter().map(CreditEntry::from).collect(),
        }
    }
}

/// The credits supply over every account, in µcredits. Burned credits leave it for good.
#[derive(Debug, Clone, SimpleObject)]
pub struct CreditSupply {
    pub accounts: Long,
    pub issued: Long,
    pub burned: Long,
    /// Issued and not burned: balance + reserved.
    pub circulating: Long,
    pub balance: Long,
    pub reserved: Long,
}

fn credits_error(e: crate::credits::IssueError) -> async_graphql::Error {
    use crate::credits::IssueError;
    match &e {
        IssueError::Invalid { field, message } => {
            let field = (*field).to_owned();
            let message = message.clone();
            async_graphql::Error::new(e.to_string()).extend_with(move |_, ext| {
                ext.set("code", "INVALID_CREDITS");
                ext.set("field", field.clone());
                ext.set("message", message.clone());
            })
        }
        IssueError::Unavailable(_) => err("UNAVAILABLE", e.to_string()),
    }
}

fn key_error(e: crate::keys::KeyError) -> async_graphql::Error {
    use crate::keys::KeyError;
    use triad_auth::api_keys::ManageError;
    let message = e.to_string();
    match e {
        KeyError::Manage(ManageError::Forbidden(_)) => err("FORBIDDEN", message),
        KeyError::Manage(ManageError::NotFound(_)) => err("NOT_FOUND", message),
        KeyError::Manage(ManageError::Revoked(_)) => err("API_KEY_REVOKED", message),
        KeyError::Manage(ManageError::Invalid(r)) => {
            err("INVALID_API_KEY_REQUEST", message).extend_with(|_, x| x.set("field", r.field))
        }
        KeyError::Unavailable(inner) => unavailable(inner),
    }
}

fn registry_error(e: crate::registry::RegistryError) -> async_graphql::Error {
    use crate::registry::RegistryError;
    match &e {
        RegistryError::Foreign(_) => err("FORBIDDEN", e.to_string()),
        RegistryError::NotFound(_) => err("NOT_FOUND", e.to_string()),
        RegistryError::Invalid(errors) => {
            let fields: Vec<async_graphql::Value> = errors
                .0
                .iter()
                .map(|f| async_graphql::Value::from(f.field.clone()))
                .collect();
            let field = errors.field().unwrap_or_default().to_owned();
            async_graphql::Error::new(e.to_string()).extend_with(move |_, ext| {
                ext.set("code", "INVALID_REGISTRATION");
                ext.set("field", field.clone());
                ext.set("fields", async_graphql::Value::List(fields.clone()));
            })
        }
        RegistryError::Unavailable(_) => err("UNAVAILABLE", e.to_string()),
    }
}

/// The subscription fields whose executions `/graphql/ws` shares between identical
/// subscriptions of one caller (`crate::shared`): each one's stream depends only on its
/// arguments and the caller, so a late joiner replaying it misses and repeats nothing.
pub const REPLAYABLE: &[&str] = &["workflowEvents"];

#[derive(Debug)]
pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The workflow's events after `fromSequence` from the read model, then live, with no gap
    /// and no duplicate; completes after the final event.
    async fn workflow_events(
        &self,
        ctx: &Context<'_>,
        workflow_id: String,
        #[graphql(default = 0)] from_sequence: i64,
    ) -> async_graphql::Result<impl Stream<Item = Arc<EventView>> + use<>> {
        let s = state(ctx)?.clone();
        let scope = scope(ctx)?.map(str::to_owned);
        // Another tenant's workflow is absent; one not projected yet may be the caller's
        // own, so the stream opens and checks the owner with its first events.
        if let Some(w) = read::workflow(&s.pool, &workflow_id)
            .await
            .map_err(unavailable)?
            && !w.visible_to(scope.as_deref())
        {
            return Err(err(
                "NOT_FOUND",
                format!("no workflow {workflow_id} is visible to you"),
            ));
        }
        let stream = EventStream::new(s, workflow_id, from_sequence.max(0), scope);
        Ok(futures::stream::unfold(stream, |mut st| async move {
            st.next().await.map(|e| (e, st))
        }))
    }

    /// The dashboard feed: every workflow matching `filter` whose state changes after the
    /// subscription starts, as its current state, in the order the changes were applied (a
    /// workflow that changes several times within one projection batch arrives once, with
    /// its latest state). Does not complete.
    async fn workflow_updates(
        &self,
        ctx: &Context<'_>,
        filter: Option<WorkflowFilter>,
    ) -> async_graphql::Result<impl Stream<Item = WorkflowView> + use<>> {
        let s = state(ctx)?.clone();
        let filter = filter.unwrap_or_default();
        let tenant = scope(ctx)?.map(str::to_owned);
        let stream = ChangeStream::new(s, filter.status, filter.name, tenant);
        Ok(futures::stream::unfold(stream, |mut st| async move {
            st.next().await.map(|w| (w, st))
        }))
    }
}

/// GraphiQL, pointed at this server's endpoints.
pub async fn graphiql() -> impl IntoResponse {
    Html(
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

/// POST /graphql: one operation per request. The body goes through axum's size limit
/// (413 above `api.max_body_bytes`); batches (a JSON array) are refused with 400.
/// Read buffer of a subscription connection. Clients send little (init, subscribe,
/// complete), and tungstenite zero-fills the free part of this buffer on every read attempt,
/// so at its 128 KiB default a server with a thousand subscribers spends most of its time in
/// memset (measured with `triad bench --fanout`).
const WS_READ_BUFFER: usize = 4 * 1024;

/// `/graphql/ws`: graphql-transport-ws or graphql-ws, chosen by the client's subprotocol.
/// The caller authenticates in the `connection_init` payload (`{"Authorization": "Bearer
/// …"}`; `authorization` and `token` are read too); an upgrade request's own
/// `Authorization` header is used when the payload carries none. Without acceptable
/// credentials the connection closes before any operation runs.
pub async fn subscriptions(
    State((executor, state)): State<(crate::shared::Shared<TriadSchema>, Arc<AppState>)>,
    headers: axum::http::HeaderMap,
    protocol: async_graphql_axum::GraphQLProtocol,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            async_graphql_axum::GraphQLWebSocket::new(stream, executor, protocol)
                .on_connection_init(move |payload| async move {
                    let bearer = init_credential(&payload).or(header);
                    let who = match bearer.as_deref().map(bearer_token) {
                        Some(token) => state.identity.authenticate(token).await,
                        None => Err(triad_auth::Rejection::Malformed(
                            "no credential in connection_init",
                        )),
                    };
                    match who {
                        Ok(principal) if state.limits.check_rate(&principal.tenant).is_err() => {
                            Err(async_graphql::Error::new(
                                "rate limited: your tenant is over its request rate",
                            ))
                        }
                        Ok(principal) => {
                            let mut data = async_graphql::Data::default();
                            data.insert(principal);
                            Ok(data)
                        }
                        Err(rejection) => {
                            tracing::info!(%rejection, "subscription refused: unauthenticated");
                            Err(async_graphql::Error::new("invalid or missing credentials"))
                        }
                    }
                })
                .serve()
        })
}

/// The credential of a `connection_init` payload.
fn init_credential(payload: &serde_json::Value) -> Option<String> {
    ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
        .map(str::to_owned)
}

/// `Bearer <token>` or a bare token.
fn bearer_token(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("Bearer ")
        .or_else(|| t.strip_prefix("bearer "))
        .unwrap_or(t)
        .trim()
}

pub async fn execute(
    State(schema): State<TriadSchema>,
    axum::Extension(who): axum::Extension<Principal>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return crate::Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            "batch_not_supported",
            "send one GraphQL operation per request",
        )
        .into_response();
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return crate::Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_document",
                "the body is not a GraphQL request",
            )
            .detail(e.to_string())
            .into_response();
        }
    };
    let request = request.data(who);
    async_graphql_axum::GraphQLResponse::from(schema.execute(request).await).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/schema.graphql` is the exported SDL; regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test -p triad-api sdl`.
    #[test]
    fn sdl_matches_docs_schema_graphql() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/schema.graphql");
        let sdl = sdl();
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &sdl).unwrap();
        }
        let documented = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            documented == sdl,
            "docs/schema.graphql is out of date: run UPDATE_SCHEMA=1 cargo test -p triad-api sdl"
        );
    }
}
