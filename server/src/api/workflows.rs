//! Operator API for workflows: assign one to a machine, see and steer its run, list job
//! attempts and read their logs.

use std::sync::Arc;

use anneal_shared::api::{AssignWorkflow, JobAttempt, Problem, Role, WorkflowRun};
use anneal_shared::MachineId;
use axum::extract::{Query, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use uuid::Uuid;

use super::auth::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::fleet::guard::{self, Checked, Source};
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::store::workflow::{AttemptRecord, AttemptState, RunRecord};
use crate::workflow::run::{Event, Phase};
use crate::workflow::service;

/// Response header carrying a job log's total length.
pub const HEADER_LOG_LENGTH: &str = "x-anneal-log-length";

fn run_view(r: RunRecord) -> WorkflowRun {
    let (reason, booting) = match &r.run.phase {
        Phase::Failed { reason } => (Some(reason.clone()), None),
        Phase::Booting { env, .. } => (None, Some(env.clone())),
        _ => (None, None),
    };
    WorkflowRun {
        id: r.id,
        machine_id: r.machine_id,
        workflow: r.plan.workflow.clone(),
        content_version: r.plan.content_version,
        stages: r.plan.stages.iter().map(|s| s.name.clone()).collect(),
        stage: r.run.stage,
        task: r.run.task,
        phase: r.run.phase.name().to_string(),
        reason,
        booting,
        failed_attempt: None,
        log_tail: None,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// An attempt as the API shows it.
pub fn attempt_view(a: AttemptRecord) -> JobAttempt {
    JobAttempt {
        id: a.id,
        machine_id: a.machine_id,
        run_id: a.run_id,
        stage: a.stage_name,
        task: a.task_name,
        state: a.state.as_str().to_string(),
        reason: a.reason,
        exit_code: a.exit_code,
        result: a.result,
        created_at: a.created_at,
        started_at: a.started_at,
        finished_at: a.finished_at,
        log_bytes: a.log_len,
        log_pruned_at: a.log_pruned_at,
    }
}

/// Assign a workflow to a machine. A machine already running the first stage's boot
/// environment starts at once; otherwise it is switched and rebooted into it. A destructive
/// workflow needs the machine claimed or new (409 otherwise), and consumes that claim.
#[utoipa::path(put, path = "/api/v1/machines/{id}/workflow", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    request_body = AssignWorkflow,
    responses((status = 200, body = WorkflowRun), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn assign(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<AssignWorkflow>,
) -> Result<Json<WorkflowRun>, ApiError> {
    caller.require(Role::Operator)?;
    let checked = Checked::resolve(&app, &req.workflow).await?;
    let before = app.store.current_run(id).await?.map(run_view);
    let run = guard::assign(&app, id, &checked, Source::Operator(&caller.token_id)).await?;
    let run = run_view(run);
    let change = Change::machine("workflow.assign", id);
    audit::record(&app, &caller, change.before(&before).after(&run)).await;
    Ok(Json(run))
}

/// A machine's current workflow run.
#[utoipa::path(get, path = "/api/v1/machines/{id}/workflow", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = WorkflowRun), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<WorkflowRun>, ApiError> {
    let run = app
        .store
        .current_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("machine {id} has no workflow run")))?;
    let failed = matches!(run.run.phase, Phase::Failed { .. });
    let mut view = run_view(run);
    if failed {
        if let Some((attempt, tail)) = failure_tail(&app, &view).await? {
            view.failed_attempt = Some(attempt);
            view.log_tail = Some(tail);
        }
    }
    Ok(Json(view))
}

/// Bytes of a failed job's log shown with its run.
const TAIL_BYTES: u64 = 4096;

/// The newest attempt of a failed run that ended badly, and the end of its log from a line
/// start (a log deleted by retention says so instead).
async fn failure_tail(app: &App, run: &WorkflowRun) -> Result<Option<(Uuid, String)>, ApiError> {
    let attempts = app.store.list_attempts(Some(run.machine_id), 50).await?;
    let Some(a) = attempts.into_iter().find(|a| {
        a.run_id == run.id
            && matches!(
                a.state,
                AttemptState::Failed | AttemptState::TimedOut | AttemptState::Interrupted
            )
    }) else {
        return Ok(None);
    };
    if let Some(at) = a.log_pruned_at {
        return Ok(Some((a.id, format!("(log deleted by retention at {at})"))));
    }
    let from = a.log_len.saturating_sub(TAIL_BYTES);
    let (bytes, _) =
        (app.store.read_log(a.id, from, TAIL_BYTES as usize).await?).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    // Cut a partial first line (and a split UTF-8 sequence with it).
    let text = match (from > 0, text.find('\n')) {
        (true, Some(i)) => &text[i + 1..],
        _ => &text[..],
    };
    Ok(Some((a.id, text.to_string())))
}

/// Steer a machine's run: `retry` the failed task (or boot), `restart` from the first stage,
/// `cancel`, or `continue` a stage that waits for an operator.
#[utoipa::path(post, path = "/api/v1/machines/{id}/workflow/{action}", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "machine id"),
           ("action" = String, Path, description = "retry, restart, cancel or continue")),
    responses((status = 200, body = WorkflowRun), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
pub async fn act(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath((id, action)): ApiPath<(MachineId, String)>,
) -> Result<Json<WorkflowRun>, ApiError> {
    caller.require(Role::Operator)?;
    let event = match action.as_str() {
        "retry" => Event::Retry,
        "restart" => Event::Restart,
        "cancel" => Event::Cancel,
        "continue" => Event::Continue,
        other => {
            return Err(ApiError::not_found(format!(
                "no workflow action `{other}` (retry, restart, cancel, continue)"
            )))
        }
    };
    let before = app.store.current_run(id).await?.map(run_view);
    let run = run_view(service::operator(&app, id, event).await?);
    tracing::info!(machine_id = %id, action, by = %caller.token_id, "workflow action");
    let change = Change::machine(&format!("workflow.{action}"), id);
    audit::record(&app, &caller, change.before(&before).after(&run)).await;
    Ok(Json(run))
}

/// Filters of the job list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct JobsQuery {
    /// Only this machine's attempts.
    pub machine: Option<Uuid>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Job attempts, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "workflows", params(JobsQuery),
    responses((status = 200, body = Vec<JobAttempt>)),
    security(("bearer" = [])))]
pub async fn jobs(
    State(app): State<Arc<App>>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Vec<JobAttempt>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = app.store.list_attempts(q.machine, limit).await?;
    Ok(Json(list.into_iter().map(attempt_view).collect()))
}

/// Where to read a log from.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Byte offset to start at (default 0).
    pub offset: Option<u64>,
    /// At most this many bytes (default and maximum 1 MiB).
    pub max: Option<usize>,
}

/// A job attempt's log bytes from `offset`; the total length is in `x-anneal-log-length`, so
/// a follower asks again from `offset + bytes received`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "attempt id"), LogQuery),
    responses((status = 200, description = "log bytes", content_type = "application/octet-stream"), (status = 404, body = Problem), (status = 410, description = "the log was deleted by log retention", body = Problem)),
    security(("bearer" = [])))]
pub async fn log(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<Uuid>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let max = q.max.unwrap_or(1 << 20).clamp(1, 1 << 20);
    let offset = q.offset.unwrap_or(0);
    let (bytes, len) = app
        .store
        .read_log(id, offset, max)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job attempt {id}")))?;
    // Nothing where bytes should be: only then ask whether retention deleted them, so
    // ordinary reads (and `jobs logs -f` polling) cost one query.
    if bytes.is_empty() && offset < len {
        if let Some(at) = app
            .store
            .get_attempt(id)
            .await?
            .and_then(|a| a.log_pruned_at)
        {
            let at = at.format(&time::format_description::well_known::Rfc3339);
            return Err(ApiError::new(
                StatusCode::GONE,
                "log-pruned",
                format!(
                    "the log of job attempt {id} was deleted at {} by log retention ({} days)",
                    at.unwrap_or_default(),
                    app.config.log_retention_days
                ),
            ));
        }
    }
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ),
        (
            HeaderName::from_static(HEADER_LOG_LENGTH),
            HeaderValue::from(len),
        ),
    ];
    Ok((headers, bytes).into_response())
}
