//! `GET /api/v1/audit`: the audit log, newest first.

use std::sync::Arc;

use anneal_shared::api::Problem;
use anneal_shared::events::AuditEntry;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::app::App;
use crate::problem::{ApiError, ApiQuery};
use crate::store::AuditQuery;

/// Filters of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditParams {
    /// Only changes to this machine.
    pub machine: Option<Uuid>,
    /// Only changes to this target (a machine id, a token id, `version N`).
    pub target: Option<String>,
    /// Only changes made with this API token (its id or name).
    pub actor: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    pub since: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Recorded changes, newest first: who (token, name, role, address), when, what, before and
/// after.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(|s| {
            OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
                let s: String = s.chars().take(64).collect();
                ApiError::bad_request(format!("since `{s}` is not an RFC 3339 time: {e}"))
            })
        })
        .transpose()?;
    let query = AuditQuery {
        machine: q.machine,
        target: q.target,
        actor: q.actor,
        since,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    Ok(Json(app.store.list_audit(&query).await?))
}
