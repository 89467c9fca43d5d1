//! `/api/v1/machines` and `/api/v1/quarantine`.

use std::sync::Arc;

use anneal_shared::api::{
    Machine, MachineState, MachineSummary, Problem, QuarantinedEnrollment, Role,
};
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{machine_summary, machine_view, quarantine_view, Caller};
use crate::app::App;
use crate::audit::{self, Change};
use crate::fleet::selector::Selector;
use crate::problem::{ApiError, ApiPath, ApiQuery};
use crate::store::Cas;

/// A machine by id, or a 404 problem naming it.
pub(super) async fn find(
    app: &App,
    id: MachineId,
) -> Result<crate::store::MachineRecord, ApiError> {
    app.store
        .get_machine(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no machine {id}")))
}

/// Filters of the machine list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only machines this selector matches, e.g. `tag=web,product~PowerEdge,disks>=2`
    /// (terms joined by commas must all hold; see docs/workflows.md).
    pub selector: Option<String>,
}

/// List machines, oldest first; all of them, or those a selector matches.
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines", params(ListQuery),
    responses((status = 200, body = Vec<MachineSummary>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<MachineSummary>>, ApiError> {
    let selector = q
        .selector
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| super::fleet::invalid_selector(format!("selector: {e}")))?;
    let machines = app.store.list_machines().await?;
    let all = machines.iter().map(machine_summary);
    Ok(Json(match selector {
        Some(s) => all.filter(|m| s.matches(m)).collect(),
        None => all.collect(),
    }))
}

/// One machine with its inventory.
#[utoipa::path(get, path = "/api/v1/machines/{id}", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = Machine), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<Machine>, ApiError> {
    let m = find(&app, id).await?;
    Ok(Json(machine_view(m)))
}

/// Approve a pending machine so it may get work.
#[utoipa::path(post, path = "/api/v1/machines/{id}/approve", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = Machine), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn approve(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<Machine>, ApiError> {
    caller.require(Role::Operator)?;
    let m = find(&app, id).await?;
    if m.state != MachineState::Pending {
        return Err(ApiError::conflict(format!(
            "machine {id} is {}, not pending",
            m.state.as_str()
        )));
    }
    match app
        .store
        .set_machine_state(id, m.version, MachineState::Discovered)
        .await?
    {
        Cas::Done(_) => {}
        Cas::Conflict => {
            return Err(ApiError::conflict(
                "the machine changed while approving; read it again and retry",
            ))
        }
    }
    tracing::info!(machine_id = %id, by = %caller.token_id, "machine approved");
    crate::fleet::rules::machine_ready(&app, id).await;
    let m = find(&app, id).await?;
    let state = |s: MachineState| serde_json::json!({ "state": s });
    audit::record(
        &app,
        &caller,
        Change::machine("machine.approve", id)
            .before(&state(MachineState::Pending))
            .after(&state(m.state)),
    )
    .await;
    app.events.emit(Event {
        state: Some(m.state.as_str().into()),
        hostname: m.hostname.clone(),
        ..Event::of(EventKind::MachineApproved).machine(id)
    });
    Ok(Json(machine_view(m)))
}

/// How many certificates a revocation covered.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Revoked {
    /// Certificates revoked by this call.
    pub revoked: u64,
}

/// Revoke every certificate of a machine: its agent is refused from the next request on.
#[utoipa::path(post, path = "/api/v1/machines/{id}/revoke", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = Revoked), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<Revoked>, ApiError> {
    caller.require(Role::Operator)?;
    find(&app, id).await?;
    let revoked = app
        .store
        .revoke_machine_certs(id, OffsetDateTime::now_utc())
        .await?;
    tracing::warn!(machine_id = %id, revoked, by = %caller.token_id, "machine certificates revoked");
    let out = Revoked { revoked };
    audit::record(
        &app,
        &caller,
        Change::machine("machine.revoke", id).after(&out),
    )
    .await;
    app.events.emit(Event {
        reason: Some(format!("{revoked} certificate(s) revoked")),
        ..Event::of(EventKind::MachineRevoked).machine(id)
    });
    Ok(Json(out))
}

/// Enrollments held back because their identity evidence contradicts existing records.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "machines",
    responses((status = 200, body = Vec<QuarantinedEnrollment>), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn quarantine(
    State(app): State<Arc<App>>,
) -> Result<Json<Vec<QuarantinedEnrollment>>, ApiError> {
    let q = app.store.list_quarantine().await?;
    Ok(Json(q.into_iter().map(quarantine_view).collect()))
}
