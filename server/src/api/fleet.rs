//! Operator API for fleet operations: edit a machine's tags and location, claim it for a
//! destructive workflow (or give the claim up), and assign a workflow by selector.

use std::sync::Arc;

use anneal_shared::api::{
    AssignResult, BulkAssign, BulkAssignReport, Claim, ClaimKind, Machine, Problem, Role,
    UpdateMachine,
};
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use time::OffsetDateTime;

use super::machine_view;
use super::machines::find;
use super::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::fleet::bulk::{self, BulkError};
use crate::fleet::guard::AssignError;
use crate::fleet::labels;
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::store::Cas;

impl From<AssignError> for ApiError {
    fn from(e: AssignError) -> ApiError {
        match e {
            AssignError::Unclaimed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "unclaimed-machine", e.to_string())
            }
            AssignError::Workflow(e) => e.into(),
        }
    }
}

impl From<BulkError> for ApiError {
    fn from(e: BulkError) -> ApiError {
        match e {
            BulkError::Selector(_) => invalid_selector(e.to_string()),
            BulkError::Workflow(e) => e.into(),
            BulkError::Store(e) => e.into(),
        }
    }
}

/// A selector that does not parse: 400, counted.
pub fn invalid_selector(detail: String) -> ApiError {
    metrics::counter!("anneal_selector_errors_total").increment(1);
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-selector", detail)
}

fn changed_underneath(id: MachineId) -> ApiError {
    ApiError::conflict(format!(
        "machine {id} changed since it was read; read it again and retry"
    ))
}

/// Edit a machine's tags (add, remove) and location (site, row, rack, slot; an empty value
/// clears one), compare-and-set on the machine's `version`.
#[utoipa::path(patch, path = "/api/v1/machines/{id}", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    request_body = UpdateMachine,
    responses((status = 200, body = Machine), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
    ApiJson(edit): ApiJson<UpdateMachine>,
) -> Result<Json<Machine>, ApiError> {
    caller.require(Role::Operator)?;
    let m = find(&app, id).await?;
    if edit.version.is_some_and(|v| v != m.version) {
        return Err(changed_underneath(id));
    }
    let (tags, location) = labels::apply(&m.fleet.tags, &m.fleet.location, &edit).map_err(|e| {
        metrics::counter!("anneal_label_errors_total").increment(1);
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-labels", e.to_string())
    })?;
    match app
        .store
        .set_labels(id, m.version, &tags, &location)
        .await?
    {
        Cas::Done(_) => {}
        Cas::Conflict => return Err(changed_underneath(id)),
    }
    tracing::info!(machine_id = %id, ?tags, ?location, by = %caller.token_id, "machine labels changed");
    let after = find(&app, id).await?;
    let labels = |m: &crate::store::MachineRecord| serde_json::json!({"tags": m.fleet.tags, "location": m.fleet.location});
    let change = Change::machine("machine.labels", id);
    audit::record(
        &app,
        &caller,
        change.before(&labels(&m)).after(&labels(&after)),
    )
    .await;
    app.events.emit(Event {
        reason: Some("tags and location".into()),
        hostname: after.hostname.clone(),
        ..Event::of(EventKind::MachineUpdated).machine(id)
    });
    Ok(Json(machine_view(after)))
}

/// Claim a machine: it may run one destructive workflow (the assignment consumes the claim).
#[utoipa::path(post, path = "/api/v1/machines/{id}/claim", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = Machine), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn claim(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<Machine>, ApiError> {
    let c = Claim {
        kind: ClaimKind::Operator,
        by: caller.token_id.clone(),
        at: OffsetDateTime::now_utc(),
    };
    set_claim(app, caller, id, Some(c)).await
}

/// Give up a machine's claim (an operator's, or its mark as new).
#[utoipa::path(delete, path = "/api/v1/machines/{id}/claim", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = Machine), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn unclaim(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<Machine>, ApiError> {
    set_claim(app, caller, id, None).await
}

async fn set_claim(
    app: Arc<App>,
    caller: Caller,
    id: MachineId,
    claim: Option<Claim>,
) -> Result<Json<Machine>, ApiError> {
    caller.require(Role::Operator)?;
    let m = find(&app, id).await?;
    match app.store.set_claim(id, m.version, claim.as_ref()).await? {
        Cas::Done(_) => {}
        Cas::Conflict => return Err(changed_underneath(id)),
    }
    tracing::info!(machine_id = %id, claimed = claim.is_some(), by = %caller.token_id, "machine claim changed");
    let (action, state) = match claim {
        Some(_) => ("machine.claim", "claimed"),
        None => ("machine.unclaim", "unclaimed"),
    };
    let change = Change::machine(action, id)
        .before(&m.fleet.claim)
        .after(&claim);
    audit::record(&app, &caller, change).await;
    app.events.emit(Event {
        state: Some(state.into()),
        hostname: m.hostname.clone(),
        ..Event::of(EventKind::MachineClaimed).machine(id)
    });
    Ok(Json(machine_view(find(&app, id).await?)))
}

/// Assign a workflow to every machine the selector matches, each reported as assigned (or,
/// with `dry_run`, would_assign) or refused with the reason: pending approval, or a
/// destructive workflow for a machine neither claimed nor new.
#[utoipa::path(post, path = "/api/v1/workflows/{name}/assign", tag = "workflows",
    params(("name" = String, Path, description = "workflow name")),
    request_body = BulkAssign,
    responses((status = 200, body = BulkAssignReport), (status = 400, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn bulk_assign(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<BulkAssign>,
) -> Result<Json<BulkAssignReport>, ApiError> {
    caller.require(Role::Operator)?;
    let report = bulk::assign(&app, &name, &req, &caller.token_id).await?;
    // One entry per machine that got the workflow, so a machine's audit trail shows it.
    for m in report
        .machines
        .iter()
        .filter(|m| m.result == AssignResult::Assigned)
    {
        let after = serde_json::json!({"workflow": name, "run": m.run, "selector": req.selector});
        let change = Change::machine("workflow.assign", m.machine_id).after(&after);
        audit::record(&app, &caller, change).await;
    }
    Ok(Json(report))
}
