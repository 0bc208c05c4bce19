//! Commands shared by REST and GraphQL: validate at the edge, append to the inbox with
//! `acks=all`, return. Acceptance or rejection arrives later as events.

use triad_auth::Principal;
use triad_domain::{CancelWorkflow, CommandMetadata, InboxBody, InboxRecord};
use triad_workflow::{ValidationErrors, Workflow};

use crate::{AppState, Error, read};

/// Workflow ids derived from an idempotency key (UUIDv5 in this namespace), so the same key
/// always names the same workflow and the processor ignores the repeat.
const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7c1d_5e0a_94b2_4c61_8a3e_2f6d_b0a7_11c9);
pub const MAX_KEY_BYTES: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the idempotency key must be 1 to {MAX_KEY_BYTES} visible ASCII characters")]
    BadKey,
    #[error("invalid workflow: {0}")]
    Invalid(ValidationErrors),
    #[error("the workflow has already finished ({0})")]
    Finished(String),
    #[error("{0}")]
    ForeignAccount(String),
    #[error("no workflow {0} is visible to you")]
    NotFound(String),
    #[error("{}", .0.message())]
    Limited(crate::limits::Exceeded),
    #[error(transparent)]
    Unavailable(#[from] Error),
}

pub fn check_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::BadKey);
    }
    Ok(())
}

/// The id a submission gets: from the tenant and the key when there is one, so the same key
/// names the same workflow within a tenant and two tenants' keys never collide.
pub fn workflow_id_for(tenant: &str, key: Option<&str>) -> String {
    match key {
        Some(k) => {
            let name = [tenant.as_bytes(), b"\0", k.as_bytes()].concat();
            format!("wf-{}", uuid::Uuid::new_v5(&KEY_NAMESPACE, &name))
        }
        None => format!("wf-{}", uuid::Uuid::new_v4()),
    }
}

fn meta(workflow_id: &str, key: String, actor: &str, tenant: Option<&str>) -> CommandMetadata {
    CommandMetadata {
        command_id: triad_domain::new_command_id(),
        idempotency_key: key,
        workflow_id: workflow_id.to_owned(),
        issued_at: triad_kafka::now_micros(),
        actor: Some(actor.to_owned()),
        tenant: tenant.map(str::to_owned),
        schema_version: triad_domain::INBOX_SCHEMA_VERSION,
    }
}

/// Validates `workflow` and estimates its cost on the catalogue's declared prices
/// (docs/market.md); nothing is written.
pub fn estimate(
    state: &AppState,
    workflow: &Workflow,
) -> Result<triad_market::Estimate, CommandError> {
    let offers = state.registry.offers(state);
    workflow
        .validate(&validation(state, &offers))
        .map_err(CommandError::Invalid)?;
    Ok(triad_market::estimate(
        workflow,
        &offers,
        &state.policy.groups,
        triad_market::matching::shared().map(|c| c as &dyn triad_market::SpecialtyClassifier),
    ))
}

/// What a submission is validated against: the policy, and the models configured or
/// registered now (the processor decides again with the registry as of the input).
fn validation<'a>(
    state: &'a AppState,
    offers: &'a [triad_workflow::ModelOffer],
) -> triad_workflow::Context<'a> {
    triad_workflow::Context {
        zones: &state.policy.zones,
        groups: &state.policy.groups,
        models: Some(offers),
        limits: state.policy.limits,
    }
}

/// Validates `workflow` and appends `SubmitWorkflow` for `who`'s tenant; returns the
/// workflow id.
pub async fn submit(
    state: &AppState,
    workflow: &Workflow,
    key: Option<String>,
    who: &Principal,
) -> Result<String, CommandError> {
    if let Some(k) = &key {
        check_key(k)?;
    }
    let offers = state.registry.offers(state);
    workflow
        .validate(&validation(state, &offers))
        .map_err(CommandError::Invalid)?;
    // The processor refuses it too; here the caller hears why at once.
    if let Some(reason) =
        triad_workflow::aggregate::foreign_account(Some(&who.tenant), workflow.account.as_deref())
    {
        return Err(CommandError::ForeignAccount(reason));
    }
    state
        .limits
        .check_submission(&state.pool, &who.tenant, workflow.tasks.len())
        .await?
        .map_err(CommandError::Limited)?;
    let workflow_id = workflow_id_for(&who.tenant, key.as_deref());
    let mut command = workflow.to_command();
    if let Some(kernel) = &state.kernel {
        // Sealed after validation (which needs the plaintext), before anything is written.
        kernel
            .seal_submission(&workflow_id, &mut command, &state.policy.groups)
            .await
            .map_err(Error::from)?;
    }
    let record = InboxRecord {
        meta: meta(
            &workflow_id,
            key.unwrap_or_else(|| format!("submit:{workflow_id}")),
            &who.actor(),
            Some(&who.tenant),
        ),
        body: InboxBody::SubmitWorkflow(command),
    };
    state
        .producer
        .send_record(
            &state.codec,
            &state.names.inbox,
            None,
            &workflow_id,
            &record,
        )
        .await
        .map_err(Error::from)?;
    Ok(workflow_id)
}

/// Appends `CancelWorkflow`, unless the read model shows the workflow already ended or
/// belonging to another tenant. The command carries the caller's tenant (none for an
/// operator), and the processor cancels only a workflow of that tenant.
pub async fn cancel(
    state: &AppState,
    workflow_id: &str,
    reason: Option<String>,
    who: &Principal,
) -> Result<(), CommandError> {
    let scope = crate::access::scope(who);
    let current = read::workflow(&state.pool, workflow_id).await?;
    if current.as_ref().is_some_and(|w| !w.visible_to(scope)) {
        return Err(CommandError::NotFound(workflow_id.to_owned()));
    }
    if let Some(w) = current
        && matches!(
            w.status.as_str(),
            "COMPLETED" | "FAILED" | "CANCELLED" | "REJECTED"
        )
    {
        return Err(CommandError::Finished(w.status));
    }
    let record = InboxRecord {
        meta: meta(
            workflow_id,
            format!("cancel:{workflow_id}"),
            &who.actor(),
            scope,
        ),
        body: InboxBody::CancelWorkflow(CancelWorkflow { reason }),
    };
    state
        .producer
        .send_record(&state.codec, &state.names.inbox, None, workflow_id, &record)
        .await
        .map_err(Error::from)?;
    Ok(())
}
