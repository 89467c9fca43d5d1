//! Agent API handlers. Authentication and ownership were checked by the middleware.

use std::sync::Arc;

use anneal_shared::api::{Machine, MachineState};
use anneal_shared::events::{Event, EventKind};
use anneal_shared::protocol::{
    Directive, HeartbeatRequest, HeartbeatResponse, InventoryReport, RenewRequest, RenewResponse,
};
use anneal_shared::{MachineId, PROTOCOL_VERSION};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use time::OffsetDateTime;

use super::AgentIdentity;
use crate::app::App;
use crate::http_util::now_ms;
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::store::{CertRecord, Heartbeat};

/// `GET /agent/v1/machines/{id}`: the caller's own record.
pub async fn own_record(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
) -> Result<Json<Machine>, ApiError> {
    let m = app
        .store
        .get_machine(me.machine_id)
        .await?
        .ok_or_else(|| ApiError::not_found("machine record not found"))?;
    Ok(Json(crate::api::machine_view(m)))
}

/// `POST /agent/v1/machines/{id}/heartbeat`: record liveness, answer what to do next.
pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath(_id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let brief = app
        .store
        .machine_brief(me.machine_id)
        .await?
        .ok_or_else(|| ApiError::not_found("machine record not found"))?;
    let mut status = req.status;
    status.truncate(200);
    app.heartbeats
        .record(Heartbeat {
            machine_id: me.machine_id,
            status,
            at: OffsetDateTime::now_utc(),
        })
        .await;
    metrics::counter!("anneal_heartbeats_total").increment(1);
    let directive = match brief.state {
        MachineState::Pending => Directive::AwaitApproval,
        _ if !brief.has_inventory => Directive::SendInventory,
        _ if brief.has_work => Directive::Work,
        _ => Directive::Wait,
    };
    Ok(Json(HeartbeatResponse {
        protocol: PROTOCOL_VERSION,
        directive,
        interval_secs: app.config.heartbeat_secs,
        unix_ms: now_ms(),
    }))
}

/// `PUT /agent/v1/machines/{id}/inventory`: replace the stored inventory.
pub async fn inventory(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath(_id): ApiPath<MachineId>,
    ApiJson(report): ApiJson<InventoryReport>,
) -> Result<StatusCode, ApiError> {
    app.store
        .put_inventory(me.machine_id, &report.inventory, OffsetDateTime::now_utc())
        .await?;
    metrics::counter!("anneal_inventory_reports_total").increment(1);
    app.events
        .emit(Event::of(EventKind::InventoryStored).machine(me.machine_id));
    tracing::info!(machine_id = %me.machine_id, boot_id = %report.boot_id, disks = report.inventory.disks.len(), nics = report.inventory.nics.len(), "inventory received");
    crate::fleet::rules::machine_ready(&app, me.machine_id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /agent/v1/machines/{id}/renew`: a fresh certificate for a new key.
pub async fn renew(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath(_id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let lifetime = time::Duration::seconds(app.config.client_cert_secs as i64);
    let cert = app
        .ca
        .sign_client_csr(&req.csr_pem, me.machine_id, now, lifetime)
        .map_err(|e| ApiError::bad_request(format!("invalid CSR: {e}")))?;
    app.store
        .insert_cert(&CertRecord {
            serial: cert.serial_hex.clone(),
            machine_id: me.machine_id,
            not_after: cert.not_after,
            revoked_at: None,
        })
        .await?;
    metrics::counter!("anneal_cert_renewals_total").increment(1);
    Ok(Json(RenewResponse {
        protocol: PROTOCOL_VERSION,
        cert_pem: cert.cert_pem,
        not_after: cert.not_after,
    }))
}
