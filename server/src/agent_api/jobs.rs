//! Agent API for workflows: ask what next, acknowledge an attempt's start, upload its log by
//! byte offset, report its result. Authentication and ownership were checked by the middleware.

use std::sync::Arc;

use anneal_shared::protocol::{AttemptResult, LogAck, NextRequest, NextResponse};
use anneal_shared::{MachineId, PROTOCOL_VERSION};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::AgentIdentity;
use crate::app::App;
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::store::workflow::{AttemptReport, LogAppend};
use crate::workflow::run::StepError;
use crate::workflow::service::{self, WorkflowError};

/// Largest log chunk taken in one request; agents send smaller ones.
pub const MAX_LOG_CHUNK: usize = 1 << 20;

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> ApiError {
        match e {
            WorkflowError::Store(e) => e.into(),
            WorkflowError::NoMachine(_) | WorkflowError::NoRun(_) => {
                ApiError::not_found(e.to_string())
            }
            WorkflowError::Resolve(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unresolvable-workflow",
                e.to_string(),
            ),
            WorkflowError::Refused(StepError::NotCurrent(a)) => {
                metrics::counter!("anneal_stale_attempt_reports_total").increment(1);
                ApiError::conflict(format!(
                    "attempt {a} is not this machine's current attempt; do not run it"
                ))
            }
            WorkflowError::Refused(e) => ApiError::conflict(e.to_string()),
            // Applied content is validated first, so this is a damaged store or an upgrade
            // whose built-ins clash with it: the operator must see the list.
            WorkflowError::Content(e) => ApiError::new(
                StatusCode::CONFLICT,
                "invalid-stored-content",
                format!("the stored workflow content no longer validates: {e}"),
            ),
        }
    }
}

/// `POST /agent/v1/machines/{id}/next`.
pub async fn next(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath(_id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<NextRequest>,
) -> Result<Json<NextResponse>, ApiError> {
    let action = service::next(&app, me.machine_id, &req.boot_id).await?;
    Ok(Json(NextResponse {
        protocol: PROTOCOL_VERSION,
        action,
    }))
}

/// `POST /agent/v1/machines/{id}/attempts/{attempt}/start`.
pub async fn start(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath((_id, attempt)): ApiPath<(MachineId, Uuid)>,
) -> Result<StatusCode, ApiError> {
    service::started(&app, me.machine_id, attempt).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of a log upload.
#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// Byte offset of the body's first byte.
    pub offset: u64,
}

/// `PUT /agent/v1/machines/{id}/attempts/{attempt}/log?offset=N`: taken only at the log's
/// length or as an identical overlap; otherwise 409 with the length to resume from.
pub async fn log(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath((_id, attempt)): ApiPath<(MachineId, Uuid)>,
    Query(q): Query<LogQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_LOG_CHUNK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "chunk-too-large",
            format!("log chunks are at most {MAX_LOG_CHUNK} bytes"),
        ));
    }
    let owned = app
        .store
        .get_attempt(attempt)
        .await?
        .is_some_and(|a| a.machine_id == me.machine_id);
    if !owned {
        return Err(ApiError::not_found(format!(
            "no attempt {attempt} for this machine"
        )));
    }
    let ack = |length| {
        Json(LogAck {
            protocol: PROTOCOL_VERSION,
            length,
        })
    };
    match app.store.append_log(attempt, q.offset, &body).await? {
        None => Err(ApiError::not_found(format!("no attempt {attempt}"))),
        Some(LogAppend::Appended(n)) => {
            metrics::counter!("anneal_job_log_bytes_total").increment(body.len() as u64);
            Ok(ack(n).into_response())
        }
        Some(LogAppend::Duplicate(n)) => Ok(ack(n).into_response()),
        Some(LogAppend::Conflict(n)) => {
            metrics::counter!("anneal_job_log_conflicts_total").increment(1);
            Ok((StatusCode::CONFLICT, ack(n)).into_response())
        }
    }
}

/// `POST /agent/v1/machines/{id}/attempts/{attempt}/result`.
pub async fn result(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath((_id, attempt)): ApiPath<(MachineId, Uuid)>,
    ApiJson(req): ApiJson<AttemptResult>,
) -> Result<StatusCode, ApiError> {
    // The whole log must be in before the result: the agent flushes first, so a shortfall
    // means bytes were lost on the way, and the agent must send them again.
    if let Some(a) = app.store.get_attempt(attempt).await? {
        if a.machine_id == me.machine_id && a.log_len < req.log_length {
            return Err(ApiError::conflict(format!(
                "the server has {} of the {} log bytes; send the rest first",
                a.log_len, req.log_length
            )));
        }
    }
    let mut reason = req.reason;
    reason.truncate(500);
    if !req.ok && reason.is_empty() {
        reason = match req.exit_code {
            Some(c) => format!("exit code {c}"),
            None => "failed".into(),
        };
    }
    let report = AttemptReport {
        attempt,
        exit_code: req.exit_code,
        result: req.result,
    };
    service::finished(&app, me.machine_id, &report, req.ok, &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}
